"""Runs that survive what happens to real runs, with real processes, signals and damaged files.

Pre-emption (SIGTERM finishes the step and checkpoints it; exit 75), repeated kills followed by
restarts, non-finite losses (stop or skip), a newest checkpoint with a truncated or deleted data
file, and two runs on one workdir. Every resumed run must end with the very parameters and
metrics of the uninterrupted SHORT run (tests/conftest.py), bit for bit: the input stream is a
function of (seed, step) and a checkpoint holds the whole train state.
"""

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import train_worker
from conftest import ROOT, SHORT, SIGNALLED, TIMEOUT, demo_cmd, demo_env, read_export

from vit_se import preemption, workdir

PREEMPTED = preemption.PREEMPTED_EXIT_CODE
DIVERGED = 3


def _run(cmd, timeout=TIMEOUT):
    return subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=timeout
    )


def _start(cmd):
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _assert_same_as(reference, run_dir):
    info_a, params_a = read_export(reference)
    info_b, params_b = read_export(run_dir)
    assert params_a.keys() == params_b.keys()
    for k in params_a:
        np.testing.assert_array_equal(params_b[k], params_a[k], err_msg=k)
    assert info_b["metrics"] == info_a["metrics"]
    assert (info_b["step"], info_b["best_step"]) == (info_a["step"], info_a["best_step"])


def _steps(run_dir):
    ckpts = os.path.join(run_dir, workdir.CHECKPOINTS)
    return sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())


def _wait_for_step(proc, step, timeout=TIMEOUT):
    """Reads the run's output until its progress line reaches `step` (log_every=1)."""
    deadline = time.time() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        m = re.match(r"step (\d+)/\d+, loss", line)
        if m and int(m.group(1)) >= step:
            return seen
        assert time.time() < deadline, "".join(seen[-20:])
    raise AssertionError(f"the run ended before step {step}:\n" + "".join(seen[-30:]))


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_the_rerun_matches(short_run, tmp_path):
    run_dir = str(tmp_path / "preempted")
    cmd = demo_cmd(run_dir, short_run["data_root"], *SHORT)
    at = random.Random(os.getpid()).randint(5, 100)
    proc = _start([*cmd, "--config.log_every=1"])
    _wait_for_step(proc, at)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=SIGNALLED) == PREEMPTED, rest[-3000:]
    last = rest.strip().splitlines()[-1]
    m = re.fullmatch(
        r"vit_se\.main: stopped by SIGTERM after step (\d+) of 120; its checkpoint is in "
        + re.escape(os.path.join(run_dir, "checkpoints"))
        + r": run the same command to resume",
        last,
    )
    assert m, last
    stopped = int(m.group(1))
    assert at <= stopped < 120 and _steps(run_dir)[-1] == stopped
    assert not glob.glob(os.path.join(run_dir, "checkpoints", "*tmp*"))
    assert not os.path.exists(os.path.join(run_dir, workdir.EXPORT_INFO))
    assert not os.path.exists(os.path.join(run_dir, workdir.LOCK))  # released on the way out
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resumed from {run_dir} at step {stopped}" in r.stderr
    _assert_same_as(short_run["workdir"], run_dir)


@pytest.mark.slow
def test_five_kills_and_restarts_end_where_an_uninterrupted_run_does(short_run, tmp_path):
    run_dir = str(tmp_path / "soak")
    cmd = [*demo_cmd(run_dir, short_run["data_root"], *SHORT), "--config.log_every=1"]
    rng = random.Random(1234)
    # Five moments in training, in order; each restart resumes from its last checkpoint (every
    # 20 steps), so some kills land before, some after the checkpoint they could use.
    moments = sorted(rng.sample(range(3, 115), 5))
    kills = []
    for i, step in enumerate(moments):
        proc = _start(cmd)
        _wait_for_step(proc, step)
        time.sleep(rng.uniform(0.0, 0.3))
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
        proc.send_signal(sig)
        out = proc.stdout.read()
        code = proc.wait(timeout=SIGNALLED)
        kills.append((step, sig.name, code, _steps(run_dir)))
        assert code in (-signal.SIGKILL, PREEMPTED, 0), out[-3000:]
    r = _run([*cmd])
    assert r.returncode == 0, (kills, r.stderr[-3000:])
    _assert_same_as(short_run["workdir"], run_dir)
    assert any(code == PREEMPTED for _, _, code, _ in kills), kills


@pytest.mark.slow
def test_nonfinite_loss_stops_at_once_and_saves_nothing_after_it(short_run, tmp_path):
    run_dir = str(tmp_path / "nan")
    cmd = demo_cmd(
        run_dir,
        short_run["data_root"],
        *SHORT,
        "--config.learning_rate=1e4",
        "--config.checkpoint_every=1",
        "--config.grad_clip_norm=0",
    )
    r = _run(cmd)
    assert r.returncode == DIVERGED, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    m = re.fullmatch(
        r"vit_se\.main: step (\d+): loss (\S+), gradient norm (\S+) \(on_nonfinite='stop'\); "
        r"the latest checkpoint is step (\d+), nothing exported: lower the learning rate, or set "
        r"--config\.on_nonfinite=skip_step",
        last,
    )
    assert m, last
    bad, latest = int(m.group(1)), int(m.group(4))
    assert not (np.isfinite(float(m.group(2))) and np.isfinite(float(m.group(3))))
    # Checkpointed every step until the bad one: the latest is the step before it.
    assert latest == bad - 1 and _steps(run_dir)[-1] == latest
    assert not os.path.exists(os.path.join(run_dir, workdir.PARAMS))
    assert not os.path.exists(os.path.join(run_dir, workdir.EXPORT_INFO))


@pytest.mark.slow
def test_skip_mode_stops_after_the_allowed_skips_in_a_row(short_run, tmp_path):
    run_dir = str(tmp_path / "skip")
    cmd = demo_cmd(
        run_dir,
        short_run["data_root"],
        *SHORT,
        "--config.learning_rate=1e4",
        "--config.grad_clip_norm=0",
        "--config.on_nonfinite=skip_step",
        "--config.max_consecutive_skips=3",
    )
    r = _run(cmd)
    assert r.returncode == DIVERGED, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"vit_se\.main: step \d+: loss \S+, gradient norm \S+; 3 steps in a row were skipped "
        r"\(max_consecutive_skips\); the latest checkpoint is step \S+, nothing exported",
        last,
    ), last


@pytest.mark.slow
def test_skipped_step_leaves_parameters_and_optimizer_state_unchanged():
    config = train_worker.tiny_config()
    config.on_nonfinite = "skip_step"
    config.optimizer = "adamw"
    state, step_fn, _ = train_worker.setup(config, 10, jax.devices()[:1])
    batches = train_worker.batches(config, 3)
    state, m = step_fn(state, next(batches))
    assert bool(m["finite"])
    # optax.apply_if_finite keeps the optimizer's own state (moments, counts) apart from its
    # count of non-finite updates.
    before = jax.tree_util.tree_map(np.array, (state.params, state.opt_state.inner_state))
    bad = next(batches)
    bad["image"][0, 0, 0, 0] = np.nan
    state, m = step_fn(state, bad)
    assert not bool(m["finite"]) and not np.isfinite(float(m["loss"]))
    after = jax.tree_util.tree_map(np.array, (state.params, state.opt_state.inner_state))
    jax.tree_util.tree_map(np.testing.assert_array_equal, after, before)
    assert int(state.opt_state.notfinite_count) == 1 == int(state.opt_state.total_notfinite)
    assert int(state.step) == 2
    state, m = step_fn(state, next(batches))  # a finite batch trains again
    assert bool(m["finite"]) and int(state.opt_state.notfinite_count) == 0
    assert not np.array_equal(
        np.asarray(state.params["head"]["kernel"]), before[0]["head"]["kernel"]
    )


def _damage_newest(run_dir, how):
    newest = _steps(run_dir)[-1]
    files = [
        f
        for f in glob.glob(
            os.path.join(run_dir, "checkpoints", str(newest), "**", "d", "*"), recursive=True
        )
        if os.path.isfile(f)
    ]
    assert files, os.listdir(os.path.join(run_dir, "checkpoints", str(newest)))
    target = max(files, key=os.path.getsize)
    if how == "truncate":
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
    else:
        os.remove(target)
    return newest


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_broken_newest_checkpoint_is_moved_aside_and_the_one_before_used(short_run, tmp_path, how):
    run_dir = str(tmp_path / how)
    shutil.copytree(short_run["workdir"], run_dir)
    for name in (workdir.EXPORT_INFO, workdir.PARAMS, workdir.BEST_PARAMS):
        os.remove(os.path.join(run_dir, name))  # as if it had been killed at the end
    newest = _damage_newest(run_dir, how)
    previous = _steps(run_dir)[-2]
    r = _run(demo_cmd(run_dir, short_run["data_root"], *SHORT))
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(
        rf"Checkpoint {newest} of {re.escape(run_dir)} does not restore \(.+\); moved it to "
        rf"{re.escape(os.path.join(run_dir, workdir.UNREADABLE_CHECKPOINTS))}/{newest}-",
        r.stderr,
    ), r.stderr[-3000:]
    assert f"Resumed from {run_dir} at step {previous}" in r.stderr
    (kept,) = os.listdir(os.path.join(run_dir, workdir.UNREADABLE_CHECKPOINTS))
    assert kept.startswith(f"{newest}-")
    _assert_same_as(short_run["workdir"], run_dir)


@pytest.mark.slow
def test_a_second_run_on_the_workdir_refuses_and_a_dead_ones_lock_is_taken_over(
    short_run, tmp_path
):
    run_dir = str(tmp_path / "locked")
    cmd = demo_cmd(run_dir, short_run["data_root"], *SHORT)
    first = _start([*cmd, "--config.log_every=1"])
    _wait_for_step(first, 1)
    first.send_signal(signal.SIGSTOP)  # alive but not finishing while the second one tries
    second = _run(cmd)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert re.fullmatch(
        rf"vit_se\.main: {re.escape(run_dir)} is in use by pid {first.pid} on \S+ since .+ "
        rf"\({re.escape(os.path.join(run_dir, workdir.LOCK))}\); wait for that run to end, or use "
        r"another --workdir",
        lines[-1],
    ), lines[-1]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=SIGNALLED)
    assert os.path.exists(os.path.join(run_dir, workdir.LOCK))  # a kill leaves it behind
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Taking over the lock of a run that is gone (pid {first.pid} " in r.stderr
    assert not os.path.exists(os.path.join(run_dir, workdir.LOCK))
    _assert_same_as(short_run["workdir"], run_dir)


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_one_is_preempted(short_run, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    run_dir = str(tmp_path / "two")
    procs = [
        _start(
            [
                *demo_cmd(run_dir, short_run["data_root"], *SHORT),
                "--config.log_every=1",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ]
        )
        for i in range(2)
    ]
    _wait_for_step(procs[0], 3)
    procs[1].send_signal(signal.SIGTERM)  # only one host gets the notice
    outs = [p.stdout.read() for p in procs]
    codes = [p.wait(timeout=SIGNALLED) for p in procs]
    assert codes == [PREEMPTED, PREEMPTED], [o[-2000:] for o in outs]
    stopped = [re.search(r"stopped by .+ after step (\d+) of 120", o).group(1) for o in outs]
    assert stopped[0] == stopped[1] and _steps(run_dir)[-1] == int(stopped[0])
