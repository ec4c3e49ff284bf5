"""The look inside the model: attention maps, rollout, Grad-CAM, SE weights, figures and the CLI.

Most tests use a tiny random model (tiny/4 at 16 px: a 4x4 patch grid) with a random head, so that
logits and gradients are not zero; the CLI runs on a workdir the real trainer leaves behind.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances
from conftest import TIMEOUT
from PIL import Image

from vit_se import analyze, attention, checkpoint, figures, inference, model_configs, models
from vit_se import workdir as workdir_lib
from vit_se.datasets.synthetic_faces import draw_face, save_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIZE = 16  # tiny/4 -> 4x4 patches + the class token: T = 17


def _trained(image_size=SIZE, seed=0, heads=None, **overrides):
    config = model_configs.get_config("tiny/4")
    if heads:
        config.transformer.num_heads = heads
    for k, v in overrides.items():
        config[k] = v
    model = models.build_model(config, len(NAMES))
    x = jnp.zeros((1, image_size, image_size, 3))
    params = model.init(jax.random.PRNGKey(seed), x)["params"]
    # The head is zero-initialised: make it random so logits and gradients are not all zero.
    head = params["head"]["kernel"]
    params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(seed + 1), head.shape)
    info = workdir_lib.ExportInfo(
        model=config.to_dict(), class_names=NAMES, image_size=image_size, eval_resize=image_size
    )
    return inference.Trained(model, params, info)


def _images(n, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    return _trained()


def _rollout_sums(layers, heads, tokens):
    """n of a rollout: per layer the head fusion, the row sum that renormalises and the
    matrix product over tokens."""
    return layers * (heads + 2 * tokens)


def _reference_rollout(weights):
    """Abnar & Zuidema's own recipe for mean fusion: 0.5 A + 0.5 I, renormalised, multiplied."""
    joint = None
    for w in np.asarray(weights, np.float64):  # layers, N, H, T, T
        a = w.mean(axis=1)
        a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a if joint is None else np.einsum("nij,njk->nik", a, joint)
    return joint


# ----------------------------------------------------------------------------------------------
# Rollout as a function of given weights.


@pytest.mark.parametrize("fusion", attention.HEAD_FUSIONS)
def test_rollout_of_identity_attention_is_identity(fusion):
    eye = np.broadcast_to(np.eye(17, dtype=np.float32), (3, 4, 17, 17))
    r = np.asarray(attention.rollout_matrix([eye] * 5, fusion))
    np.testing.assert_array_equal(r, np.broadcast_to(np.eye(17), (3, 17, 17)))


def test_rollout_of_random_attention_matches_the_papers_recipe():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 2, 17, 17)) * 2  # layers, N, heads, T, T
    w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    r = np.asarray(attention.rollout_matrix(list(w.astype(np.float32)), "mean"))
    # Rows of probabilities: scale 1, against a float64 reference of the float32 weights.
    n = _rollout_sums(3, 2, 17)
    tolerances.assert_close(r, _reference_rollout(w), n, scale=1.0)
    tolerances.assert_close(r.sum(-1), np.ones(r.shape[:-1]), n + 17)
    # max/min fusion rows do not sum to 1 before renormalisation; the rollout's still do.
    for fusion in ("max", "min"):
        rf = np.asarray(attention.rollout_matrix(list(w.astype(np.float32)), fusion))
        tolerances.assert_close(rf.sum(-1), np.ones(rf.shape[:-1]), n + 17)
    # One layer of uniform attention: (U + I) / 2.
    uniform = np.full((1, 1, 5, 5), 0.2, np.float32)
    tolerances.assert_close(
        attention.rollout_matrix([uniform])[0],
        (np.full((5, 5), 0.2) + np.eye(5)) / 2,
        _rollout_sums(1, 1, 5),
        scale=1.0,
    )
    with pytest.raises(ValueError, match="head_fusion"):
        attention.rollout_matrix([uniform], "median")


@pytest.mark.slow
def test_model_with_identity_attention_rolls_out_to_identity():
    """Query = key = 30 x the normalised token, one head: each token attends only to itself."""
    t = _trained(heads=1)
    params = jax.tree_util.tree_map(np.array, t.params)
    width = t.model.hidden_size
    for i in range(t.model.transformer["num_layers"]):
        block = params["Transformer"][f"encoderblock_{i}"]
        attn = block["MultiHeadDotProductAttention_0"]
        for name in ("query", "key"):
            attn[name]["kernel"] = 30.0 * np.eye(width, dtype=np.float32).reshape(width, 1, width)
            attn[name]["bias"] = np.zeros((1, width), np.float32)
        np.testing.assert_array_equal(block["LayerNorm_0"]["scale"], 1.0)
        np.testing.assert_array_equal(block["LayerNorm_0"]["bias"], 0.0)
    t = inference.Trained(t.model, params, t.info)
    x = _images(2)
    w = attention.attention_weights(t, x)  # N, layers, heads, T, T
    eye = np.eye(w.shape[-1])
    # Off the diagonal the attention logits are thousands below it: exp underflows to 0, and what
    # is left is the rounding of probabilities (scale 1) after the model's sums.
    n = tolerances.vit_sums(t.model, SIZE)
    tolerances.assert_close(w, np.broadcast_to(eye, w.shape), n)
    full = np.asarray(attention.rollout_matrix(list(np.moveaxis(w, 1, 0))))
    n += _rollout_sums(2, 1, 17)
    tolerances.assert_close(full, np.broadcast_to(eye, full.shape), n)
    maps, roll = attention.analyze_attention(t, x)
    tolerances.assert_close(roll, np.zeros_like(roll), n, scale=1.0)  # class token keeps to itself
    tolerances.assert_close(maps, np.zeros_like(maps), n, scale=1.0)


# ----------------------------------------------------------------------------------------------
# The model-bound API.


def test_attention_maps_and_rollout_shapes_and_sums(tiny):
    x = _images(3)
    maps = attention.attention_maps(tiny, x)
    roll = attention.attention_rollout(tiny, x)
    w = attention.attention_weights(tiny, x)
    assert maps.shape == (3, 2, 2, 4, 4) and roll.shape == (3, 4, 4)
    assert w.shape == (3, 2, 2, 17, 17)
    assert np.isfinite(maps).all() and np.isfinite(roll).all()
    # Probabilities (scale 1): each computed by the model's sums, in separately jitted programs.
    n = tolerances.vit_sums(tiny.model, SIZE)
    tolerances.assert_close(w.sum(-1), np.ones(w.shape[:-1]), n + 17)
    # A map is row 0 without its first entry (the class token attending to itself).
    tolerances.assert_close(maps.sum((-1, -2)), 1.0 - w[:, :, :, 0, 0], n + 16, scale=1.0)
    tolerances.assert_close(maps.reshape(3, 2, 2, 16), w[:, :, :, 0, 1:], n, scale=1.0)
    full = np.asarray(attention.rollout_matrix(list(np.moveaxis(w, 1, 0))))
    rolled = _rollout_sums(2, 2, 17)
    tolerances.assert_close(full.sum(-1), np.ones(full.shape[:-1]), n + rolled + 17)
    tolerances.assert_close(roll.reshape(3, 16), full[:, 0, 1:], n + rolled, scale=1.0)
    tolerances.assert_close(full, _reference_rollout(np.moveaxis(w, 1, 0)), rolled, scale=1.0)
    assert (roll >= 0).all() and (roll.sum((1, 2)) < 1).all()
    for fusion in ("max", "min"):
        r = attention.attention_rollout(tiny, x, head_fusion=fusion)
        assert r.shape == (3, 4, 4) and np.isfinite(r).all()


@pytest.mark.slow
def test_batching_and_the_sowing_clone_change_nothing(tiny):
    x = _images(5, seed=1)
    whole = attention.analyze(tiny, x, batch_size=8)
    pieces = attention.analyze(tiny, x, batch_size=2)  # 2 + 2 + 1 padded to 2
    # Batches of other sizes run other matmul shapes: float32 rounding at each output's own scale,
    # after the forward sums (and, for Grad-CAM, the backward ones and the width).
    forward = tolerances.vit_sums(tiny.model, SIZE)
    backward = tolerances.vit_grad_sums(tiny.model, SIZE, 1) + tiny.model.hidden_size
    np.testing.assert_array_equal(whole.grad_cam_class, pieces.grad_cam_class)
    for field in ("logits", "probabilities", "attention", "rollout", "se"):
        n = forward + _rollout_sums(2, 2, 17) if field == "rollout" else forward
        tolerances.assert_close(getattr(whole, field), getattr(pieces, field), n, err_msg=field)
    tolerances.assert_close(whole.grad_cam, pieces.grad_cam, backward)
    # The sowing clone computes the last block for every token (the plain model only for the
    # class token): the same logits up to float32 summation order.
    tolerances.assert_close(whole.logits, tiny.logits(x), forward)
    single = attention.attention_rollout(tiny, x[0])  # one SxSx3 image
    tolerances.assert_close(single[0], whole.rollout[0], forward + _rollout_sums(2, 2, 17))


@pytest.mark.parametrize("layer", [-1, 0])
@pytest.mark.grid
def test_grad_cam_is_the_gradient_of_the_class_logit(tiny, layer):
    x = _images(3, seed=2)
    logits = tiny.logits(x)
    cam = attention.grad_cam(tiny, x, layer=layer)
    assert cam.shape == (3, 4, 4) and np.isfinite(cam).all() and (cam >= 0).all()
    assert (cam.reshape(3, -1).max(-1) > 0).all()

    acts, grads, cls = attention.token_gradients(tiny, x, layer=layer)
    np.testing.assert_array_equal(cls, logits.argmax(-1))
    assert acts.shape == grads.shape == (3, 17, 32) and np.abs(grads[:, 1:]).max() > 0
    # Independent check through the parameters: LayerNorm_0's bias is added to every token
    # that block reads, so d logit / d bias = the token gradients summed over tokens.
    blk = f"encoderblock_{layer % 2}"

    def score(params):
        out = tiny.model.apply({"params": params}, x)
        return jnp.sum(jnp.take_along_axis(out, jnp.asarray(cls)[:, None], axis=-1))

    g = jax.jit(jax.grad(score))(tiny.params)["Transformer"][blk]["LayerNorm_0"]["bias"]
    n = tolerances.vit_grad_sums(tiny.model, SIZE, len(x))
    tolerances.assert_close(grads.sum((0, 1)), g, n)
    # and the cam is relu(sum_c mean_t(grad) A) over the patch tokens, as documented.
    w = grads[:, 1:].mean(1, keepdims=True)
    want = np.maximum((w * acts[:, 1:]).sum(-1), 0)
    tolerances.assert_close(cam.reshape(3, 16), want, n + 16 + tiny.model.hidden_size)


def test_grad_cam_follows_the_requested_class(tiny):
    x = _images(2, seed=3)
    by_index = attention.grad_cam(tiny, x, class_index=3)
    by_name = attention.grad_cam(tiny, x, class_index="happy")
    np.testing.assert_array_equal(by_index, by_name)
    other = attention.grad_cam(tiny, x, class_index=[0, 5])
    assert not np.allclose(by_index, other)
    _, _, cls = attention.token_gradients(tiny, x, class_index=[0, 5])
    np.testing.assert_array_equal(cls, [0, 5])
    with pytest.raises(ValueError, match="unknown class"):
        attention.grad_cam(tiny, x, class_index="contempt")
    with pytest.raises(ValueError, match="out of range"):
        attention.grad_cam(tiny, x, class_index=7)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        attention.grad_cam(tiny, x, layer=2)


def test_se_weights_and_their_mean_per_predicted_class(tiny):
    x = _images(6, seed=4)
    w = attention.se_weights(tiny, x)
    assert w.shape == (6, 32) and ((w > 0) & (w < 1)).all()
    by = attention.se_weights_by_class(tiny, x)
    pred = tiny.logits(x).argmax(-1)
    assert by.class_names == NAMES and by.counts.sum() == 6
    np.testing.assert_array_equal(by.counts, np.bincount(pred, minlength=7))
    for c in range(7):
        if by.counts[c]:
            # A mean of at most 6 excitations in (0, 1).
            tolerances.assert_close(by.means[c], w[pred == c].mean(0), n=6, scale=1.0)
        else:
            assert np.isnan(by.means[c]).all()


@pytest.mark.slow
def test_errors_name_the_problem():
    plain = _trained(use_se=False)
    with pytest.raises(ValueError, match="no SE block"):
        attention.se_weights(plain, _images(1))
    assert attention.grad_cam(plain, _images(1)).shape == (1, 4, 4)
    gap = _trained(classifier="gap")
    with pytest.raises(ValueError, match="no class token"):
        attention.attention_rollout(gap, _images(1))
    assert attention.grad_cam(gap, _images(1)).shape == (1, 4, 4)  # all tokens are patches
    with pytest.raises(ValueError, match=r"expected preprocessed images \[N, 16, 16, 3\]"):
        attention.attention_maps(plain, _images(1, size=24))


# ----------------------------------------------------------------------------------------------
# Figures and the command line.


def _face_folder(root, size=64, n=4):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "more"), exist_ok=True)
    for i in range(n - 1):
        save_image(draw_face(i, size, rng, rgb=True), os.path.join(root, f"face {i}.png"))
    save_image(draw_face(3, size, rng), os.path.join(root, "more", "gray.jpg"))
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("not an image")
    return root


def _check_png(path, min_side=None):
    assert os.path.isfile(path), path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        if min_side:
            assert min(img.size) >= min_side, (path, img.size)
        return img.size


def _check_outputs(out, summary, n):
    assert len(summary["images"]) == n
    for r in summary["images"]:
        assert set(r["figures"]) == {"attention", "rollout", "grad_cam", "summary"}
        for name in r["figures"].values():
            _check_png(os.path.join(out, name))
        assert _check_png(os.path.join(out, r["figures"]["rollout"])) == (224, 224)
        assert sum(r["probabilities"].values()) == tolerances.approx(1.0, n=7)
        assert r["prediction"] == max(r["probabilities"], key=r["probabilities"].get)
    with np.load(os.path.join(out, "maps.npz")) as z:
        assert z["rollout"].shape[0] == n and np.isfinite(z["grad_cam"]).all()


def test_overlay_upsamples_and_blends():
    image = np.zeros((16, 16, 3), np.float32)  # mid gray in [-1, 1]
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    out = figures.overlay(image, heat, alpha=0.5, cmap="inferno")
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out[:20, :20].mean() > out[-20:, -20:].mean()  # hot corner where the cell is
    up = figures.upsample(heat, 8)
    assert up.shape == (8, 8) and up[0, 0] == 1.0 and up[7, 7] == 0.0


def test_api_writes_figures_and_summary(tmp_path, tiny):
    folder = _face_folder(str(tmp_path / "faces"))
    out = str(tmp_path / "out")
    summary = analyze.analyze_files(tiny, [folder], out, class_name="happy", layer=0)
    _check_outputs(out, summary, 4)
    assert [os.path.basename(r["path"]) for r in summary["images"]] == [
        "face 0.png",
        "face 1.png",
        "face 2.png",
        "gray.jpg",
    ]
    assert {r["grad_cam_class"] for r in summary["images"]} == {"happy"}
    assert summary["grad_cam"]["layer"] == 0 and summary["grid"] == 4
    _check_png(os.path.join(out, summary["se"]["figure"]))
    assert sum(summary["se"]["counts"].values()) == 4
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == summary


def test_official_npz_with_labels(tmp_path):
    t = _trained(use_se=False)
    path = str(tmp_path / "vit.npz")
    checkpoint.save_npz(t.params, path)
    loaded = inference.load_official(path, "tiny/4", NAMES, image_size=SIZE, use_se=False)
    assert loaded.source == {"npz": path, "variant": "tiny/4"}
    folder = _face_folder(str(tmp_path / "faces"), n=2)
    out = str(tmp_path / "out")
    summary = analyze.analyze_files(loaded, [folder], out)
    _check_outputs(out, summary, 2)
    assert "se" not in summary and not os.path.exists(os.path.join(out, "se_weights_by_class.png"))


@pytest.fixture(scope="module")
def workdir(demo_run):
    """A finished tiny run of the real trainer (the session's demo run)."""
    return demo_run["workdir"]


@pytest.mark.slow
def test_command_line_on_a_trained_workdir(tmp_path, workdir):
    folder = _face_folder(str(tmp_path / "faces"))
    single = os.path.join(folder, "face 0.png")
    out = str(tmp_path / "analysis")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vit_se.analyze",
            f"--workdir={workdir}",
            f"--out={out}",
            "--cmap=inferno",
            folder,
            single,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    _check_outputs(out, summary, 5)
    # The default model is the val-selected one, as for every command.
    best_step = workdir_lib.read_export_info(workdir).best_step
    assert summary["source"] == {"workdir": workdir, "params": "best_params.npz", "step": best_step}
    assert summary["image_size"] == 48 and summary["grid"] == 6
    assert summary["num_layers"] == 2 and summary["num_heads"] == 2
    assert summary["grad_cam"]["class"] == "predicted" and summary["grad_cam"]["layer"] == 1
    for row in summary["images"]:
        assert row["grad_cam_class"] == row["prediction"]
        assert os.path.basename(row["path"]) in r.stdout
    _check_png(os.path.join(out, "se_weights_by_class.png"))
    assert "wrote 5 image analyses" in r.stdout

    missing = str(tmp_path / "nope")
    r = subprocess.run(
        [sys.executable, "-m", "vit_se.analyze", f"--workdir={workdir}", folder, missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"vit_se.analyze: no such file or folder: {missing}"
    )
