"""Export a trained model (SavedModel, TFLite, ONNX, safetensors for PyTorch/timm), checked.

  python -m vit_se.export --workdir=/tmp/run [--params=params.npz] --out=/tmp/run_tf [--tflite]
  python -m vit_se.export --workdir=/tmp/run --out=/tmp/run_export \
      --format=saved_model,onnx,safetensors

--format (default saved_model) names what goes into the OUT folder: `saved_model` (OUT itself is
the SavedModel, `vit_se.export_tf`), `onnx` (`model.onnx`, `vit_se.export_onnx`: input `images`
float32 [batch, S, S, 3], outputs `logits` and `probabilities`, symbolic batch, opset 20) and
`safetensors` (`model.safetensors`, `vit_se.export_safetensors`: a timm `VisionTransformer` state
dict plus the SE and head weights, loaded in PyTorch by `vit_se.timm_vit_se`). --tflite adds
`model.tflite` (fixed batch --tflite_batch, default 1, `vit_se.export_tf`). `labels.txt` and
`preprocessing.json` (how to turn a photo into the input; `vit_se.inference.preprocess` is the
reference implementation) lie in the SavedModel's `assets/`, or at the top of OUT without one.
`export_report.json` says where the model came from and what the checks below measured.

The formats are one table, TABLE: a row names the module that writes and reads back its file
(each offers `write(trained, path)`, `check(trained, path)`: what the file holds besides its
computation, `outputs(path, batches)` and `logits(path, images)` in the format's own runtime),
its file name in OUT, whether the file computes in float32 whatever the model's `dtype` (ONNX and
safetensors do), and its tolerance. One loop writes each requested format, reads it back, compares
it with JAX, records its report entry, prints one line and stops the export at the first check
that does not hold.

The comparison: the file's outputs and the JAX model's (CPU, 'highest' matmul precision, so a
GPU's TF32 does not enter; in float32 where the file is) on the same seeded inputs (uniform in
[-1, 1], batch sizes 4 and 1). max |logit difference| must be within the tolerance of the scale
rule (`tolerance`): the rounding error of evaluating the same function in another summation order.
safetensors holds parameters rather than a computation: every tensor is mapped back onto the flax
tree and must equal the model's bit for bit, and its logits are compared when torch and timm
import (the `peer` extra).

The export is written to a temporary folder beside OUT and renamed to OUT once checked; a `gs://`
OUT is built and checked locally, then uploaded file by file with the report last.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
from types import ModuleType

import numpy as np
from absl import flags

from vit_se import cli, export_onnx, export_safetensors, export_tf, workdir
from vit_se.errors import Error

PREPROCESSING_FILE = "preprocessing.json"
LABELS_FILE = "labels.txt"
REPORT_FILE = "export_report.json"
ONNX_FILE = "model.onnx"
SAFETENSORS_FILE = "model.safetensors"
TFLITE_FILE = "model" + export_tf.TFLITE_SUFFIX


class ExportError(Error, RuntimeError):
    """The export could not be made or does not match the JAX model."""


@dataclasses.dataclass(frozen=True)
class Format:
    """One row of TABLE (see the module docstring).

    file: its name in OUT; None for the SavedModel, which is OUT itself (its facts then go to the
    top of the report). tolerance: in units of the scale rule's bound. says: the printed line
    after 'LABEL vs JAX: ', formatted with the report entry and `diffs`.
    """

    module: ModuleType
    file: str | None
    label: str
    float32: bool
    tolerance: float = 1.0
    says: str = "{diffs} (tolerance {tolerance:.2g})"


# The order the checks run and print in. Every runtime sums in its own order, none more loosely
# than float32 allows, so each gets the scale rule's bound as it is.
TABLE = {
    "saved_model": Format(export_tf, None, "SavedModel", float32=False),
    "onnx": Format(export_onnx, ONNX_FILE, "ONNX (onnxruntime)", float32=True),
    "safetensors": Format(
        export_safetensors,
        SAFETENSORS_FILE,
        "safetensors (timm layout)",
        float32=True,
        says="{tensors_bit_equal} tensors bit-equal to the flax parameters, logits under timm: "
        "{diffs} (tolerance {tolerance:.2g})",
    ),
    "tflite": Format(
        export_tf,
        TFLITE_FILE,
        "TFLite",
        float32=False,
        says="{diffs} (tolerance {tolerance:.2g}, fixed batch {batch})",
    ),
}
FORMATS = ("saved_model", "onnx", "safetensors")  # what --format names; tflite is --tflite


def preprocessing_facts(trained):
    """What a client must do to a photo before feeding the SavedModel (see workdir.ExportInfo)."""
    info = trained.info
    size = trained.image_size
    facts = {
        "image_size": size,
        "input": f"float32 [batch, {size}, {size}, 3], RGB, values in [-1, 1] (x / 127.5 - 1)",
        "face_crop": info.face_crop,
        "eval_resize": info.eval_resize,
        "class_names": trained.class_names,
        "reference": "vit_se.inference.preprocess",
    }
    if info.face_crop == "haar":
        facts["face_crop_method"] = (
            "largest OpenCV Haar frontal face (haarcascade_frontalface_default), square side "
            "1.4x the face box, centre square when no face is found"
        )
    elif info.face_crop == "aligned":
        from vit_se.datasets import faces

        facts["face_crop_method"] = (
            f"largest MTCNN face (mtcnn package), similarity transform of its 5 landmarks onto "
            f"the template {faces.template(faces.ALIGNED_SIZE).round(2).tolist()} (left eye, "
            f"right eye, nose, mouth left, mouth right; image left first) in a "
            f"{faces.ALIGNED_SIZE}x{faces.ALIGNED_SIZE} crop (cv2.warpAffine, bilinear, black "
            "border), centre square resized to it when no face is found"
        )
    if info.eval_resize != size:
        facts["resize"] = (
            f"antialiased bilinear resize to {info.eval_resize}x{info.eval_resize} "
            f"(tf.image.resize), then the centre {size}x{size} crop"
        )
    else:
        facts["resize"] = f"antialiased bilinear resize to {size}x{size} (tf.image.resize)"
    return facts


def check_inputs(trained, batch_sizes=(4, 1), seed=0):
    rng = np.random.default_rng(seed)
    size = trained.image_size
    return [rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32) for b in batch_sizes]


def jax_reference(trained, images, float32=False):
    """JAX {'logits', 'probabilities'} on the CPU at 'highest' matmul precision.

    The checks compare against this rather than `trained.logits`: on a GPU, JAX's default float32
    matmuls may use TF32, which alone can move B/16 logits by more than the tolerance, while every
    check runs its file on the CPU. `float32` computes in float32 whatever the model's dtype (the
    ONNX and safetensors files hold a float32 computation).
    """
    import jax

    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu), jax.default_matmul_precision("highest"):
        params = jax.device_put(trained.params, cpu)
        out = jax.jit(export_tf.serving_fn(trained, float32))(params, images)
        return {k: np.asarray(v) for k, v in out.items()}


def summed_terms(model_config, image_size):
    """How many float32 terms the sums from pixels to one logit add up, all chained together:
    the patch embedding, then per block two LayerNorms (mean and variance over the width), the
    q/k/v projections, the attention scores (head width), the weighted sum of values (tokens),
    the output projection and the MLP's two layers, then the final LayerNorm, pre-logits, the SE
    block and the head. `model_config`: a model config, its dict, or a VisionTransformer."""

    def field(obj, name):
        try:
            return obj[name]
        except (TypeError, KeyError):
            return getattr(obj, name)

    patch = field(field(model_config, "patches"), "size")
    width = int(field(model_config, "hidden_size"))
    t = field(model_config, "transformer")
    depth, heads, mlp = (int(field(t, k)) for k in ("num_layers", "num_heads", "mlp_dim"))
    tokens = (image_size // int(patch[0])) * (image_size // int(patch[1])) + 1
    block = 2 * 2 * width + width + width // heads + tokens + width + width + mlp
    rep = field(model_config, "representation_size") or width
    head = 2 * width + (width if rep != width else 0) + rep
    if field(model_config, "use_se"):
        head += rep + rep // int(field(model_config, "se_reduction"))
    return int(patch[0]) * int(patch[1]) * 3 + depth * block + head


def tolerance(trained, reference_logits, float32=False):
    """The scale rule: the max |logit difference| two correct evaluations of the model may show.

    Rounding a sum of n terms errs by about sqrt(n) units of roundoff (the probabilistic bound;
    Higham and Mary, SIAM J. Sci. Comput. 2019), relative to the terms' size. A logit is the end of
    a chain of such sums (`summed_terms`) whose errors add up the same way, so one evaluation errs
    by about eps * sqrt(all terms) relative to the logits' magnitude. Two evaluations both err
    (sqrt(2)), and the check takes the largest difference over the whole batch, not a typical
    one (about 3 times a typical one): hence 4 times that. The magnitude counts as at least 1,
    since near-zero logits still come from unit-scale activations. eps is float32's, or the
    model's compute dtype's for a file that computes in it. The bound stays below what a wrong
    operation moves: exact-erf GELU for tanh's moves logits by about 1e-3 of their scale.
    """
    import jax.numpy as jnp

    dtype = jnp.float32 if float32 else trained.model.dtype
    eps = float(jnp.finfo(dtype).eps)
    scale = max([1.0] + [float(np.max(np.abs(x))) for x in reference_logits])
    return 4 * eps * math.sqrt(summed_terms(trained.info.model, trained.image_size)) * scale


def check_formats(formats):
    """The --format list, validated: known names, each once, at least one."""
    formats = tuple(f.strip() for f in formats if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats or len(set(formats)) != len(formats):
        raise ExportError(
            f"--format must list some of {', '.join(FORMATS)} (each once), got "
            f"{','.join(formats)!r}"
        )
    return formats


def export(
    trained,
    out_dir,
    *,
    tflite=False,
    tflite_batch=1,
    overwrite=False,
    source=None,
    formats=("saved_model",),
):
    """Exports, checks and atomically installs the export folder at out_dir; returns the report.

    `formats`: some of FORMATS (see the module docstring). A `gs://` out_dir is built and checked
    locally, then uploaded file by file with `export_report.json` last: an export without its
    report is an incomplete one.
    """
    formats = check_formats(formats)
    out_dir = os.fspath(out_dir)
    remote = "://" in out_dir
    out_dir = out_dir if remote else os.path.abspath(out_dir)
    if workdir.exists(out_dir) and not overwrite:
        raise ExportError(f"{out_dir} exists; pass --overwrite to replace it")
    parent = tempfile.gettempdir() if remote else os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(out_dir.rstrip("/"))
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    try:
        start = time.time()
        inputs = check_inputs(trained)
        report = {
            "source": source or {},
            "class_names": trained.class_names,
            "image_size": trained.image_size,
            "formats": list(formats),
            "check_inputs": "uniform [-1, 1], seed 0, batch sizes "
            + ", ".join(str(len(x)) for x in inputs),
        }
        side_files = {
            LABELS_FILE: "".join(f"{n}\n" for n in trained.class_names),
            PREPROCESSING_FILE: json.dumps(preprocessing_facts(trained), indent=1) + "\n",
        }
        options = {"saved_model": {"assets": side_files}, "tflite": {"batch": tflite_batch}}
        if "saved_model" not in formats:
            for file, text in side_files.items():
                workdir.write_text(os.path.join(tmp, file), text)

        @functools.cache
        def references(float32):
            return [jax_reference(trained, x, float32) for x in inputs]

        for key, row in TABLE.items():
            if key not in formats and not (key == "tflite" and tflite):
                continue
            path = tmp if row.file is None else os.path.join(tmp, row.file)
            facts = row.module.write(trained, path, **options.get(key, {}))
            facts.update(row.module.check(trained, path))
            entry = {} if row.file is None else {"file": row.file}
            (report if row.file is None else entry).update(facts)  # the SavedModel is OUT
            entry.update(_compare(row, trained, path, inputs, references(row.float32)))
            if row.file is not None:
                entry["bytes"] = os.path.getsize(path)
            report[key] = entry
            _verdict(row, entry)
        report["seconds"] = round(time.time() - start, 1)
        workdir.write_text(os.path.join(tmp, REPORT_FILE), json.dumps(report, indent=1) + "\n")
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _compare(row, trained, path, inputs, references):
    """max |difference| of each output the file gives (None: it gave no logits) and the
    tolerance."""
    got = row.module.outputs(path, inputs)
    entry = {}
    for output, field in (("logits", "logit"), ("probabilities", "probability")):
        if output == "logits" or output in got[0]:
            diffs = [
                np.max(np.abs(g[output] - r[output]))
                for g, r in zip(got, references, strict=True)
                if output in g
            ]
            entry[f"max_abs_{field}_diff"] = float(max(diffs)) if diffs else None
    logits = [r["logits"] for r in references]
    entry["tolerance"] = row.tolerance * tolerance(trained, logits, row.float32)
    return entry


def _verdict(row, entry):
    """Prints the format's line; raises ExportError when its logits are out of tolerance."""
    worst, limit = entry["max_abs_logit_diff"], entry["tolerance"]
    if worst is None:
        diffs = "not compared (the runtime does not import)"
    else:
        diffs = f"max |logit diff| = {worst:.3g}"
        if "max_abs_probability_diff" in entry:
            diffs += f", max |probability diff| = {entry['max_abs_probability_diff']:.3g}"
    print(f"{row.label} vs JAX: " + row.says.format(diffs=diffs, **entry))
    if worst is not None and not worst <= limit:
        raise ExportError(f"{row.label} logits differ from JAX by {worst:.3g} > {limit:.2g}")


def _install(tmp, out_dir):
    """Renames the finished export over out_dir (an old export is moved aside, then deleted)."""
    if "://" in out_dir:
        _upload(tmp, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=".old-export-")
        os.rmdir(old)
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _upload(local_dir, remote_dir):
    """Every file of local_dir to remote_dir, each whole; the report goes last."""
    from etils import epath

    files = []
    for root, _, names in os.walk(local_dir):
        files += [os.path.relpath(os.path.join(root, n), local_dir) for n in names]
    files.sort(key=lambda rel: rel == REPORT_FILE)
    remote = epath.Path(remote_dir)
    if remote.exists():  # --overwrite: no file of the old export may remain
        remote.rmtree()
    for rel in files:
        target = f"{remote_dir.rstrip('/')}/{rel}"
        with open(os.path.join(local_dir, rel), "rb") as src, workdir.atomic_open(target) as dst:
            shutil.copyfileobj(src, dst)


# ------------------------------------------------------------------------------------ CLI

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command (defined only when run as a program, so others can import this)."""
    cli.define_model_flags()
    flags.DEFINE_string("out", None, "Export folder to create (the SavedModel's, with it).")
    flags.DEFINE_list(
        "format",
        ["saved_model"],
        f"What to export, comma-separated: some of {', '.join(FORMATS)} ({ONNX_FILE}, "
        f"{SAFETENSORS_FILE} in the folder).",
    )
    flags.DEFINE_bool("tflite", False, f"Also write {TFLITE_FILE} into the export folder.")
    flags.DEFINE_integer("tflite_batch", 1, "Fixed batch size of the TFLite model.")
    flags.DEFINE_bool("overwrite", False, "Replace --out when it exists.")
    flags.mark_flags_as_required(["out"])


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    formats = check_formats(FLAGS.format)
    if workdir.exists(FLAGS.out) and not FLAGS.overwrite:
        raise ExportError(f"{FLAGS.out} exists; pass --overwrite to replace it")
    trained = cli.load_model()
    export(
        trained,
        FLAGS.out,
        tflite=FLAGS.tflite,
        tflite_batch=FLAGS.tflite_batch,
        overwrite=FLAGS.overwrite,
        source=trained.source,
        formats=formats,
    )
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "export")
