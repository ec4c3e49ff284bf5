"""Runs that tell the truth: values checked before anything is written, a workdir resumed only by
its own run, a progress line a person reads, and an end-of-run summary that names the files."""

import json
import os
import re
import shutil
import subprocess

import pytest
import tolerances
from conftest import (
    HEAVY_MODULES,
    ROOT,
    SHORT,
    TIMEOUT,
    demo_cmd,
    demo_env,
    read_export,
    run_module_watched,
)
from PIL import Image

from vit_se import config_checks, workdir
from vit_se.configs import demo, raf_db, sfew


def _main(*args, report, timeout=TIMEOUT):
    """`python -m vit_se.main args`, and the packages it had imported when it exited."""
    return run_module_watched("vit_se.main", *args, report=report, timeout=timeout, env=demo_env())


def _assert_failed_before_the_heavy_imports(imported):
    # A mistake in a value costs the config check, not the import of JAX and TensorFlow (speed
    # itself lives in benchmarks/): neither was imported when the command gave up, though what
    # reads the flags and the config was.
    assert {"vit_se", "absl", "ml_collections"} <= imported, sorted(imported)
    assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "--config.augment.crop=fivecrop",
            "config.augment.crop: 'fivecrop'; expected one of random_resized, five_crop, none",
        ),
        (
            "--config.schedule=cosin",
            "config.schedule: 'cosin'; expected one of cosine, linear, step, constant",
        ),
        ("--config.optimizer=adam", "config.optimizer: 'adam'; expected one of adamw, sgd"),
        ("--config.learning_rate=-1", "config.learning_rate -1.0 must be positive"),
        ("--config.label_smoothing=1.5", "config.label_smoothing 1.5 must be in [0.0, 1.0)"),
        (
            "--config.augment.resize_to=37",
            "config.augment.resize_to 37 px is smaller than config.image_size 48: five-crop "
            "resizes to resize_to, then crops image_size",
        ),
        ("--config.model.impl=fast", "config.model.impl: 'fast'; expected one of auto, plain"),
        ("--config.selection_metric=loss", "config.selection_metric: 'loss'; expected one of"),
        ("--config.batch_size=30", "config.batch_size 30 is not divisible by config.accum_steps 4"),
    ],
)
def test_a_bad_value_fails_fast_in_one_line_before_anything_is_written(tmp_path, override, message):
    run_dir = tmp_path / "w"
    extra = ["--config.accum_steps=4"] if "batch_size" in override else []
    args = [
        "--config=configs/demo.py",
        f"--workdir={run_dir}",
        override,
        *extra,
        "--config.augment.crop=five_crop" if "resize_to" in override else "--config.seed=0",
    ]
    r, imported = _main(*args, report=tmp_path / "imported.json")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vit_se.main: {message}"), r.stderr[-2000:]
    assert not run_dir.exists()
    _assert_failed_before_the_heavy_imports(imported)


def test_a_misspelt_field_is_one_line_with_did_you_mean(tmp_path):
    r, imported = _main(
        "--config=configs/demo.py",
        f"--workdir={tmp_path}/w",
        "--config.num_train_step=10",
        report=tmp_path / "imported.json",
    )
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("vit_se.main: ") and "num_train_step" in line
    assert 'Did you mean "num_train_steps"' in line or "did you mean" in line.lower(), line
    assert not (tmp_path / "w").exists()
    _assert_failed_before_the_heavy_imports(imported)


def test_every_optional_field_can_be_set_from_the_command_line(tmp_path):
    config = raf_db.get_config()
    config.lock()
    config.model.representation_size = 768  # raw i21k checkpoints have pre_logits
    config.augment.resize_to = 256
    config.fold = None
    config.pretrained_path = "/x.npz"
    assert config.model.representation_size == 768


def test_resize_to_is_in_pixels_and_recorded(tmp_path):
    from vit_se import input_pipeline

    config = sfew.get_config()  # five-crop at 224

    def resize():
        return input_pipeline.eval_resize(config.augment, config.image_size)

    assert resize() == 256  # the authors' 256 at 224, unset
    config.image_size = 112
    assert resize() == 128  # the same ratio at another size
    config.augment.resize_to = 120
    assert resize() == 120  # set: pixels, as written
    config.augment.resize_to = 100
    with pytest.raises(config_checks.ConfigError, match=r"resize_to 100 px is smaller than"):
        config_checks.check_values(config)


def test_a_manual_dir_that_is_not_a_folder_is_one_line_naming_the_field(tmp_path):
    config = raf_db.get_config()
    config.manual_dir = str(tmp_path / "nowhere")
    assert not config.fake_data.enabled  # the demo writes its own manual_dir; a user's must exist
    with pytest.raises(config_checks.ConfigError) as e:
        config_checks.check_paths(config)
    (line,) = str(e.value).splitlines()
    assert line.startswith(f"config.manual_dir: {tmp_path / 'nowhere'} is not a folder"), line
    (tmp_path / "nowhere").write_text("a file, not the downloads")
    with pytest.raises(config_checks.ConfigError, match=r"^config\.manual_dir: .* is not a folder"):
        config_checks.check_paths(config)
    (tmp_path / "downloads").mkdir()
    config.manual_dir = str(tmp_path / "downloads")
    config_checks.check_paths(config)  # a folder passes


def test_warnings_for_random_init_a_profile_too_late_and_a_vanishing_rate():
    config = sfew.get_config()  # B/16, no checkpoint named
    config.profile_steps = 5
    config.num_train_steps = 12
    config.schedule = "step"
    config.step_decay_every_epochs = 1.0
    lines = config_checks.warnings(config, total_steps=3000, steps_per_epoch=100)
    assert any("ViT-B/16 (width 768) starts from random weights" in w for w in lines)
    assert not any("profile_steps" in w for w in lines)  # 3000 steps is enough
    decays = [w for w in lines if "divides the learning rate by 5 29 times" in w]
    assert decays and "5.4e-25 at the end" in decays[0], lines
    lines = config_checks.warnings(config, total_steps=12, steps_per_epoch=100)
    assert any("the trace starts after step 10 and this run has 12 steps" in w for w in lines)
    assert config_checks.warnings(demo.get_config(), 1500, 21) == []  # the demo: nothing to say


# ----------------------------------------------------------------------------------------------
# One workdir, one run.


@pytest.fixture
def finished(short_run, tmp_path):
    run_dir = str(tmp_path / "finished")
    shutil.copytree(short_run["workdir"], run_dir)
    return run_dir


@pytest.mark.slow
def test_resuming_with_another_config_is_refused_naming_each_field(short_run, finished):
    cmd = demo_cmd(finished, short_run["data_root"], *SHORT, "--config.model.use_se=False")
    r = subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == (
        f"vit_se.main: workdir {finished} holds a run with another config (model.use_se: True "
        "-> False); resume it with its own config, or use a new --workdir"
    )
    cmd = demo_cmd(finished, short_run["data_root"], *SHORT, "--config.dataset_config=original")
    r = subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert "dataset_config: 'aligned' -> 'original'" in r.stderr.strip().splitlines()[-1]
    with open(os.path.join(finished, "config.json")) as f:
        assert json.load(f)["config"]["model"]["use_se"] is True  # not rewritten


@pytest.mark.slow
def test_a_shorter_run_than_the_checkpoint_is_refused(short_run, finished):
    steps = [a for a in SHORT if "num_train_steps" not in a]
    cmd = demo_cmd(finished, short_run["data_root"], *steps, "--config.num_train_steps=100")
    r = subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"vit_se.main: config.num_train_steps: this config trains 100 steps, but {finished} "
        "holds a checkpoint of step 120; train at least that long, or use a new --workdir"
    )
    assert read_export(finished)[0]["step"] == 120


@pytest.mark.slow
def test_paths_logging_and_a_longer_run_resume(short_run, finished):
    steps = [a for a in SHORT if "num_train_steps" not in a and "log_every" not in a]
    cmd = demo_cmd(
        finished,
        short_run["data_root"],
        *steps,
        "--config.num_train_steps=140",
        "--config.log_every=10",
    )
    r = subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resumed from {finished} at step 120" in r.stderr
    info, _ = read_export(finished)
    assert info["step"] == 140 and info["best_step"] is not None
    with open(os.path.join(finished, "config.json")) as f:
        assert json.load(f)["config"]["num_train_steps"] == 140


def test_differences_ignore_exactly_the_resumable_fields():
    a = demo.get_config()
    b = demo.get_config()
    b.log_every, b.manual_dir, b.model.impl = 7, "/elsewhere", "plain"
    assert config_checks.differences(a.to_dict(), b) == []
    b.seed, b.augment.flip = 3, False
    assert config_checks.differences(a.to_dict(), b) == [
        "augment.flip: True -> False",
        "seed: 0 -> 3",
    ]


# ----------------------------------------------------------------------------------------------
# What a run says while and after it runs.


@pytest.mark.slow
def test_progress_lines_and_the_end_of_run_summary(short_run, tmp_path):
    run_dir = str(tmp_path / "told")
    cmd = demo_cmd(run_dir, short_run["data_root"], *SHORT)
    r = subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # Not a terminal: one plain line per log interval (log_every=20 over 120 steps), fields named.
    progress = re.findall(r"^step (\d+)/120, loss [0-9.]+, accuracy [0-9.]+(.*)$", r.stderr, re.M)
    assert [int(s) for s, _ in progress] == [20, 40, 60, 80, 100, 120]
    for _, rest in progress:
        assert re.fullmatch(r", [0-9.]+ images/s, ETA \d+(m\d\ds|s)", rest), rest
    # Third-party INFO lines are off by default (orbax saves, clu scalars, tfds).
    assert "checkpoint_manager.py" not in r.stderr and "logging_writer.py" not in r.stderr
    out = r.stdout
    info, _ = read_export(run_dir)
    assert f"Finished raf_db/aligned in {run_dir}: 120 steps" in out
    final = re.search(r"^  final +120 +([0-9.]+) +([0-9.]+) +([0-9.]+) +([0-9.]+)$", out, re.M)
    # Printed with 4 decimals: off by at most half of the last one.
    assert final and float(final.group(3)) == pytest.approx(
        info["metrics"]["test"]["accuracy"], rel=0, abs=0.5e-4 + tolerances.EPS64
    )
    selected = re.search(rf"^  selected +{info['best_step']} +([0-9.]+)", out, re.M)
    assert selected and "(best accuracy on train[90%:])" in out
    for name in ("params.npz", "best_params.npz", "curves.png"):
        assert os.path.join(run_dir, name) in out
    assert f"tensorboard --logdir {run_dir}" in out
    with Image.open(os.path.join(run_dir, workdir.CURVES)) as png:
        assert png.format == "PNG" and png.size[0] > 500
    assert info["best_metrics"]["test"]["num_examples"] == 42
