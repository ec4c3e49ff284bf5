"""Masked-autoencoder pretraining through the trainer (`python -m vit_se.main`, task 'mae'):
mistakes refused in one line before anything is written, the run's outputs (encoder.npz,
pretraining.json, reconstruction figures, TensorBoard), a ViT-SE fine-tune from the encoder, and
resume after SIGKILL ending bit for bit where an uninterrupted run does."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    HEAVY_MODULES,
    ROOT,
    SIGNALLED,
    demo_env,
    once,
    run_module,
    run_module_watched,
)

from vit_se import checkpoint, config_checks, figures, mae_sources, workdir
from vit_se.configs import demo, mae_demo, mae_faces

# A short pretraining of the demo's synthetic faces: 140 training images, 7 of them held out.
SHORT = [
    "--config.fake_data.num_train=140",
    "--config.fake_data.num_test=14",
    "--config.num_train_steps=40",
    "--config.eval_every=20",
    "--config.checkpoint_every=10",
    "--config.log_every=10",
    "--config.batch_size=16",
    "--config.eval_batch_size=16",
    "--config.warmup_steps=5",
    "--config.mae.figure_faces=3",
]


def _pretrain_cmd(run_dir, data_root, *overrides):
    return [
        "--config=configs/mae_demo.py",
        f"--workdir={run_dir}",
        f"--config.manual_dir={data_root}/manual",
        f"--config.data_dir={data_root}/tfds",
        *SHORT,
        *overrides,
    ]


def _main(*args):
    return run_module("vit_se.main", *args, env={"XLA_FLAGS": demo_env()["XLA_FLAGS"]})


# ------------------------------------------------------------------------------ mistakes first


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.mae.mask_ratio=1.0", "config.mae.mask_ratio: 1.0 must lie strictly between 0"),
        (
            "--config.mae.mask_ratio=0.99",
            "config.mae.mask_ratio: 0.99 leaves no visible patch of 36; at most 0.9722",
        ),
        ("--config.mae.decoder_heads=3", "config.mae.decoder_heads 3 does not divide"),
        ("--config.mae.datasets=raf_db:test", "raf_db:test: split test is a test split"),
        ("--config.mae.datasets=celeba", "config.mae.datasets: unknown dataset 'celeba'"),
        ("--config.selection_metric=accuracy", "config.selection_metric: 'accuracy'; expected"),
    ],
)
def test_a_bad_pretraining_value_is_one_line_before_anything_is_written(
    tmp_path, override, message
):
    run_dir = tmp_path / "w"
    r, imported = run_module_watched(
        "vit_se.main",
        "--config=configs/mae_demo.py",
        f"--workdir={run_dir}",
        override,
        report=tmp_path / "imported.json",
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vit_se.main: {message}"), r.stderr[-2000:]
    assert not run_dir.exists()
    assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


def test_no_source_of_images_is_one_line():
    config = mae_faces.get_config("variant=tiny/8")
    config.mae.datasets = ""
    with pytest.raises(config_checks.ConfigError, match="config.mae.datasets and config.mae.fo"):
        config_checks.check_values(config)
    config.mae.folder = "/nowhere/faces"
    config.mae.folder_face_crop = "mtcnn"
    with pytest.raises(config_checks.ConfigError, match="folder_face_crop must be one of"):
        config_checks.check_values(config)
    config.mae.folder_face_crop = "aligned"
    sources = mae_sources.from_config(config.mae)
    assert [(s.folder, s.face_crop) for s in sources] == [("/nowhere/faces", "aligned")]
    with pytest.raises(config_checks.ConfigError, match="config.mae.folder: /nowhere/faces is not"):
        config_checks.check_paths(config)


@pytest.mark.slow
def test_a_folder_without_images_fails_in_one_line_and_leaves_no_workdir(tmp_path):
    empty = tmp_path / "faces"
    empty.mkdir()
    (empty / "notes.txt").write_text("no faces here")
    run_dir = tmp_path / "w"
    r = _main(
        "--config=configs/mae_faces.py:variant=tiny/8",
        f"--workdir={run_dir}",
        "--config.mae.datasets=",
        f"--config.mae.folder={empty}",
        "--config.image_size=32",
    )
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vit_se.main: {empty}: no images (files ending in .png"), last
    assert not run_dir.exists()


def test_the_pretraining_demo_reads_the_demos_faces():
    labelled, pretrain = demo.get_config(), mae_demo.get_config()
    for field in ("dataset", "dataset_config", "image_size"):
        assert pretrain[field] == labelled[field], field
    assert pretrain.fake_data.to_dict() == labelled.fake_data.to_dict()
    assert pretrain.model.name == labelled.model.name
    assert pretrain.mae.datasets == f"{labelled.dataset}/{labelled.dataset_config}:train"


def test_pretraining_configs_are_checked_and_say_their_command():
    for module in (mae_faces, mae_demo):
        assert module.__doc__.lstrip().startswith(
            "Masked-autoencoder" if module is mae_faces else "CPU demo"
        )
        assert "python -m vit_se.main --config=configs/" in module.__doc__
        config = module.get_config()
        config_checks.check_values(config)
        assert config.task == "mae" and config.selection_metric == "loss"
        assert not config.model.use_se  # the backbone alone: SE and head come with the fine-tune


# ------------------------------------------------------------------------------ end to end


def _pretrain(root):
    data_root, run_dir = os.path.join(root, "data"), os.path.join(root, "work")
    r = _main(*_pretrain_cmd(run_dir, data_root))
    assert r.returncode == 0, r.stderr[-3000:]
    return {"data_root": data_root, "workdir": run_dir, "stdout": r.stdout}


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """One SHORT pretraining run, shared by the slow tests (also across xdist workers)."""
    return once(tmp_path_factory, "mae_run", _pretrain)


@pytest.mark.slow
def test_a_pretraining_run_writes_its_encoder_figures_and_summary(pretrained):
    run_dir = pretrained["workdir"]
    with open(os.path.join(run_dir, workdir.PRETRAINING_INFO)) as f:
        info = json.load(f)
    assert (info["task"], info["step"], info["mask_ratio"]) == ("mae", 40, 0.75)
    assert info["sources"] == ["raf_db/aligned:train"]
    assert info["num_train_images"] == 133  # 140 less every 20th held out
    assert info["metrics"]["val"]["num_examples"] == 7
    assert info["best_step"] in (20, 40)
    # The encoder: the backbone in vit_jax's official layout, nothing else.
    flat = checkpoint.load_npz(os.path.join(run_dir, workdir.ENCODER))
    described = checkpoint.describe(flat)
    assert (described["format"], described["variant"], described["head_classes"]) == (
        "vit_jax",
        "tiny/8",
        None,
    )
    assert {k.split("/")[0] for k in flat} == {"cls", "embedding", "Transformer"}
    for step in (20, 40):
        png = os.path.join(run_dir, workdir.RECONSTRUCTIONS, f"step_{step}.png")
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    scalars = figures.read_scalars(run_dir)
    assert {"train/loss", "val/loss"} <= set(scalars)
    assert list(scalars["val/loss"][0]) == [20, 40]
    assert not os.path.exists(os.path.join(run_dir, workdir.EXPORT_INFO))  # not a classifier
    out = pretrained["stdout"]
    assert "Finished masked-autoencoder pretraining" in out
    assert f"--config.init_from={run_dir}" in out


@pytest.mark.slow
def test_a_fine_tune_starts_from_the_encoder_with_fresh_se_and_head(pretrained, tmp_path):
    run_dir = str(tmp_path / "fine_tune")
    # A frozen backbone keeps the encoder's weights exactly: the fine-tune started from them.
    r = _main(
        "--config=configs/demo.py",
        f"--workdir={run_dir}",
        f"--config.init_from={pretrained['workdir']}",
        f"--config.manual_dir={pretrained['data_root']}/manual",
        f"--config.data_dir={pretrained['data_root']}/tfds",
        "--config.fake_data.num_train=140",
        "--config.fake_data.num_test=14",
        "--config.num_train_steps=6",
        "--config.freeze_backbone_steps=100",
        "--config.eval_every=6",
        "--config.batch_size=16",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    encoder = checkpoint.load_npz(os.path.join(pretrained["workdir"], workdir.ENCODER))
    tuned = checkpoint.load_npz(os.path.join(run_dir, workdir.PARAMS))
    assert set(tuned) - set(encoder) == {
        "se/reduce/kernel",
        "se/reduce/bias",
        "se/expand/kernel",
        "se/expand/bias",
        "head/kernel",
        "head/bias",
    }
    for key, value in encoder.items():
        np.testing.assert_array_equal(tuned[key], value, err_msg=key)


@pytest.mark.slow
def test_fine_tuning_another_width_from_it_is_the_one_line_mismatch(pretrained, tmp_path):
    r = _main(
        "--config=configs/demo.py:variant=tiny/4",
        f"--workdir={tmp_path / 'w'}",
        f"--config.init_from={pretrained['workdir']}",
        f"--config.manual_dir={pretrained['data_root']}/manual",
        f"--config.data_dir={pretrained['data_root']}/tfds",
        "--config.fake_data.num_train=140",
        "--config.fake_data.num_test=14",
    )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "checkpoint is a ViT tiny/8 (width 64, depth 2, patch 8); the config expects" in last
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_sigkill_and_resume_end_bit_for_bit_where_an_uninterrupted_run_does(pretrained, tmp_path):
    run_dir = str(tmp_path / "killed")
    cmd = _pretrain_cmd(run_dir, pretrained["data_root"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "vit_se.main", *cmd, "--config.log_every=1"],
        cwd=ROOT,
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:  # past the checkpoint of step 20 and the evaluation with it
        if line.startswith("step 25/"):
            break
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=SIGNALLED) == -signal.SIGKILL
    assert not os.path.exists(os.path.join(run_dir, workdir.ENCODER))
    r = _main(*cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resumed from" in r.stderr
    a = checkpoint.load_npz(os.path.join(pretrained["workdir"], workdir.ENCODER))
    b = checkpoint.load_npz(os.path.join(run_dir, workdir.ENCODER))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    infos = []
    for d in (pretrained["workdir"], run_dir):
        with open(os.path.join(d, workdir.PRETRAINING_INFO)) as f:
            infos.append(json.load(f))
    assert infos[1]["metrics"] == infos[0]["metrics"]
    assert infos[1]["best_step"] == infos[0]["best_step"]


@pytest.mark.parametrize(
    "module,args,message",
    [
        ("vit_se.kfold", [], "--config is a pretraining config (task 'mae')"),
        ("vit_se.experiments", ["ablation"], "ablation compares classifiers"),
    ],
)
@pytest.mark.slow
def test_classifier_commands_refuse_a_pretraining_config(tmp_path, module, args, message):
    r = run_module(module, *args, "--config=configs/mae_demo.py", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 1, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "w").exists()
