"""Shared pytest set-up: quiet TensorFlow, no tfds network, and one tiny trained run per session."""

import fcntl
import json
import os
import subprocess
import sys

import pytest

# Pinned to CPU: figures and CPU-only assertions (the 'auto' implementation, XLA:CPU's scratch
# memory) hold for XLA:CPU, and a test run must not grab an accelerator another job is using.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocess limits, there only to end a hung test, never to check speed (that is benchmarks/').
# For a 2-core machine running the suite with -n 2 beside another CPU-heavy process: about ten
# times the longest one such command took in a parallel run of the suite on 2 idle cores (a short
# trainer run, 100 s). TIMEOUT for a Python command (a trainer run, a CLI, a builder), SIGNALLED for
# the exit of a run that was sent a signal (it may write a checkpoint first), SHELL for a bash
# script or tool that runs no Python.
TIMEOUT, SIGNALLED, SHELL = 1800, 600, 300
# The demo run shared by the evaluate, predict, export and analyze tests.
DEMO_NUM_TRAIN, DEMO_NUM_TEST = 140, 42  # val = train[90%:] = 14 examples
DEMO_STEPS = 30


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """`@pytest.mark.grid`: the first case of a parametrised test runs in the fast tier, the rest
    are `slow`.

    A grid checks one property over many configurations, and each configuration compiles its own
    program. While working, one case catches most breakage of the code the grid guards; the full
    suite (the README's and CI's command) still runs every case. tryfirst, so the marks are there
    before `-m "not slow"` deselects.
    """
    first = set()
    for item in items:
        if item.get_closest_marker("grid") is None:
            continue
        key = (item.path, item.originalname)
        if key in first:
            item.add_marker(pytest.mark.slow)
        first.add(key)


def once(tmp_path_factory, name, build):
    """build(dir) once per test session, also under pytest-xdist, whose workers share the dir.

    A session fixture alone would run once per worker: twice under `pytest -n 2`. build returns a
    JSON-able value, which every caller gets.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's dir, above each worker's own
    root = base / name
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / ".done.json"
        if not done.exists():
            done.write_text(json.dumps(build(str(root))))
        return json.loads(done.read_text())


def run_module(module, *args, timeout=TIMEOUT, env=None):
    """`python -m module args...` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# The libraries whose import a mistake in a value must not wait for.
HEAVY_MODULES = ("jax", "jaxlib", "tensorflow")

_WATCHED = """
import atexit, json, runpy, sys
report, module = sys.argv.pop(1), sys.argv.pop(1)

def _report():
    with open(report, "w") as f:
        json.dump(sorted({m.split(".")[0] for m in sys.modules}), f)

atexit.register(_report)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_module_watched(module, *args, report, timeout=TIMEOUT, env=None):
    """run_module, also returning the top-level packages the process had imported when it exited
    (a wrapper writes sys.modules to `report` at exit): what a command needed before it failed."""
    r = subprocess.run(
        [sys.executable, "-c", _WATCHED, str(report), module, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    with open(report) as f:  # missing: the process did not reach its exit handlers
        return r, set(json.load(f))


def _train_demo(root):
    workdir = os.path.join(root, "work")
    r = run_module(
        "vit_se.main",
        "--config=configs/demo.py",
        f"--workdir={workdir}",
        f"--config.manual_dir={root}/raf_manual",
        f"--config.data_dir={root}/tfds",
        f"--config.fake_data.num_train={DEMO_NUM_TRAIN}",
        f"--config.fake_data.num_test={DEMO_NUM_TEST}",
        f"--config.num_train_steps={DEMO_STEPS}",
        "--config.eval_every=15",
        "--config.checkpoint_every=15",
        "--config.log_every=15",
        "--config.batch_size=16",
        "--config.eval_batch_size=16",  # 42 = 2 x 16 + 10: the last batch is padded
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return {"root": root, "workdir": workdir}


# A short demo run: enough steps for checkpoints, evaluations and a resume to mean something.
SHORT = [
    "--config.fake_data.num_train=210",
    "--config.fake_data.num_test=42",
    "--config.num_train_steps=120",
    "--config.checkpoint_every=20",
    "--config.eval_every=60",
    "--config.log_every=20",
    "--config.batch_size=16",
]


def demo_cmd(workdir, data_root, *overrides):
    """`python -m vit_se.main` on the demo config, its data built once under data_root."""
    return [
        sys.executable,
        "-m",
        "vit_se.main",
        "--config=configs/demo.py",
        f"--workdir={workdir}",
        f"--config.manual_dir={data_root}/manual",
        f"--config.data_dir={data_root}/tfds",
        *overrides,
    ]


def demo_env(devices=1):
    return dict(
        os.environ,
        PYTHONPATH=ROOT,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )


def read_export(workdir):
    """(export.json as a dict, params.npz as {key: array})."""
    import numpy as np

    with open(os.path.join(workdir, "export.json")) as f:
        info = json.load(f)
    with np.load(os.path.join(workdir, "params.npz")) as z:
        return info, {k: z[k] for k in z.files}


def _short_run(root):
    data_root = os.path.join(root, "data")
    workdir = os.path.join(root, "work")
    r = subprocess.run(
        demo_cmd(workdir, data_root, *SHORT),
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return {"data_root": data_root, "workdir": workdir}


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """An uninterrupted SHORT demo run {'data_root', 'workdir'}: the reference for resumed runs.

    Read-only for tests; runs that share its data_root reuse the built dataset.
    """
    return once(tmp_path_factory, "short_run", _short_run)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A finished tiny run of the real trainer on the demo config: {'root', 'workdir'}.

    Read-only for tests: write outputs elsewhere (tmp_path).
    """
    return once(tmp_path_factory, "demo_run", _train_demo)
