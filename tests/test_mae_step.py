"""The MAE train and eval steps: MAE's optimiser, a loss that falls, exact held-out evaluation,
sharding as the classifier's, and an encoder export that a ViT-SE fine-tune loads."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
import tolerances

from vit_se import (
    checkpoint,
    input_pipeline,
    mae,
    mae_checkpoint,
    mae_step,
    model_configs,
    models,
    optim,
    sharding,
    train_setup,
    workdir,
)
from vit_se import train_step as train_lib
from vit_se.configs import common, mae_faces
from vit_se.datasets.synthetic_faces import draw_face

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = 32  # tiny/8: 16 patches, 4 visible


def _config(variant="tiny/8", **fields):
    config = common.get_config()
    config.model = model_configs.get_config(variant)
    config.image_size = IMAGE
    config.update(fields)
    return config


def _model(config):
    return mae.build_model(
        config.model, decoder_width=32, decoder_depth=1, decoder_heads=2, image_size=IMAGE
    )


def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    faces = np.stack([draw_face(i % 7, size=IMAGE, rng=rng, rgb=True) for i in range(n)])
    return (faces.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _mae_config(**mae_fields):
    config = mae_faces.get_config("variant=tiny/8")
    config.image_size = IMAGE
    config.mae.update(mae_fields)
    return config


def test_learning_rate_scales_with_batch_and_warms_up_then_decays():
    assert mae_step.scaled_learning_rate(1.5e-4, 512) == pytest.approx(3e-4, rel=1e-12)
    config = _mae_config(base_learning_rate=1e-3)
    config.batch_size, config.warmup_steps = 256, 10
    lr = train_setup.learning_rate(config, steps_per_epoch=1, total=110)
    values = np.array([float(lr(s)) for s in range(111)])
    assert values[0] == 0.0
    # optax's float32 schedule: a product or a cosine of order-1 values, a few roundings (n=4).
    tolerances.assert_close(values[5], 5e-4, n=4)
    tolerances.assert_close(values[10], 1e-3, n=4)
    tolerances.assert_close(values[60], 5e-4, n=4, scale=1e-3)  # half way down the cosine
    assert values[110] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) <= 0)
    config.batch_size = 512  # the paper's linear scaling rule
    peak = train_setup.learning_rate(config, steps_per_epoch=1, total=110)(10)
    tolerances.assert_close(float(peak), 2e-3, n=4)


def test_optimizer_is_adamw_with_beta2_095_and_decay_on_kernels_only():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    lr, wd = 0.1, 0.5
    config = _mae_config()
    config.weight_decay = wd
    tx = train_setup.optimizer(config, optax.constant_schedule(lr))
    state = tx.init(params)
    g1 = {"dense": {"kernel": jnp.full((2, 2), 0.3), "bias": jnp.full((2,), 0.3)}}
    g2 = {"dense": {"kernel": jnp.full((2, 2), -0.1), "bias": jnp.full((2,), -0.1)}}
    _, state = tx.update(g1, state, params)
    updates, _ = tx.update(g2, state, params)
    # Adam's second step by hand (float64), b1 0.9, b2 0.95, eps 1e-8.
    m = 0.9 * 0.1 * 0.3 + 0.1 * -0.1
    v = 0.95 * 0.05 * 0.3**2 + 0.05 * 0.1**2
    adam = (m / (1 - 0.9**2)) / (np.sqrt(v / (1 - 0.95**2)) + 1e-8)
    # Two moment updates, bias corrections, a square root and a division in float32 (n=8).
    tolerances.assert_close(updates["dense"]["bias"], -lr * adam, n=8)
    tolerances.assert_close(updates["dense"]["kernel"], -lr * (adam + wd * 1.0), n=8)


def test_the_trainer_builds_the_masked_autoencoder_for_task_mae():
    config = _mae_config(decoder_width=24, decoder_depth=1, decoder_heads=3)
    model = train_setup.create_model(config, "tpu")
    assert isinstance(model, mae.MaskedAutoencoder)
    assert (model.decoder_width, model.decoder_depth, model.decoder_heads) == (24, 1, 3)
    assert model.decoder_mlp_dim == 96 and model.mask_ratio == 0.75
    assert model.encoder["impl"] == "plain"  # resolved for the platform compiled for
    assert train_setup.create_model(config, "cpu").encoder["impl"] == "cpu_lean"
    config.mae.update(decoder_width=None, decoder_depth=None, decoder_heads=None)  # the row
    assert train_setup.mae_decoder(config) == (*model_configs.MAE_DECODERS["tiny/8"], 128)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MAE trained 40 steps on drawn faces on one device: losses, state, model."""
    config = _config()
    model = _model(config)
    mesh = sharding.make_mesh(jax.devices()[:1])
    lr = optim.schedule(2e-3, 40, "cosine", warmup_steps=5)
    tx = optim.optimizer(lr, "adamw", weight_decay=0.05, b2=0.95)
    _, state_sh = train_lib.abstract_state(model, tx, mesh, IMAGE)
    state = train_lib.init_state(model, tx, state_sh, IMAGE, seed=0)
    initial = jax.tree_util.tree_map(np.asarray, state.params)
    step = train_lib.jit_train_step(
        mae_step.make_train_step(model, tx, lr, norm_pix_loss=True, seed=0), state_sh, mesh
    )
    faces = _faces(64)
    batch_sh = sharding.batch_sharding(mesh)
    losses = []
    for s in range(40):
        batch = {"image": faces[(s % 4) * 16 : (s % 4 + 1) * 16]}
        state, out = step(state, input_pipeline.to_global(batch, batch_sh))
        losses.append(float(out["loss"]))
        assert bool(out["finite"]) and float(out["learning_rate"]) == pytest.approx(
            float(lr(s)), rel=1e-6
        )
    path = str(tmp_path_factory.mktemp("mae") / workdir.ENCODER)
    mae_checkpoint.export_encoder(state.params, path)
    return {
        "config": config,
        "model": model,
        "mesh": mesh,
        "tx": tx,
        "state_sh": state_sh,
        "state": state,
        "initial": initial,
        "losses": losses,
        "faces": faces,
        "encoder": path,
    }


@pytest.mark.slow
def test_the_loss_falls_on_fake_faces(trained):
    losses = trained["losses"]
    # Normalised targets have unit variance: a fresh decoder is at about 1 or above.
    assert np.mean(losses[:4]) > 0.9, losses
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses


@pytest.mark.slow
def test_exported_encoder_loads_into_vit_se_with_exactly_se_and_head_fresh(trained):
    config = model_configs.get_config("tiny/8", use_se=True)
    vit = models.build_model(config, 7)
    init = jax.tree_util.tree_map(
        np.asarray, vit.init(jax.random.PRNGKey(1), jnp.zeros((1, IMAGE, IMAGE, 3)))["params"]
    )
    loaded = checkpoint.flatten(checkpoint.load_pretrained(trained["encoder"], init))
    encoder = checkpoint.flatten(mae.encoder_params(trained["state"].params))
    fresh = {k for k in loaded if k not in encoder}
    assert {k.split("/")[0] for k in fresh} == {"se", "head"}
    flat_init = checkpoint.flatten(init)
    for key in fresh:
        np.testing.assert_array_equal(loaded[key], flat_init[key], err_msg=key)
    for key, value in encoder.items():
        np.testing.assert_array_equal(loaded[key], np.asarray(value), err_msg=key)
    with np.load(trained["encoder"]) as z:
        assert set(z.files) == set(encoder)  # nothing but the backbone, official names
    info = checkpoint.describe(checkpoint.load_npz(trained["encoder"]))
    assert (info["format"], info["variant"], info["head_classes"]) == ("vit_jax", "tiny/8", None)
    out = io.StringIO()
    with redirect_stdout(out):
        assert checkpoint.inspect_main([trained["encoder"]]) == 0
    assert "tiny/8" in out.getvalue()


@pytest.mark.slow
def test_an_encoder_of_another_width_is_the_one_line_mismatch_error(trained):
    vit = models.build_model(model_configs.get_config("tiny/4"), 7)
    init = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.zeros((1, IMAGE, IMAGE, 3)))
    message = (
        r"checkpoint is a ViT tiny/8 \(width 64, depth 2, patch 8\); the config expects width 32"
    )
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_pretrained(trained["encoder"], init["params"])


@pytest.mark.slow
def test_pretraining_continues_from_a_classifier_checkpoint(trained, tmp_path):
    # A ViT-SE export (head, SE) starts the encoder; the decoder stays as freshly drawn.
    config = model_configs.get_config("tiny/8", use_se=True)
    vit = models.build_model(config, 7)
    vit_params = vit.init(jax.random.PRNGKey(4), jnp.zeros((1, IMAGE, IMAGE, 3)))["params"]
    path = str(tmp_path / "vit_se.npz")
    checkpoint.save_npz(vit_params, path)
    state = train_lib.init_state(
        trained["model"],
        trained["tx"],
        trained["state_sh"],
        IMAGE,
        seed=0,
        source=path,
        loader=mae_step.load_encoder_into,
    )
    params = jax.tree_util.tree_map(np.asarray, state.params)
    backbone = {
        k: v
        for k, v in checkpoint.flatten(vit_params).items()
        if k.split("/")[0] not in ("se", "head")
    }
    assert checkpoint.flatten(params["encoder"]).keys() == backbone.keys()
    for key, value in checkpoint.flatten(params["encoder"]).items():
        np.testing.assert_array_equal(value, backbone[key], err_msg=key)
    fresh = checkpoint.flatten(trained["initial"]["decoder"])
    for key, value in checkpoint.flatten(params["decoder"]).items():
        np.testing.assert_array_equal(value, fresh[key], err_msg=key)


def _eval_data(images, batch, pad_value=0.0):
    n = len(images)
    num_batches = -(-n // batch)
    padded = np.full((num_batches * batch, *images.shape[1:]), pad_value, np.float32)
    padded[:n] = images
    mask = (np.arange(num_batches * batch) < n).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices({"image": padded, "mask": mask}).batch(batch)
    return input_pipeline.EvalData(ds, num_batches, n)


@pytest.mark.slow
def test_held_out_loss_is_exact_fixed_and_ignores_padding(trained):
    model, mesh, state = trained["model"], trained["mesh"], trained["state"]
    faces = trained["faces"][:20]  # 20 = 16 + 4: the last batch is padded with 12
    evaluate = mae_step.make_evaluator(
        model, _eval_data(faces, 16), trained["state_sh"].params, mesh, seed=0
    )
    first = evaluate(state.params)
    assert first["val"]["num_examples"] == 20
    assert evaluate(state.params) == first  # the same masks every evaluation
    other_padding = mae_step.make_evaluator(
        model, _eval_data(faces, 16, pad_value=0.7), trained["state_sh"].params, mesh, seed=0
    )
    # The padding is masked out; what it may change is the rounding of the batched forward pass
    # (encoder and decoder: about twice the encoder's sums) and of the mean over 20 examples.
    n = 2 * tolerances.vit_sums(trained["config"].model, IMAGE) + 20
    assert other_padding(state.params)["val"]["loss"] == tolerances.approx(
        first["val"]["loss"], n=n
    )
    # By hand: the mean of the examples' masked-patch losses under the fixed masks.
    per_example = []
    for i, start in enumerate((0, 16)):
        x = jnp.asarray(faces[start : start + 16])
        pred, mask = model.apply(
            {"params": state.params}, x, rngs={"mask": mae_step.eval_rng(0, i)}
        )
        per_example.extend(np.asarray(mae.per_example_loss(pred, mae.targets(x, 8), mask)))
    # The same forward passes, jitted apart from the evaluator's, summed in another order.
    tolerances.assert_close(first["val"]["loss"], np.mean(per_example), n=n)
    assert evaluate(trained["initial"])["val"]["loss"] > first["val"]["loss"]


@pytest.mark.slow
def test_reconstruct_gives_figure_inputs(trained):
    reconstruct = mae_step.jit_reconstruct(
        trained["model"], trained["state_sh"].params, trained["mesh"]
    )
    x = jnp.asarray(trained["faces"][:3])
    masked, recon = reconstruct(trained["state"].params, x, mae_step.eval_rng(0, 0))
    assert masked.shape == recon.shape == x.shape
    assert float(jnp.max(jnp.abs(recon))) <= 1.0


_SHARDED_WORKER = r"""
import json, sys
import jax, numpy as np, optax
from vit_se import checkpoint, mae, mae_checkpoint, mae_step, model_configs, sharding
from vit_se import train_step as train_lib
from vit_se.configs import common

def config(scan, fsdp):
    c = common.get_config()
    c.model = model_configs.get_config("tiny/4")
    c.model.scan = scan
    c.image_size = 16
    c.param_sharding = "fsdp" if fsdp else "replicate"
    c.fsdp_min_size = 256
    return c

def build(c):
    return mae.build_model(c.model, decoder_width=16, decoder_depth=1, decoder_heads=2,
                           image_size=16)

# SGD: reduction-order noise stays its own size (Adam's normalisation would magnify it).
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
lr = optax.constant_schedule(0.1)
start = sys.argv[1]
unrolled = build(config(False, False))
one = sharding.make_mesh(jax.devices()[:1])
_, sh = train_lib.abstract_state(unrolled, tx, one, 16)
mae_checkpoint.export_encoder(train_lib.init_state(unrolled, tx, sh, 16, seed=3).params, start)
rng = np.random.default_rng(0)
batches = [rng.normal(0, 0.5, (16, 16, 16, 3)).astype(np.float32) for _ in range(3)]
out = {"devices": jax.device_count()}
for name, scan, fsdp, devices in (("one", False, False, jax.devices()[:1]),
                                  ("fsdp_scan", True, True, jax.devices())):
    c = config(scan, fsdp)
    model = build(c)
    mesh = sharding.make_mesh(devices)
    _, state_sh = train_lib.abstract_state(
        model, tx, mesh, 16, c.param_sharding, min_size=c.fsdp_min_size
    )
    state = train_lib.init_state(
        model, tx, state_sh, 16, seed=3, source=start, loader=mae_step.load_encoder_into
    )
    step = train_lib.jit_train_step(mae_step.make_train_step(model, tx, lr, seed=0), state_sh, mesh)
    losses = []
    for b in batches:
        batch = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), b)
        state, m = step(state, {"image": batch})
        losses.append(float(m["loss"]))
    params = dict(state.params)
    params["encoder"] = checkpoint.unstack_blocks(params["encoder"])
    flat = checkpoint.flatten(state.params)
    out[name] = {
        "losses": losses,
        "params": {k: np.asarray(v).tolist() for k, v in checkpoint.flatten(params).items()},
        "sharded": sorted(k for k, v in flat.items() if "data" in tuple(v.sharding.spec)),
    }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_fsdp_scanned_pretraining_on_eight_devices_matches_one_device(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_WORKER, str(tmp_path / "start.npz")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    one, fsdp = out["one"], out["fsdp_scan"]
    assert not one["sharded"]
    assert any(k.startswith("encoder/" + checkpoint.SCANNED) for k in fsdp["sharded"])
    assert any(k.startswith("decoder/") for k in fsdp["sharded"])
    # Same maths and masks, other reduction orders: float32 rounding only, by tests/tolerances.py's
    # rule with n the encoder's sums (tolerances.vit_*), the decoder's and the loss's mean.
    loss_atol, param_atol = _sharded_tolerances(steps=len(one["losses"]))
    tolerances.assert_close(fsdp["losses"], one["losses"], tol=loss_atol)
    assert fsdp["params"].keys() == one["params"].keys()
    for key, value in one["params"].items():
        tolerances.assert_close(fsdp["params"][key], value, tol=param_atol, err_msg=key)


def _sharded_tolerances(steps, batch=16, size=16, width=16, depth=1, lr=0.1, momentum=0.9):
    """(loss, parameter) tolerances of _SHARDED_WORKER's runs (tiny/4 encoder at 16 px, a 16-wide
    one-block decoder, SGD momentum 0.9 at 0.1 with gradients clipped to norm 1)."""
    encoder = model_configs.get_config("tiny/4")
    patches, patch_dim = (size // 4) ** 2, 4 * 4 * 3
    masked = patches - mae.num_visible(patches, 0.75)
    # The decoder's longest chain: the embedding (encoder width), per block LayerNorm, q/k/v,
    # attention logits, softmax and weighted sum over the tokens, output, LayerNorm, MLP in and
    # out; the final LayerNorm and the pixel projection.
    tokens = patches + 1
    decoder = encoder.hidden_size + depth * (6 * width + 2 * tokens + 4 * width) + 2 * width
    forward = tolerances.vit_sums(encoder, size) + decoder + patch_dim
    loss = tolerances.atol(2.0, forward + batch * masked)  # normalised targets: MSE about 1-2
    grad = tolerances.atol(1.0, 2 * forward + batch * tokens)  # clipped to norm 1
    return loss, lr * tolerances.momentum_sgd_factor(steps, momentum) * grad
