"""The train step: learning, gradient accumulation, devices, processes, freezing, config checks."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances
import train_worker
from conftest import TIMEOUT

from vit_se import checkpoint, config_checks, sharding, train_setup, train_step, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")
# float32 sums in another order (per-device partial sums, micro-batches) differ by rounding only,
# within train_worker.run_tolerances for the worker's 5 steps. A wrong reduction (mean over one
# device's shard, a dropped micro-batch) moves parameters by 1e-3 or more.
LOSS_ATOL, PARAM_ATOL = train_worker.run_tolerances(train_worker.tiny_config(), steps=5)


def _params(npz):
    return {k: npz[k] for k in npz if k.startswith("params/")}


def _assert_same_run(a, b):
    tolerances.assert_close(a["losses"], b["losses"], tol=LOSS_ATOL)
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        tolerances.assert_close(pa[k], pb[k], tol=PARAM_ATOL, err_msg=k)


def _worker(tmp_path, name, *args, env=None, devices=1):
    out = tmp_path / f"{name}.npz"
    env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    subprocess.run(
        [sys.executable, WORKER, str(out), *args], check=True, env=env, cwd=ROOT, timeout=TIMEOUT
    )
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return _worker(tmp_path_factory.mktemp("one"), "one")


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch():
    config = train_worker.tiny_config()
    config.learning_rate = 0.05
    state, step_fn, _ = train_worker.setup(config, 30, jax.devices()[:1])
    batch = next(train_worker.batches(config, 1))
    losses = []
    for _ in range(30):
        state, m = step_fn(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_the_step_consumes_the_state_it_is_given():
    # The step donates its state: the arrays it was given are gone afterwards, so a caller cannot
    # keep a second copy alive by accident. Whether XLA then writes the new state into those very
    # buffers (it does for the trainer's fresh state, which train_step.xla_owned makes XLA-owned)
    # is buffer assignment's decision: benchmarks/xla_cpu_memory.py prints it.
    config = train_worker.tiny_config()
    state, step_fn, _ = train_worker.setup(config, 2, jax.devices()[:1])
    given = jax.tree_util.tree_leaves(state)
    state, _ = step_fn(state, next(train_worker.batches(config, 1)))
    assert all(x.is_deleted() for x in given)
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))


@pytest.mark.slow
def test_model_init_compiled_for_memory_draws_the_same_parameters():
    # jit_model_init compiles with the memory-optimised schedule (each parameter written as it is
    # drawn: B/16 plans 18 instead of 439 MiB of scratch, benchmarks/xla_cpu_memory.py); the
    # values must be model.init's.
    config = train_worker.tiny_config()
    model = train_setup.create_model(config)
    key = jax.random.PRNGKey(3)
    image = jnp.zeros((1, config.image_size, config.image_size, 3))
    a = train_step.jit_model_init(model, jax.default_backend())(key, image)["params"]
    b = jax.jit(model.init)(key, image)["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def _in_process(config, steps=5):
    losses, params, _ = train_worker.run(config, steps)
    return {"losses": losses, **{f"params/{k}": v for k, v in checkpoint.flatten(params).items()}}


@pytest.mark.slow
def test_accum_steps_equals_one_big_batch():
    # One device: both runs in this process (the worker's subprocess is for device counts).
    whole = _in_process(train_worker.tiny_config())
    _assert_same_run(whole, _in_process(train_worker.tiny_config(accum=4)))


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path, one_device):
    eight = _worker(tmp_path, "eight", devices=8)
    assert int(eight["devices"]) == 8
    _assert_same_run(one_device, eight)


@pytest.mark.slow
def test_fsdp_matches_and_really_shards(tmp_path, one_device):
    fsdp = _worker(tmp_path, "fsdp", "--fsdp", devices=8)
    assert len(fsdp["sharded"]) > 0
    _assert_same_run(one_device, fsdp)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, one_device):
    out = tmp_path / "two.npz"
    port = str(_free_port())
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                str(out),
                "--num_processes=2",
                f"--process_id={i}",
                "--port",
                port,
            ],
            env=env,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=TIMEOUT) for p in procs] == [0, 0]
    with np.load(out) as z:
        two = {k: z[k] for k in z.files}
    assert (int(two["devices"]), int(two["processes"])) == (2, 2)
    _assert_same_run(one_device, two)


def test_fsdp_spec_picks_largest_divisible_dim():
    from jax.sharding import PartitionSpec as P

    assert sharding.fsdp_spec((768, 3072), 8, 1) == P(None, "data")
    assert sharding.fsdp_spec((12, 64, 768), 8, 1) == P(None, None, "data")
    assert sharding.fsdp_spec((7,), 8, 1) == P()
    assert sharding.fsdp_spec((768,), 8, 10_000) == P()


@pytest.mark.slow
def test_freeze_backbone_trains_only_head_and_se():
    config = train_worker.tiny_config()
    config.freeze_backbone_steps = 3
    state, step_fn, _ = train_worker.setup(config, 10, jax.devices()[:1])
    before = jax.tree_util.tree_map(np.array, state.params)
    batches = train_worker.batches(config, 4)
    for _ in range(3):
        state, _ = step_fn(state, next(batches))
    frozen = jax.tree_util.tree_map(np.array, state.params)
    np.testing.assert_array_equal(frozen["embedding"]["kernel"], before["embedding"]["kernel"])
    assert not np.array_equal(frozen["head"]["kernel"], before["head"]["kernel"])
    assert not np.array_equal(frozen["se"]["reduce"]["kernel"], before["se"]["reduce"]["kernel"])
    state, _ = step_fn(state, next(batches))  # step 3: the backbone is released
    assert not np.array_equal(
        np.asarray(state.params["embedding"]["kernel"]), before["embedding"]["kernel"]
    )


@pytest.mark.parametrize(
    "name,lr0,lr_later",
    [("cosine", 0.0, None), ("linear", 0.0, None), ("step", 0.0, 0.2), ("constant", 0.0, 1.0)],
)
def test_schedules_warm_up_then_decay(name, lr0, lr_later):
    config = train_worker.tiny_config()
    config.learning_rate = 1.0
    config.schedule = name
    config.warmup_steps = 10
    config.step_decay_every_epochs = 1.0
    config.step_decay_factor = 0.2
    sched = train_setup.learning_rate(config, steps_per_epoch=20, total=110)
    assert float(sched(0)) == lr0
    # optax evaluates a schedule in float32: a few operations on values of scale 1.
    assert float(sched(10)) == tolerances.approx(1.0, n=4)
    if lr_later is not None:
        assert float(sched(35)) == tolerances.approx(lr_later, n=4)  # 25 steps after warmup
    if name in ("cosine", "linear"):
        assert float(sched(110)) == tolerances.approx(0.0, n=4, scale=1.0)


# ----- config errors: one line, before any compilation -----


def _config(**overrides):
    config = train_worker.tiny_config()
    for k, v in overrides.items():
        config[k] = v
    return config


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"dataset": "emotic"},
            r"config\.dataset: unknown dataset 'emotic'; expected one of",
        ),
        (
            {"batch_size": 10, "accum_steps": 4},
            r"config\.batch_size 10 is not divisible by config\.accum_steps 4",
        ),
        ({"image_size": 18}, r"image_size 18 is not a multiple of the patch size \(4, 4\)"),
        ({"pretrained_path": "/nonexistent/ViT-B_16.npz"}, r"/nonexistent/ViT-B_16\.npz does not"),
        ({"init_from": "/nonexistent/run"}, r"/nonexistent/run/params\.npz does not exist"),
    ],
)
def test_bad_config_is_one_line(tmp_path, overrides, message):
    with pytest.raises(config_checks.ConfigError, match=message) as e:
        config_checks.prepare(_config(**overrides), str(tmp_path))
    assert "\n" not in str(e.value)


def test_heads_must_divide_the_width(tmp_path):
    config = _config()
    config.model.transformer.num_heads = 3
    with pytest.raises(config_checks.ConfigError, match=r"num_heads 3 does not divide .* 32"):
        config_checks.prepare(config, str(tmp_path))


def test_any_width_is_a_custom_model_and_a_named_one_keeps_its_name(tmp_path):
    config = _config()
    config.model.hidden_size = 48
    resolved = config_checks.prepare(config, str(tmp_path))
    assert resolved.model.name == "custom"
    # Every field of tiny/4 again (under another name): it is tiny/4.
    config.model.hidden_size = 32
    config.model.name = "anything"
    assert config_checks.resolve(config).model.name == "tiny/4"


def test_workdir_with_another_models_checkpoint(tmp_path):
    config = _config()
    (tmp_path / "checkpoints" / "100").mkdir(parents=True)
    saved = config_checks.resolve(config).to_dict()
    saved["model"]["hidden_size"] = 768
    workdir.write_run_config(str(tmp_path), saved, config_checks.model_identity(config))
    with pytest.raises(
        config_checks.ConfigError,
        match=r"holds a run with another config \(model\.hidden_size: 768 -> 32\)",
    ):
        config_checks.prepare(config, str(tmp_path))
