"""`vit_se.export`: every format of a tiny trained run, written, read back and checked against JAX.

The SavedModel, TFLite, ONNX and timm files must give the JAX model's logits on the same inputs
(drawn faces through the evaluation transform, and random inputs in [-1, 1]) at several batch
sizes (the SavedModel and ONNX batch is polymorphic, TFLite's fixed at 1, see vit_se/export_tf.py
for why) within the scale rule's tolerance (`export.tolerance`: float32 rounding over the model's
chained sums, times the logits' magnitude); the safetensors file must hold the flax parameters bit
for bit. A failed check must leave nothing behind.
"""

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tolerances
from conftest import TIMEOUT

from vit_se import export, export_tf, inference, model_configs
from vit_se.datasets.labels import CLASS_NAMES
from vit_se.datasets.synthetic_faces import draw_face

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")


def _run(*args, timeout=TIMEOUT, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def workdir(demo_run):
    return demo_run["workdir"]


@pytest.fixture(scope="module")
def trained(workdir):
    return inference.load_trained(workdir)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "saved_model"
    report = export.export(trained, out, tflite=True)
    return str(out), report


@pytest.fixture(scope="module")
def sharp(trained):
    """The demo model with a scaled head: logits of tens, as real runs give."""
    rng = np.random.default_rng(3)
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in trained.params.items()}
    params["head"]["kernel"] = rng.normal(0, 2.0, params["head"]["kernel"].shape).astype(np.float32)
    return inference.Trained(trained.model, params, trained.info)


def _faces(trained, n=6):
    rng = np.random.default_rng(1)
    images = [draw_face(i % 7, 80, rng, rgb=bool(i % 2)) for i in range(n)]
    return np.stack([inference.preprocess(im, trained.info) for im in images])


@pytest.mark.slow
def test_saved_model_logits_match_jax(trained, exported):
    out, report = exported
    loaded = tf.saved_model.load(out)
    serve = loaded.signatures["serving_default"]
    rng = np.random.default_rng(7)
    faces = _faces(trained)
    worst, wanted = 0.0, []
    for x in (faces, faces[:1], rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)):
        got = serve(images=tf.constant(x))
        assert got["logits"].shape == (len(x), 7)
        wanted.append(trained.logits(x))
        worst = max(worst, float(np.max(np.abs(got["logits"].numpy() - wanted[-1]))))
        tolerances.assert_close(got["probabilities"].numpy().sum(-1), np.ones(len(x)), n=7)
        tolerances.assert_close(
            loaded.serve(x)["logits"].numpy(),
            got["logits"].numpy(),
            tolerances.vit_sums(trained.model, 48),
        )
    limit = export.tolerance(trained, wanted)
    print(f"SavedModel vs JAX: max |logit diff| = {worst:.3g} (tolerance {limit:.2g})")
    assert worst <= limit
    assert report["saved_model"]["max_abs_logit_diff"] <= report["saved_model"]["tolerance"]


@pytest.mark.slow
def test_parity_holds_for_confident_logits(sharp, tmp_path):
    """The short run's logits are near 0; a scaled head gives logits of tens, as real runs do."""
    faces = _faces(sharp)
    want = sharp.logits(faces)
    assert np.abs(want).max() > 5
    report = export.export(sharp, tmp_path / "sm")
    got = export_tf.logits(str(tmp_path / "sm"), faces)
    diff = float(np.max(np.abs(got - want)))
    limit = export.tolerance(sharp, [want])
    print(f"SavedModel vs JAX, |logits| up to {np.abs(got).max():.1f}: max diff = {diff:.3g}")
    assert diff <= limit
    assert report["saved_model"]["max_abs_logit_diff"] <= report["saved_model"]["tolerance"]


def test_tolerance_follows_the_scale_of_the_logits_and_the_dtype(trained):
    small, big = np.full((2, 7), 0.25), np.full((2, 7), -8.0)
    base = export.tolerance(trained, [small])
    # float32 rounding over the chained sums, 4 eps * sqrt(terms), at least at unit scale.
    terms = export.summed_terms(trained.info.model, trained.image_size)
    assert base == pytest.approx(4 * np.finfo(np.float32).eps * np.sqrt(terms))
    assert export.tolerance(trained, [small, big]) == pytest.approx(8 * base)
    bf16 = inference.Trained(trained.model.clone(dtype="bfloat16"), trained.params, trained.info)
    assert export.tolerance(bf16, [small]) == pytest.approx(2**16 * base)  # 2^-7 vs 2^-23
    assert export.tolerance(bf16, [small], float32=True) == pytest.approx(base)
    # A bigger model sums more terms: B/16 at 224 by about sqrt(60) more than the demo's.
    b16 = export.summed_terms(model_configs.get_config("B/16").to_dict(), 224)
    assert 40 * terms < b16 < 80 * terms


@pytest.mark.slow
def test_saved_model_carries_labels_and_preprocessing(trained, exported):
    out, report = exported
    assert sorted(os.listdir(out)) == sorted(
        [
            "assets",
            "export_report.json",
            "fingerprint.pb",
            "model.tflite",
            "saved_model.pb",
            "variables",
        ]
    )
    with open(os.path.join(out, "assets", "labels.txt")) as f:
        assert f.read().split("\n") == [*CLASS_NAMES, ""]
    with open(os.path.join(out, "assets", "preprocessing.json")) as f:
        facts = json.load(f)
    assert facts["image_size"] == 48 and facts["face_crop"] == "none"
    # The demo trains with random resized crops: evaluation resizes the whole image, no crop.
    assert facts["eval_resize"] == 48 and "centre" not in facts["resize"]
    assert facts["class_names"] == list(CLASS_NAMES)
    loaded = tf.saved_model.load(out)
    assert [n.decode() for n in loaded.class_names.numpy()] == list(CLASS_NAMES)
    assert int(loaded.image_size.numpy()) == 48
    assert loaded.labels_file.asset_path.numpy().decode().endswith("assets/labels.txt")
    with open(os.path.join(out, "export_report.json")) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".")] == []


@pytest.mark.slow
def test_tflite_matches_jax(trained, exported):
    out, report = exported
    faces = _faces(trained, n=3)  # three calls of the batch-1 model
    got = export_tf.outputs(os.path.join(out, "model.tflite"), [faces])[0]
    want = trained.logits(faces)
    diff = float(np.max(np.abs(got["logits"] - want)))
    limit = export.tolerance(trained, [want])
    print(f"TFLite vs JAX: max |logit diff| = {diff:.3g} (tolerance {limit:.2g})")
    assert got["logits"].shape == (3, 7) and diff <= limit
    tolerances.assert_close(got["probabilities"].sum(-1), np.ones(len(got["probabilities"])), n=7)
    assert report["tflite"]["max_abs_logit_diff"] <= report["tflite"]["tolerance"]
    assert report["tflite"]["batch"] == 1


@pytest.mark.slow
def test_saved_model_runs_with_tensorflow_alone(exported, tmp_path):
    """A consumer needs TensorFlow only: no vit_se on the path, run from elsewhere."""
    out, _ = exported
    code = (
        "import numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({out!r})\n"
        "p = m.signatures['serving_default'](images=tf.zeros([2, 48, 48, 3]))['probabilities']\n"
        "print(p.shape, float(tf.reduce_sum(p)))\n"
    )
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    r = _run("-c", code, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    shape, total = r.stdout.split(")")
    assert shape == "(2, 7" and float(total) == tolerances.approx(2.0, n=14, scale=1.0)


@pytest.mark.slow
def test_failed_check_leaves_nothing(trained, tmp_path, monkeypatch):
    never = dataclasses.replace(export.TABLE["saved_model"], tolerance=-1.0)
    monkeypatch.setitem(export.TABLE, "saved_model", never)
    with pytest.raises(export.ExportError, match="SavedModel logits differ from JAX"):
        export.export(trained, tmp_path / "sm")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_cli_prints_parity_and_never_clobbers(workdir, tmp_path):
    out = tmp_path / "sm"
    r = _run(
        "-m", "vit_se.export", f"--workdir={workdir}", "--params=best_params.npz", f"--out={out}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(
        r"SavedModel vs JAX: max \|logit diff\| = (\S+), .* \(tolerance (\S+)\)\n", r.stdout
    )
    assert m and float(m.group(1)) <= float(m.group(2)), r.stdout
    assert (out / "saved_model.pb").exists() and not (out / "model.tflite").exists()
    with open(out / "export_report.json") as f:
        assert json.load(f)["source"]["params"] == "best_params.npz"

    r = _run("-m", "vit_se.export", f"--workdir={workdir}", f"--out={out}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"vit_se.export: {out} exists; pass --overwrite to replace it"
    )


# ------------------------------------------------------------------------------ ONNX, safetensors


@pytest.fixture(scope="module")
def onnx_and_safetensors(sharp, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("safetensors")
    out = tmp_path_factory.mktemp("exports") / "portable"
    report = export.export(sharp, out, formats=("onnx", "safetensors"))
    return str(out), report


def test_onnx_and_safetensors_exports_reload_and_match_jax(sharp, onnx_and_safetensors):
    from vit_se import export_onnx

    out, report = onnx_and_safetensors
    assert sorted(os.listdir(out)) == [
        "export_report.json",
        "labels.txt",
        "model.onnx",
        "model.safetensors",
        "preprocessing.json",
    ]
    faces = _faces(sharp)
    rng = np.random.default_rng(11)
    # Three batch sizes: the ONNX batch axis is symbolic.
    batches = [faces, faces[:1], rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)]
    wanted = [sharp.logits(x) for x in batches]
    worst = 0.0
    for x, got, want in zip(
        batches, export_onnx.outputs(os.path.join(out, "model.onnx"), batches), wanted, strict=True
    ):
        assert got["logits"].shape == (len(x), 7)
        tolerances.assert_close(
            got["probabilities"].sum(-1), np.ones(len(got["probabilities"])), n=7
        )
        worst = max(worst, float(np.max(np.abs(got["logits"] - want))))
    limit = export.tolerance(sharp, wanted, float32=True)
    print(f"ONNX vs JAX (|logits| up to {np.abs(wanted[0]).max():.1f}): {worst:.3g} <= {limit:.2g}")
    assert np.abs(wanted[0]).max() > 5
    assert worst <= limit
    assert report["onnx"]["max_abs_logit_diff"] <= report["onnx"]["tolerance"]
    assert report["safetensors"]["tensors_bit_equal"] == 36
    assert [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".")] == []


def test_safetensors_maps_back_onto_the_flax_tree_bit_for_bit(
    sharp, onnx_and_safetensors, tmp_path
):
    from safetensors.numpy import save_file

    from vit_se import checkpoint
    from vit_se import export_safetensors as est

    out, _ = onnx_and_safetensors
    path = os.path.join(out, "model.safetensors")
    state, meta = est.load(path)
    back = checkpoint.flatten(est.to_params(state, meta))
    want = checkpoint.flatten(sharp.params)
    assert sorted(back) == sorted(want)
    for key, value in want.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], np.asarray(value), err_msg=key)
    assert est.check(sharp, path)["tensors_bit_equal"] == len(state) == 36

    def check(**changed):
        changed_path = str(tmp_path / "changed.safetensors")
        save_file(
            {k: v for k, v in {**state, **changed}.items() if v is not None}, changed_path, meta
        )
        return est.check(sharp, changed_path)

    fc2 = state["blocks.1.mlp.fc2.weight"].copy()
    fc2.flat[5] = np.nextafter(fc2.flat[5], np.float32(np.inf))  # one unit in the last place
    with pytest.raises(
        est.SafetensorsExportError, match="encoderblock_1/MlpBlock_0/Dense_1/kernel read back"
    ):
        check(**{"blocks.1.mlp.fc2.weight": fc2})
    qkv = state["blocks.0.attn.qkv.weight"]
    swapped = np.concatenate([qkv[64:128], qkv[:64], qkv[128:]])  # k before q
    with pytest.raises(est.SafetensorsExportError, match=r"encoderblock_0/.*/(query|key)/kernel"):
        check(**{"blocks.0.attn.qkv.weight": swapped})
    with pytest.raises(est.SafetensorsExportError, match="se.expand.bias is missing"):
        check(**{"se.expand.bias": None})
    with pytest.raises(est.SafetensorsExportError, match="outside timm's layout: \\['extra'\\]"):
        check(extra=np.zeros(3, np.float32))


def test_safetensors_has_timm_keys_and_layouts(sharp, onnx_and_safetensors):
    from vit_se import export_safetensors as est

    out, _ = onnx_and_safetensors
    state, meta = est.load(os.path.join(out, "model.safetensors"))
    kw = json.loads(meta["timm_kwargs"])
    d, p = kw["embed_dim"], kw["patch_size"]
    assert (d, p, kw["depth"], kw["num_classes"]) == (64, 8, 2, 7)
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)
    assert state["patch_embed.proj.weight"].shape == (d, 3, p, p)
    assert state["cls_token"].shape == (1, 1, d) and state["pos_embed"].shape == (1, 37, d)
    assert state["blocks.1.attn.qkv.weight"].shape == (3 * d, d)
    assert state["blocks.1.attn.qkv.bias"].shape == (3 * d,)
    assert state["blocks.0.mlp.fc1.weight"].shape == (128, d)
    assert state["head.weight"].shape == (7, d)
    assert state["se.reduce.weight"].shape == (d // 4, d)
    # q, k, v in that order: the key third of qkv is the flax key kernel, transposed.
    key = np.asarray(
        sharp.params["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_0"]["key"][
            "kernel"
        ]
    )
    np.testing.assert_array_equal(state["blocks.1.attn.qkv.weight"][d : 2 * d], key.reshape(d, d).T)
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed"}
    expected |= {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    expected |= {f"se.{n}.{w}" for n in ("reduce", "expand") for w in ("weight", "bias")}
    for i in range(2):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert set(state) == expected


def test_readme_shows_the_timm_loader_module_line_for_line():
    """The README's loader is vit_se/timm_vit_se.py's code from its first import down."""
    with open(os.path.join(ROOT, "vit_se", "timm_vit_se.py")) as f:
        source = f.read()
    after_docstring = ast.parse(source).body[0].end_lineno
    code = "".join(source.splitlines(keepends=True)[after_docstring:]).strip()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "```python\n" + code + "\n" in readme


def test_timm_loader_imports_without_torch():
    r = _run(
        "-c", "import sys, vit_se.timm_vit_se; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


def test_safetensors_logits_match_timm(sharp, onnx_and_safetensors):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from vit_se import export_safetensors as est

    out, report = onnx_and_safetensors
    x = _faces(sharp, n=3)
    want = sharp.logits(x)
    diff = float(np.max(np.abs(est.logits(os.path.join(out, "model.safetensors"), x) - want)))
    limit = export.tolerance(sharp, [want], float32=True)
    print(f"timm vs JAX: max |logit diff| = {diff:.3g} (tolerance {limit:.2g})")
    assert diff <= limit
    entry = report["safetensors"]
    assert (
        entry["runtime"].startswith("timm ") and entry["max_abs_logit_diff"] <= entry["tolerance"]
    )


def test_wrong_onnx_graph_or_crash_leaves_nothing(sharp, tmp_path, monkeypatch):
    """The tolerance is tight enough to catch a real slip: exact-erf GELU instead of tanh's."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("safetensors")
    from vit_se import export_onnx
    from vit_se import export_safetensors as est

    op = export_onnx._Graph.op

    def erf_gelu(self, op_type, inputs, **attrs):
        return op(
            self,
            op_type,
            inputs,
            **{**attrs, **({"approximate": "none"} if op_type == "Gelu" else {})},
        )

    monkeypatch.setattr(export_onnx._Graph, "op", erf_gelu)
    with pytest.raises(export.ExportError, match=r"ONNX \(onnxruntime\) logits differ from JAX"):
        export.export(sharp, tmp_path / "a", formats=("onnx",))
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(est, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export(sharp, tmp_path / "b", formats=("onnx", "safetensors"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(export.ExportError, match="--format must list some of"):
        export.export(sharp, tmp_path / "c", formats=("onnx", "pt"))
