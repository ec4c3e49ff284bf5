"""A run that cannot start says why in one line and leaves its workdir as it found it.

Values, paths and the workdir's writability are checked before anything is written
(`config_checks.prepare`); what only the trainer can find out (a pretrained file of another model,
a dataset that does not build) fails before the first file of the run is written, and a workdir
the run created is removed again.
"""

import errno
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import ROOT, SHORT, demo_cmd, demo_env, run_module

from vit_se import config_checks, workdir
from vit_se.configs import demo


def _main(workdir_path, data_root, *overrides):
    cmd = demo_cmd(workdir_path, data_root, *overrides)
    return subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=900
    )


def _one_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def test_an_unknown_face_crop_is_one_line_and_writes_nothing(tmp_path):
    work = tmp_path / "run"
    r = run_module(
        "vit_se.main", "--config=configs/demo.py", f"--workdir={work}", "--config.face_crop=mtcnn"
    )
    line = _one_line(r)
    assert line.startswith("vit_se.main: config.face_crop must be one of 'none', 'haar', 'aligned'")
    assert "'mtcnn'" in line and not work.exists()


def test_an_empty_pretrained_file_is_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "ViT-B_16.npz"
    empty.write_bytes(b"")
    work = tmp_path / "run"
    r = run_module(
        "vit_se.main",
        "--config=configs/demo.py",
        f"--workdir={work}",
        f"--config.pretrained_path={empty}",
    )
    assert _one_line(r) == (
        f"vit_se.main: config.pretrained_path: {empty} is not an .npz file (empty or truncated?); "
        "expected an official vit_jax / big_vision checkpoint or a vit_se export"
    )
    assert not work.exists()


def test_a_workdir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    # Under a regular file: no permission bit or root's privileges make that a folder.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = run_module("vit_se.main", "--config=configs/demo.py", f"--workdir={blocker}/run")
    assert _one_line(r) == f"vit_se.main: {blocker}/run: {blocker} is a file, not a folder"

    # A read-only file system (EROFS), as the check sees it.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(workdir.tempfile, "TemporaryFile", read_only)
    with pytest.raises(workdir.WorkdirError) as e:
        config_checks.prepare(demo.get_config(), str(tmp_path / "run"), device_count=1)
    assert str(e.value) == f"{tmp_path}/run: cannot write in {tmp_path} (Read-only file system)"
    assert not (tmp_path / "run").exists()


def test_a_read_only_existing_workdir_is_refused_before_the_lock(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0555 folder; the EROFS case is checked above")
    work = tmp_path / "run"
    work.mkdir()
    work.chmod(0o555)
    try:
        r = run_module("vit_se.main", "--config=configs/demo.py", f"--workdir={work}")
        assert _one_line(r).startswith(f"vit_se.main: {work}: cannot write in {work}")
    finally:
        work.chmod(0o755)
    assert os.listdir(work) == []


@pytest.mark.slow
def test_a_pretrained_file_of_another_model_leaves_no_workdir(tmp_path, short_run):
    other = tmp_path / "other.npz"
    np.savez(other, **{"embedding/kernel": np.zeros((3, 3, 3, 7), np.float32)})
    work = tmp_path / "run"
    r = _main(work, short_run["data_root"], *SHORT, f"--config.pretrained_path={other}")
    assert r.returncode == 1, r.stderr[-3000:]
    assert "embedding/kernel" in r.stderr.strip().splitlines()[-1]
    assert not work.exists()


@pytest.mark.slow
def test_a_dataset_that_does_not_build_leaves_no_workdir(tmp_path):
    manual = tmp_path / "raf_db_download"
    manual.mkdir()  # exists, but holds none of RAF-DB's files
    work = tmp_path / "run"
    r = _main(
        work,
        str(tmp_path),
        *SHORT,
        f"--config.manual_dir={manual}",
        "--config.fake_data.enabled=False",
    )
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("vit_se.main: ") and str(manual) in last, r.stderr[-3000:]
    assert not work.exists()


@pytest.mark.slow
def test_rerunning_a_finished_run_says_it_trained_nothing(short_run, tmp_path):
    finished = str(tmp_path / "finished")
    shutil.copytree(short_run["workdir"], finished)
    r = subprocess.run(
        demo_cmd(finished, short_run["data_root"], *SHORT),
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(f"Already finished: raf_db/aligned in {finished} at step 120")
