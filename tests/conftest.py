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
# The demo run shared by the evaluate, predict, export and analyze tests.
DEMO_NUM_TRAIN, DEMO_NUM_TEST = 140, 42  # val = train[90%:] = 14 examples
DEMO_STEPS = 30


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


def run_module(module, *args, timeout=600, env=None):
    """`python -m module args...` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A finished tiny run of the real trainer on the demo config: {'root', 'workdir'}.

    Read-only for tests: write outputs elsewhere (tmp_path).
    """
    return once(tmp_path_factory, "demo_run", _train_demo)
