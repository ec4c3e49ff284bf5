"""Export a trained model (SavedModel, TFLite, ONNX, safetensors for PyTorch/timm), checked.

  python -m vit_se.export --workdir=/tmp/run [--params=params.npz] --out=/tmp/run_tf [--tflite]
  python -m vit_se.export --workdir=/tmp/run --out=/tmp/run_export \
      --format=saved_model,onnx,safetensors

--format (default saved_model) names what goes into the OUT folder: `saved_model` (below),
`onnx` (`model.onnx`, `vit_se.export_onnx`: input `images` float32 [batch, S, S, 3], outputs
`logits` and `probabilities`, symbolic batch, opset 20) and `safetensors` (`model.safetensors`,
`vit_se.export_safetensors`: a timm `VisionTransformer` state dict plus the SE and head weights,
with the loader snippet TIMM_LOADER). Without saved_model, `labels.txt` and `preprocessing.json`
lie at the top of OUT instead of in `assets/`.

What the SavedModel holds (`OUT/`):
  - signature `serving_default`: input `images` float32 [batch, S, S, 3] in [-1, 1] (batch is
    polymorphic), outputs `probabilities` and `logits`, float32 [batch, num_classes]. The same
    function is `loaded.serve(images)`.
  - the parameters as tf.Variables (`loaded.params`), `loaded.class_names` (string variable) and
    `loaded.image_size`.
  - `assets/labels.txt` (one class name per line, in output order) and `assets/preprocessing.json`
    (image size, value range, face crop, resize: how to turn a photo into the input;
    `vit_se.inference.preprocess` is the reference implementation).
  - `export_report.json`: where it came from and the parity numbers measured below.
  - `model.tflite` with --tflite.

How: `jax2tf.convert` of `model.apply` + softmax. JAX 0.10 only has native serialization (the
`native_serialization=False` graph mode is gone; the flag is deprecated and ignored), so the graph
is one `XlaCallModule` op carrying StableHLO, lowered for cpu, cuda and tpu so the SavedModel runs
on any of them. Batch polymorphism uses `polymorphic_shapes=[None, '(b, ...)']`.

TFLite: the converter turns the StableHLO into TFLite builtins, except the dynamic-shape gather
that the class-token slice `x[:, 0]` becomes under a symbolic batch ('vhlo.dynamic_gather_v1 op is
not part of the vhlo support yet', TF 2.21). So `model.tflite` is converted (with
`TFLiteConverter.from_saved_model`) from a second, fixed-batch SavedModel (batch --tflite_batch,
default 1, cpu lowering) written to a scratch folder; its signature `serving_default` has the same
input and output names. No Select-TF (flex) ops are needed.

ONNX and safetensors checks: the written `model.onnx` is run with onnxruntime (CPU) at the same
two batch sizes, and `model.safetensors` is read back and run by a NumPy forward pass in timm's
layout (and by timm itself when torch and timm import); each must give JAX's float32 logits within
1e-4 (ONNX_TOLERANCE, SAFETENSORS_TOLERANCE, TIMM_TOLERANCE). Their reference is the model computed
in float32 whatever its `dtype`, since both files hold a float32 computation.

Checks (the export fails, leaving nothing at OUT, when one does not hold): the reloaded SavedModel
(TensorFlow, CPU) and the JAX model (CPU, 'highest' matmul precision, so a GPU's TF32 does not
enter) are run on the same seeded inputs (uniform in [-1, 1], two batch sizes) and
max |logit difference| must be <= 1e-4 (SAVED_MODEL_TOLERANCE); TFLite (XNNPACK kernels, another
summation order) must be within 1e-3 (TFLITE_TOLERANCE). Measured on CPU: about 2e-7 for the demo's
tiny model; 1.7e-5 (SavedModel) and 2.4e-5 (TFLite) for a B/16 at 224 with logits up to 16.

The export is written to a temporary folder beside OUT and renamed to OUT once checked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings

import numpy as np
from absl import flags

from vit_se import cli, workdir
from vit_se.errors import Error

SAVED_MODEL_TOLERANCE = 1e-4
TFLITE_TOLERANCE = 1e-3
ONNX_TOLERANCE = 1e-4
SAFETENSORS_TOLERANCE = 1e-4
TIMM_TOLERANCE = 1e-4
FORMATS = ("saved_model", "onnx", "safetensors")
ONNX_FILE = "model.onnx"
SAFETENSORS_FILE = "model.safetensors"
PLATFORMS = ("cpu", "cuda", "tpu")
PREPROCESSING_FILE = "preprocessing.json"
LABELS_FILE = "labels.txt"
REPORT_FILE = "export_report.json"
TFLITE_FILE = "model.tflite"


class ExportError(Error, RuntimeError):
    """The export could not be made or does not match the JAX model."""


def _inference_fn(trained, float32=False):
    import jax

    # The SavedModel is lowered for every platform at once: a cuDNN attention call (a GPU-only
    # custom call) would not lower for cpu or tpu, and XLA's attention is the same function.
    model = trained.model.clone(attention_impl="xla")
    if float32:
        model = model.clone(dtype="float32")

    def fn(params, images):
        logits = model.apply({"params": params}, images)
        return {"probabilities": jax.nn.softmax(logits, axis=-1), "logits": logits}

    return fn


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


def build_module(trained, batch=None, platforms=PLATFORMS):
    """A tf.Module whose `serve` is the jax2tf-converted model (batch None: polymorphic)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    size = trained.image_size
    kwargs = dict(with_gradient=False, native_serialization_platforms=tuple(platforms))
    if batch is None:
        kwargs["polymorphic_shapes"] = [None, "(b, ...)"]
    converted = jax2tf.convert(_inference_fn(trained), **kwargs)

    module = tf.Module()
    module.params = tf.nest.map_structure(
        lambda a: tf.Variable(np.asarray(a), trainable=False), trained.params
    )
    module.class_names = tf.Variable(trained.class_names, trainable=False, name="class_names")
    module.image_size = tf.Variable(size, trainable=False, name="image_size")
    spec = tf.TensorSpec([batch, size, size, 3], tf.float32, name="images")
    module.serve = tf.function(
        lambda images: converted(module.params, images), autograph=False, input_signature=[spec]
    )
    return module


def save_saved_model(trained, path, batch=None, platforms=PLATFORMS, assets_dir=None):
    """Writes the SavedModel to `path` (no checks, not atomic); returns the module."""
    import tensorflow as tf

    module = build_module(trained, batch, platforms)
    if assets_dir is not None:
        labels = os.path.join(assets_dir, LABELS_FILE)
        facts = os.path.join(assets_dir, PREPROCESSING_FILE)
        workdir.write_text(labels, "".join(f"{n}\n" for n in trained.class_names))
        workdir.write_text(facts, json.dumps(preprocessing_facts(trained), indent=1) + "\n")
        module.labels_file = tf.saved_model.Asset(labels)
        module.preprocessing_file = tf.saved_model.Asset(facts)
    signature = module.serve.get_concrete_function()
    tf.saved_model.save(module, path, signatures={"serving_default": signature})
    return module


def convert_tflite(trained, scratch_dir, batch=1):
    """TFLite flatbuffer bytes of the model at a fixed batch (see the module docstring)."""
    import tensorflow as tf

    fixed = os.path.join(scratch_dir, "fixed_batch_saved_model")
    save_saved_model(trained, fixed, batch=batch, platforms=("cpu",))
    converter = tf.lite.TFLiteConverter.from_saved_model(fixed)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return converter.convert()
    finally:
        shutil.rmtree(fixed, ignore_errors=True)


def jax_reference(trained, images, float32=False):
    """JAX logits and probabilities on the CPU at 'highest' matmul precision.

    The checks compare against this rather than `trained.logits`: on a GPU, JAX's default float32
    matmuls may use TF32, which alone can move B/16 logits by more than the tolerance, while the
    check runs the SavedModel with TensorFlow on the CPU. `float32` computes in float32 whatever
    the model's dtype (the ONNX and safetensors files hold a float32 computation).
    """
    import jax

    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu), jax.default_matmul_precision("highest"):
        params = jax.device_put(trained.params, cpu)
        out = jax.jit(_inference_fn(trained, float32))(params, images)
        return np.asarray(out["logits"]), np.asarray(out["probabilities"])


def onnx_diff(path, trained, inputs):
    """max |logit diff| and max |probability diff| of `path` under onnxruntime vs JAX."""
    from vit_se import export_onnx

    sess = export_onnx.session(path)
    dl = dp = 0.0
    for x in inputs:
        logits, probs = export_onnx.run(sess, x)
        ref_logits, ref_probs = jax_reference(trained, x, float32=True)
        dl = max(dl, float(np.max(np.abs(logits - ref_logits))))
        dp = max(dp, float(np.max(np.abs(probs - ref_probs))))
    return dl, dp


def safetensors_diffs(path, trained, inputs):
    """{'numpy': max |logit diff|, 'timm': ... or None} of the file read back vs JAX."""
    from vit_se import export_safetensors as est

    state, meta = est.load(path)
    if json.loads(meta["class_names"]) != trained.class_names:
        raise ExportError(f"{path}: class names {meta['class_names']} != {trained.class_names}")
    diffs = {"numpy": 0.0, "timm": None}
    with_timm = est.timm_available()
    for x in inputs:
        ref, _ = jax_reference(trained, x, float32=True)
        got = est.numpy_logits(state, meta, x)
        diffs["numpy"] = max(diffs["numpy"], float(np.max(np.abs(got - ref))))
        if with_timm:
            t = float(np.max(np.abs(est.timm_logits(path, x) - ref)))
            diffs["timm"] = max(diffs["timm"] or 0.0, t)
    return diffs


def check_inputs(trained, batch_sizes=(4, 1), seed=0):
    rng = np.random.default_rng(seed)
    size = trained.image_size
    return [rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32) for b in batch_sizes]


def saved_model_diff(path, trained, inputs):
    """max |logit diff| and max |probability diff| of the reloaded SavedModel vs JAX."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    dl = dp = 0.0
    for x in inputs:
        with tf.device("/CPU:0"):  # the cpu lowering, whatever devices TensorFlow sees
            out = serve(images=tf.constant(x))
        logits, probs = jax_reference(trained, x)
        dl = max(dl, float(np.max(np.abs(out["logits"].numpy() - logits))))
        dp = max(dp, float(np.max(np.abs(out["probabilities"].numpy() - probs))))
    names = [n.decode() for n in loaded.class_names.numpy()]
    if names != trained.class_names:
        raise ExportError(f"SavedModel class names {names} != {trained.class_names}")
    return dl, dp


def tflite_interpreter(model_path_or_bytes):
    """A TFLite interpreter (LiteRT's when installed, else tf.lite's)."""
    kwargs = (
        {"model_content": model_path_or_bytes}
        if isinstance(model_path_or_bytes, bytes)
        else {"model_path": os.fspath(model_path_or_bytes)}
    )
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "deprecated, use ai_edge_litert"
            return tf.lite.Interpreter(**kwargs)
    return Interpreter(**kwargs)


def run_tflite(model_path_or_bytes, images):
    """Runs `serving_default` of a fixed-batch TFLite model over images; returns logits, probs."""
    runner = tflite_interpreter(model_path_or_bytes).get_signature_runner("serving_default")
    batch = int(runner.get_input_details()["images"]["shape"][0])
    logits, probs = [], []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
        out = runner(images=chunk)
        logits.append(out["logits"][:n])
        probs.append(out["probabilities"][:n])
    return np.concatenate(logits), np.concatenate(probs)


def tflite_diff(model_path_or_bytes, trained, inputs):
    x = np.concatenate(inputs)
    logits, probs = run_tflite(model_path_or_bytes, x)
    ref_logits, ref_probs = jax_reference(trained, x)
    return (
        float(np.max(np.abs(logits - ref_logits))),
        float(np.max(np.abs(probs - ref_probs))),
    )


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
    scratch = tempfile.mkdtemp(prefix="vit_se_export_")
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
        if "saved_model" in formats:
            _export_saved_model(trained, tmp, scratch, inputs, report)
        else:
            workdir.write_text(
                os.path.join(tmp, LABELS_FILE), "".join(f"{n}\n" for n in trained.class_names)
            )
            workdir.write_text(
                os.path.join(tmp, PREPROCESSING_FILE),
                json.dumps(preprocessing_facts(trained), indent=1) + "\n",
            )
        if "onnx" in formats:
            _export_onnx(trained, tmp, inputs, report)
        if "safetensors" in formats:
            _export_safetensors(trained, tmp, inputs, report)
        if tflite:
            _export_tflite(trained, tmp, scratch, inputs, tflite_batch, report)
        report["seconds"] = round(time.time() - start, 1)
        workdir.write_text(os.path.join(tmp, REPORT_FILE), json.dumps(report, indent=1) + "\n")
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _export_saved_model(trained, tmp, scratch, inputs, report):
    save_saved_model(trained, tmp, assets_dir=scratch)
    size = trained.image_size
    dl, dp = saved_model_diff(tmp, trained, inputs)
    report["signature"] = {
        "name": "serving_default",
        "inputs": {"images": f"float32 [batch, {size}, {size}, 3] in [-1, 1]"},
        "outputs": {"probabilities": "float32 [batch, C]", "logits": "float32 [batch, C]"},
    }
    report["jax2tf"] = {
        "native_serialization": True,
        "platforms": list(PLATFORMS),
        "polymorphic_shapes": "[None, '(b, ...)']",
    }
    report["saved_model"] = {
        "max_abs_logit_diff": dl,
        "max_abs_probability_diff": dp,
        "tolerance": SAVED_MODEL_TOLERANCE,
    }
    print(
        f"SavedModel vs JAX: max |logit diff| = {dl:.3g}, max |probability diff| = {dp:.3g} "
        f"(tolerance {SAVED_MODEL_TOLERANCE:g})"
    )
    if not dl <= SAVED_MODEL_TOLERANCE:
        raise ExportError(
            f"SavedModel logits differ from JAX by {dl:.3g} > {SAVED_MODEL_TOLERANCE:g}"
        )


def _export_tflite(trained, tmp, scratch, inputs, tflite_batch, report):
    flatbuffer = convert_tflite(trained, scratch, batch=tflite_batch)
    tflite_path = os.path.join(tmp, TFLITE_FILE)
    with open(tflite_path, "wb") as f:
        f.write(flatbuffer)
    tl, tp = tflite_diff(tflite_path, trained, inputs)
    report["tflite"] = {
        "file": TFLITE_FILE,
        "batch": tflite_batch,
        "max_abs_logit_diff": tl,
        "max_abs_probability_diff": tp,
        "tolerance": TFLITE_TOLERANCE,
        "bytes": len(flatbuffer),
    }
    print(
        f"TFLite vs JAX: max |logit diff| = {tl:.3g}, max |probability diff| = {tp:.3g} "
        f"(tolerance {TFLITE_TOLERANCE:g}, fixed batch {tflite_batch})"
    )
    if not tl <= TFLITE_TOLERANCE:
        raise ExportError(f"TFLite logits differ from JAX by {tl:.3g} > {TFLITE_TOLERANCE:g}")


def _export_onnx(trained, tmp, inputs, report):
    from vit_se import export_onnx

    path = os.path.join(tmp, ONNX_FILE)
    model = export_onnx.build_model(
        trained.params, trained.info.model, trained.image_size, trained.class_names
    )
    export_onnx.save(model, path)
    dl, dp = onnx_diff(path, trained, inputs)
    report["onnx"] = {
        "file": ONNX_FILE,
        "opset": export_onnx.OPSET,
        "inputs": {export_onnx.INPUT: "float32 [batch, S, S, 3] in [-1, 1]"},
        "outputs": {n: "float32 [batch, C]" for n in export_onnx.OUTPUTS},
        "runtime": "onnxruntime CPUExecutionProvider",
        "max_abs_logit_diff": dl,
        "max_abs_probability_diff": dp,
        "tolerance": ONNX_TOLERANCE,
        "bytes": os.path.getsize(path),
    }
    print(
        f"ONNX (onnxruntime) vs JAX: max |logit diff| = {dl:.3g}, max |probability diff| = "
        f"{dp:.3g} (tolerance {ONNX_TOLERANCE:g})"
    )
    if not dl <= ONNX_TOLERANCE:
        raise ExportError(f"ONNX logits differ from JAX by {dl:.3g} > {ONNX_TOLERANCE:g}")


def _export_safetensors(trained, tmp, inputs, report):
    from vit_se import export_safetensors as est

    path = os.path.join(tmp, SAFETENSORS_FILE)
    data = est.to_bytes(trained.params, trained.info.model, trained.image_size, trained.class_names)
    with open(path, "wb") as f:
        f.write(data)
    diffs = safetensors_diffs(path, trained, inputs)
    report["safetensors"] = {
        "file": SAFETENSORS_FILE,
        "format": est.FORMAT,
        "timm_model": est.timm_model_name(trained.info.model, trained.image_size),
        "max_abs_logit_diff_numpy": diffs["numpy"],
        "max_abs_logit_diff_timm": diffs["timm"],
        "tolerance": SAFETENSORS_TOLERANCE,
        "bytes": len(data),
    }
    timm = "timm not installed" if diffs["timm"] is None else f"timm {diffs['timm']:.3g}"
    print(
        f"safetensors (timm layout) vs JAX: max |logit diff| = {diffs['numpy']:.3g} (NumPy), "
        f"{timm} (tolerance {SAFETENSORS_TOLERANCE:g})"
    )
    if not diffs["numpy"] <= SAFETENSORS_TOLERANCE:
        raise ExportError(
            f"safetensors logits (NumPy, timm layout) differ from JAX by {diffs['numpy']:.3g} > "
            f"{SAFETENSORS_TOLERANCE:g}"
        )
    if diffs["timm"] is not None and not diffs["timm"] <= TIMM_TOLERANCE:
        raise ExportError(
            f"safetensors logits under timm differ from JAX by {diffs['timm']:.3g} > "
            f"{TIMM_TOLERANCE:g}"
        )


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
    files = []
    for root, _, names in os.walk(local_dir):
        files += [os.path.relpath(os.path.join(root, n), local_dir) for n in names]
    files.sort(key=lambda rel: rel == REPORT_FILE)
    import tensorflow as tf

    if tf.io.gfile.exists(remote_dir):  # --overwrite: no file of the old export may remain
        tf.io.gfile.rmtree(remote_dir)
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
