"""`vit_se.export`: jax2tf SavedModel (+ TFLite) of a tiny trained run, checked against JAX.

The SavedModel must give the JAX model's logits within 1e-4 on the same inputs (drawn faces through
the evaluation transform, and random inputs in [-1, 1]) at several batch sizes (the batch is
polymorphic); the TFLite model (fixed batch 1, see vit_se/export.py for why) within
export.TFLITE_TOLERANCE = 1e-3. A failed check must leave nothing behind.
"""

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

from vit_se import export, inference
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


def _faces(trained, n=6):
    rng = np.random.default_rng(1)
    images = [draw_face(i % 7, 80, rng, rgb=bool(i % 2)) for i in range(n)]
    return np.stack([inference.preprocess(im, trained.info) for im in images])


def test_saved_model_logits_match_jax(trained, exported):
    out, report = exported
    loaded = tf.saved_model.load(out)
    serve = loaded.signatures["serving_default"]
    rng = np.random.default_rng(7)
    faces = _faces(trained)
    worst = 0.0
    for x in (faces, faces[:1], rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)):
        got = serve(images=tf.constant(x))
        assert got["logits"].shape == (len(x), 7)
        diff = float(np.max(np.abs(got["logits"].numpy() - trained.logits(x))))
        worst = max(worst, diff)
        tolerances.assert_close(got["probabilities"].numpy().sum(-1), np.ones(len(x)), n=7)
        tolerances.assert_close(
            loaded.serve(x)["logits"].numpy(),
            got["logits"].numpy(),
            tolerances.vit_sums(trained.model, 48),
        )
    print(f"SavedModel vs JAX: max |logit diff| = {worst:.3g}")
    assert worst <= 1e-4
    assert report["saved_model"]["max_abs_logit_diff"] <= 1e-4


def test_parity_holds_for_confident_logits(trained, tmp_path):
    """The short run's logits are near 0; a scaled head gives logits of tens, as real runs do."""
    rng = np.random.default_rng(3)
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in trained.params.items()}
    params["head"]["kernel"] = rng.normal(0, 2.0, params["head"]["kernel"].shape).astype(np.float32)
    sharp = inference.Trained(trained.model, params, trained.info)
    faces = _faces(sharp)
    assert np.abs(sharp.logits(faces)).max() > 5
    report = export.export(sharp, tmp_path / "sm")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    got = loaded.signatures["serving_default"](images=tf.constant(faces))["logits"].numpy()
    diff = float(np.max(np.abs(got - sharp.logits(faces))))
    print(f"SavedModel vs JAX, |logits| up to {np.abs(got).max():.1f}: max diff = {diff:.3g}")
    assert diff <= 1e-4 and report["saved_model"]["max_abs_logit_diff"] <= 1e-4


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


def test_tflite_matches_jax(trained, exported):
    out, report = exported
    faces = _faces(trained, n=3)
    logits, probs = export.run_tflite(os.path.join(out, "model.tflite"), faces)
    diff = float(np.max(np.abs(logits - trained.logits(faces))))
    print(f"TFLite vs JAX: max |logit diff| = {diff:.3g} (tolerance {export.TFLITE_TOLERANCE})")
    assert diff <= export.TFLITE_TOLERANCE
    tolerances.assert_close(probs.sum(-1), np.ones(len(probs)), n=7)
    assert report["tflite"]["max_abs_logit_diff"] <= export.TFLITE_TOLERANCE
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


def test_failed_check_leaves_nothing(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "SAVED_MODEL_TOLERANCE", -1.0)
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
    m = re.search(r"SavedModel vs JAX: max \|logit diff\| = (\S+),", r.stdout)
    assert m and float(m.group(1)) <= 1e-4, r.stdout
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
def sharp(trained):
    """The demo model with a scaled head: logits of tens, as real runs give."""
    rng = np.random.default_rng(3)
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in trained.params.items()}
    params["head"]["kernel"] = rng.normal(0, 2.0, params["head"]["kernel"].shape).astype(np.float32)
    return inference.Trained(trained.model, params, trained.info)


@pytest.fixture(scope="module")
def onnx_and_safetensors(sharp, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("safetensors")
    out = tmp_path_factory.mktemp("exports") / "portable"
    report = export.export(sharp, out, formats=("onnx", "safetensors"))
    return str(out), report


def test_onnx_and_safetensors_exports_reload_and_match_jax(sharp, onnx_and_safetensors):
    from vit_se import export_onnx
    from vit_se import export_safetensors as est

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
    sess = export_onnx.session(os.path.join(out, "model.onnx"))
    state, meta = est.load(os.path.join(out, "model.safetensors"))
    worst = {"onnx": 0.0, "safetensors": 0.0}
    # Three batch sizes: the ONNX batch axis is symbolic.
    for x in (faces, faces[:1], rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)):
        want = sharp.logits(x)
        logits, probs = export_onnx.run(sess, x)
        assert logits.shape == (len(x), 7)
        tolerances.assert_close(probs.sum(-1), np.ones(len(x)), n=7)
        worst["onnx"] = max(worst["onnx"], float(np.max(np.abs(logits - want))))
        got = est.numpy_logits(state, meta, x)
        worst["safetensors"] = max(worst["safetensors"], float(np.max(np.abs(got - want))))
    print(f"max |logit diff| vs JAX (|logits| up to {np.abs(want).max():.1f}): {worst}")
    assert np.abs(sharp.logits(faces)).max() > 5
    assert worst["onnx"] <= 1e-4 and worst["safetensors"] <= 1e-4
    assert report["onnx"]["max_abs_logit_diff"] <= 1e-4
    assert report["safetensors"]["max_abs_logit_diff_numpy"] <= 1e-4
    assert [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".")] == []


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


def test_readme_has_the_timm_loader_snippet():
    from vit_se import export_safetensors as est

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert est.TIMM_LOADER in readme


def test_safetensors_logits_match_timm(sharp, onnx_and_safetensors):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from vit_se import export_safetensors as est

    out, _ = onnx_and_safetensors
    x = _faces(sharp, n=3)
    diff = float(
        np.max(np.abs(est.timm_logits(os.path.join(out, "model.safetensors"), x) - sharp.logits(x)))
    )
    print(f"timm vs JAX: max |logit diff| = {diff:.3g}")
    assert diff <= 1e-4


def test_failed_onnx_check_or_crash_leaves_nothing(trained, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("safetensors")
    monkeypatch.setattr(export, "ONNX_TOLERANCE", -1.0)
    with pytest.raises(export.ExportError, match="ONNX logits differ from JAX"):
        export.export(trained, tmp_path / "a", formats=("onnx",))
    monkeypatch.undo()

    from vit_se import export_safetensors as est

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(est, "to_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export(trained, tmp_path / "b", formats=("onnx", "safetensors"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(export.ExportError, match="--format must list some of"):
        export.export(trained, tmp_path / "c", formats=("onnx", "pt"))
