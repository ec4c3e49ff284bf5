"""big_vision's speed options: blocks under `nn.scan` and rematerialisation policies.

Neither may change a value: a scanned model computes what the unrolled one computes from the same
(stacked) parameters, and every remat policy gives the gradients of none. Scanned parameters load
from and export to the official unrolled layout (tests/test_checkpoint.py), shard like unrolled
ones, and the attention analysis reads them. Tests run on CPU (tests/conftest.py).
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
import train_worker
from conftest import TIMEOUT
from jax.sharding import PartitionSpec as P
from parity import assert_same_grads, assert_same_logits, perturbed

from vit_se import attention, checkpoint, model_configs, models, optim, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(layers=2, **fields):
    cfg = model_configs.get_config("tiny/4")
    cfg.transformer.num_layers = layers
    for k, v in fields.items():
        if k in cfg.transformer:
            cfg.transformer[k] = v
        else:
            cfg[k] = v
    return cfg


def _model(**fields):
    return models.build_model(_config(**fields), 7)


def _loss_and_grads(model, params, x, train=True):
    def loss(p):
        logits = model.apply({"params": p}, x, train=train, rngs={"dropout": jax.random.key(4)})
        return jnp.sum(jnp.sin(logits)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


def _cases(names, cases, fast):
    """Every case for the full suite; the ones in `fast` also in the fast tier."""
    return pytest.mark.parametrize(
        names, [pytest.param(*c, marks=() if c in fast else pytest.mark.slow) for c in cases]
    )


def _unrolled_params(model, x):
    return perturbed(model.init(jax.random.PRNGKey(0), x)["params"])


# The fast tier: the CPU path with both classifiers (the plain path is there through remat).
@_cases(
    "classifier,impl",
    [(c, i) for c in ("token", "gap") for i in ("plain", "cpu_lean")],
    fast={("token", "cpu_lean"), ("gap", "cpu_lean")},
)
@pytest.mark.grid
def test_scanned_and_unrolled_models_agree(impl, classifier):
    unrolled = _model(impl=impl, classifier=classifier)
    scanned = unrolled.clone(scan=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
    params = _unrolled_params(unrolled, x)
    stacked = checkpoint.stack_blocks(params)
    # The scanned model's own initialiser makes exactly this tree.
    init = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), x)["params"]
    shapes = jax.tree_util.tree_map(jnp.shape, init)
    assert shapes == jax.tree_util.tree_map(jnp.shape, stacked)
    ref_logits, ref_grads = _loss_and_grads(unrolled, params, x)
    logits, grads = _loss_and_grads(scanned, stacked, x)
    assert float(np.max(np.abs(ref_logits))) > 0.1
    assert_same_logits(logits, ref_logits, unrolled, x)
    assert_same_grads(checkpoint.unstack_blocks(grads), ref_grads, unrolled, x)


def test_scanned_b16_has_the_published_parameter_count_in_big_visions_layout():
    cfg = model_configs.get_config("B/16", use_se=False)
    cfg.scan = True
    model = models.build_model(cfg, 1000)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    params = shapes["params"]
    assert set(params["Transformer"]) == {"encoderblock", "encoder_norm", "posembed_input"}
    block = params["Transformer"]["encoderblock"]
    assert block["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (12, 768, 12, 64)
    assert block["LayerNorm_1"]["scale"].shape == (12, 768)
    count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    assert count == 86_567_656


def test_weight_decay_treats_a_stacked_layer_as_its_unrolled_layer():
    unrolled = _model()
    x = jnp.zeros((1, 16, 16, 3))
    params = jax.eval_shape(unrolled.init, jax.random.PRNGKey(0), x)["params"]
    stacked = jax.eval_shape(unrolled.clone(scan=True).init, jax.random.PRNGKey(0), x)["params"]
    mask = checkpoint.flatten(optim._decay_mask(params))
    stacked_mask = checkpoint.flatten(optim._decay_mask(stacked))
    assert stacked_mask["Transformer/encoderblock/LayerNorm_0/scale"] is False
    assert stacked_mask["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"] is True
    for key, decayed in stacked_mask.items():
        key = key.replace("encoderblock/", "encoderblock_0/")
        assert mask[key] == decayed, key


@pytest.mark.slow
def test_scanned_stochastic_depth_is_random_in_training_only():
    model = _model(scan=True, stochastic_depth=0.5, dropout_rate=0.1)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))
    stacked = checkpoint.stack_blocks(_unrolled_params(model.clone(scan=False), x))
    unrolled = model.clone(scan=False)
    plain_eval = unrolled.apply({"params": checkpoint.unstack_blocks(stacked)}, x)
    assert_same_logits(model.apply({"params": stacked}, x), plain_eval, model, x)

    def train(seed):
        rngs = {"dropout": jax.random.PRNGKey(seed)}
        return model.apply({"params": stacked}, x, train=True, rngs=rngs)

    a, b = train(2), train(3)
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)


@_cases(
    "impl,scan", [("plain", False), ("plain", True), ("cpu_lean", True)], fast={("plain", True)}
)
@pytest.mark.grid
def test_every_remat_policy_gives_the_gradients_of_none(impl, scan):
    none = _model(impl=impl, scan=scan)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
    params = _unrolled_params(none.clone(scan=False), x)
    if scan:
        params = checkpoint.stack_blocks(params)
    ref_logits, ref_grads = _loss_and_grads(none, params, x)
    for policy in ("full", "save_dots"):
        logits, grads = _loss_and_grads(none.clone(remat_policy=policy), params, x)
        assert_same_logits(logits, ref_logits, none, x, err_msg=policy)
        assert_same_grads(grads, ref_grads, none, x)


@pytest.mark.slow
def test_cpu_lean_unrolled_with_remat_gives_the_gradients_of_none():
    # The in-order backward wraps a rematerialised block here.
    none = _model(impl="cpu_lean", remat_policy="none")
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
    params = _unrolled_params(none, x)
    ref_logits, ref_grads = _loss_and_grads(none, params, x)
    logits, grads = _loss_and_grads(none.clone(remat_policy="full"), params, x)
    assert_same_logits(logits, ref_logits, none, x)
    assert_same_grads(grads, ref_grads, none, x)


def _saved_bytes(model, params, x):
    """Bytes of what JAX keeps from the forward pass for the backward pass: the residuals a
    `jax.vjp` closes over (the parameters and block inputs among them)."""

    def loss(p):
        return jnp.sum(model.apply({"params": p}, x, train=True))

    _, backward = jax.vjp(loss, params)
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(backward))


@_cases(
    "scan,impl",
    [(s, i) for s in (True, False) for i in ("plain", "cpu_lean")],
    fast={(True, "plain"), (False, "cpu_lean")},
)
@pytest.mark.slow
def test_each_remat_policy_keeps_less_for_the_backward_pass(impl, scan):
    # 'full' keeps a block's input only, 'save_dots' the dense projections' outputs as well,
    # 'none' every activation. This is JAX's decision and holds on every backend; how much
    # scratch memory a compiler then plans (XLA:CPU schedules unrolled recomputation back into the
    # forward pass) is benchmarks/xla_cpu_memory.py's figure.
    model = _model(layers=4, impl=impl, scan=scan)
    x = jnp.full((8, 32, 32, 3), 0.1)
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    none, full, dots = (
        _saved_bytes(model.clone(remat_policy=p), params, x) for p in ("none", "full", "save_dots")
    )
    assert full < dots < none, (none, full, dots)


def test_fsdp_splits_a_stacked_array_as_one_of_its_layers():
    # One CPU device: every dimension is divisible by the one shard, so the largest one is picked,
    # and a stacked array's largest is its depth axis here (40 blocks of width 32).
    mesh = sharding.make_mesh(jax.devices()[:1])
    state = {
        "Transformer": {
            "encoderblock": {"LayerNorm_0": {"scale": jax.ShapeDtypeStruct((40, 32), jnp.float32)}},
            "encoderblock_0": {
                "LayerNorm_0": {"scale": jax.ShapeDtypeStruct((40, 32), jnp.float32)}
            },
        }
    }
    specs = sharding.state_shardings(mesh, state, "fsdp", min_size=1)
    assert specs["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].spec == P(None, "data")
    assert specs["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"].spec == P("data", None)
    # Small per-layer arrays stay replicated, as their unrolled layers would.
    specs = sharding.state_shardings(mesh, state, "fsdp", min_size=64)
    assert specs["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].spec == P(None)


_FSDP_WORKER = """
import json, sys
import jax
import numpy as np
sys.path.insert(0, "tests")
import train_worker
from vit_se import checkpoint
out = {"devices": jax.device_count()}
# Both runs start from the same weights (the two layouts draw different random initial values):
# an unrolled model's initial parameters, written in the official layout.
state, _, _ = train_worker.setup(train_worker.tiny_config(fsdp=True), 3)
start = sys.argv[1]
checkpoint.save_npz(jax.tree_util.tree_map(lambda p: np.asarray(p) + 0.01, state.params), start)
for scan in (False, True):
    config = train_worker.tiny_config(fsdp=True)
    config.model.scan = scan
    config.pretrained_path = start
    state, step_fn, mesh = train_worker.setup(config, 3)
    losses = []
    for batch in train_worker.batches(config, 3):
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"]))
    flat = checkpoint.flatten(state.params)
    out[str(scan)] = {
        "losses": losses,
        "params": {
            k: np.asarray(v).tolist()
            for k, v in checkpoint.flatten(checkpoint.unstack_blocks(state.params)).items()
        },
        "specs": {k: [d for d in v.sharding.spec] for k, v in flat.items()},
    }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_fsdp_trains_a_scanned_model_on_eight_devices_as_an_unrolled_one(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, "-c", _FSDP_WORKER, str(tmp_path / "start.npz")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    unrolled, scanned = out["False"], out["True"]
    # Same maths, other reduction orders: float32 rounding only (as in tests/test_train.py).
    loss_atol, param_atol = train_worker.run_tolerances(train_worker.tiny_config(fsdp=True), 3)
    tolerances.assert_close(scanned["losses"], unrolled["losses"], tol=loss_atol)
    assert scanned["params"].keys() == unrolled["params"].keys()
    for key, value in unrolled["params"].items():
        tolerances.assert_close(scanned["params"][key], value, tol=param_atol, err_msg=key)
    stacked = {k: v for k, v in scanned["specs"].items() if k.startswith(checkpoint.SCANNED)}
    assert any("data" in spec for spec in stacked.values())
    for key, spec in stacked.items():
        layer = unrolled["specs"][key.replace("encoderblock/", "encoderblock_0/")]
        # Depth axis never split; the rest as the unrolled layer (trailing Nones are implicit).
        assert spec[0] is None, key
        pad = lambda s: s + [None] * (4 - len(s))  # noqa: E731
        assert pad(spec[1:]) == pad(layer), (key, spec, layer)


class _Trained:
    """What the analysis functions read of a `vit_se.inference.Trained`."""

    def __init__(self, model, params):
        self.model, self.params = model, params
        self.image_size, self.class_names = 16, [str(i) for i in range(7)]


@pytest.mark.slow
def test_attention_analysis_of_a_scanned_model_is_that_of_the_unrolled_one():
    unrolled = _model(impl="plain")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    params = _unrolled_params(unrolled, x)
    a = _Trained(unrolled, params)
    b = _Trained(unrolled.clone(scan=True, remat_policy="full"), checkpoint.stack_blocks(params))
    weights = attention.attention_weights(b, x)
    assert weights.shape == (2, 2, 2, 17, 17)  # N, layers, heads, T, T: every token, every block
    # Probabilities (scale 1) after the model's sums; Grad-CAM is gradients (forward, backward,
    # the batch's tokens) times tokens, summed over the width.
    n = tolerances.vit_sums(unrolled, 16)
    tolerances.assert_close(weights, attention.attention_weights(a, x), n, scale=1.0)
    cam_a, cam_b = attention.grad_cam(a, x, layer=1), attention.grad_cam(b, x, layer=1)
    assert np.max(cam_a) > 0
    n = tolerances.vit_grad_sums(unrolled, 16, len(x)) + unrolled.hidden_size
    tolerances.assert_close(cam_b, cam_a, n)
