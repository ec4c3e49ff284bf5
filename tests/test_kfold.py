"""vit_se.kfold on a fake CK+ layout: folds run one per invocation, then aggregated.

As on a cluster: `--folds=0` and `--folds=1` are separate processes writing W/fold0 and W/fold1,
and `--aggregate_only` combines them. The subject check is verified independently of kfold.py by
reading every fold split of the built dataset.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tolerances
from conftest import TIMEOUT, once

from vit_se import folds, kfold
from vit_se import workdir as workdir_lib
from vit_se.configs import raf_db
from vit_se.datasets import registry
from vit_se.datasets.ck_plus.fake_data import fold_file_subjects, write_fake_ck_plus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(path) as f:
        return f.read()


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _kfold(workdir, data_root, *args):
    cmd = [sys.executable, "-m", "vit_se.kfold", f"--workdir={workdir}"]
    if "--aggregate_only" not in args:
        cmd += [
            "--config=configs/ck_plus.py:tiny/8",
            f"--config.manual_dir={data_root}/manual",
            f"--config.data_dir={data_root}/tfds",
            "--config.image_size=32",
            "--config.num_train_steps=6",
            "--config.batch_size=8",
            "--config.eval_batch_size=4",
            "--config.log_every=3",
            "--config.augment.cutout=8",
        ]
    cmd += args  # after --config: its overrides need it first
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def _cross_validate(root):
    """Fake CK+, folds 0 and 1 in two invocations, then --aggregate_only."""
    data_root = os.path.join(root, "data")
    write_fake_ck_plus(os.path.join(data_root, "manual"))  # 10 subjects, one per fold
    workdir = os.path.join(root, "ck_plus")
    for fold in ("0", "1"):
        r = _kfold(workdir, data_root, f"--folds={fold}")
        assert r.returncode == 0, r.stderr[-3000:]
    r = _kfold(workdir, data_root, "--aggregate_only")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"data_root": data_root, "workdir": workdir, "stdout": r.stdout}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return once(tmp_path_factory, "kfold_cv", _cross_validate)


@pytest.fixture(scope="module")
def data_root(shared):
    return shared["data_root"]


@pytest.fixture(scope="module")
def cv(shared):
    return shared["workdir"], shared["stdout"]


def _builder(data_root):
    return registry.load_builder("ck_plus", data_dir=f"{data_root}/tfds", config="7class")


@pytest.mark.slow
def test_aggregate_table_of_the_finished_folds(cv, data_root):
    workdir, stdout = cv
    with open(os.path.join(workdir, "kfold.json")) as f:
        result = json.load(f)
    assert result["folds_done"] == [0, 1] and result["folds_missing"] == list(range(2, 10))
    assert result["selection_rule"] == folds.SELECTION_RULE
    builder = _builder(data_root)
    rows = result["folds"]
    for row in rows:
        # Every example of the held-out fold, counted once, by the final step (6).
        assert row["num_examples"] == builder.info.splits[f"fold{row['fold']}"].num_examples
        assert row["step"] == 6
        with open(os.path.join(workdir, f"fold{row['fold']}", "export.json")) as f:
            info = json.load(f)
        assert info["best_step"] is None  # nothing selected on the held-out fold
        assert info["metrics"]["test"]["accuracy"] == row["accuracy"]
    acc = [r["accuracy"] for r in rows]
    # float64 mean and sample std over the folds.
    n = 2 * len(acc)
    assert result["summary"]["accuracy"]["mean"] == tolerances.approx(
        np.mean(acc), n, scale=1.0, eps=tolerances.EPS64
    )
    assert result["summary"]["accuracy"]["std"] == tolerances.approx(
        np.std(acc, ddof=1), n, scale=1.0, eps=tolerances.EPS64
    )
    confusion = np.asarray(result["confusion"])
    assert (
        confusion.sum() == result["pooled"]["num_examples"] == sum(r["num_examples"] for r in rows)
    )
    pooled = np.trace(confusion) / confusion.sum()
    assert result["pooled"]["accuracy"] == tolerances.approx(pooled, 1, eps=tolerances.EPS64)

    md = _read(os.path.join(workdir, "kfold.md"))
    assert md == stdout[: len(md)]  # printed as written
    for text in ("Selection rule: each fold reports its final", "**mean ± std**", "| 0 | 1 |"):
        assert text in md
    assert "Partial: 2 of 10 folds" in md
    with open(os.path.join(workdir, "kfold.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["fold"] for r in table] == ["0", "1", "mean", "std"]
    assert float(table[2]["accuracy"]) == tolerances.approx(
        np.mean(acc), n, scale=1.0, eps=tolerances.EPS64
    )
    assert os.path.getsize(os.path.join(workdir, "kfold_confusion.png")) > 1000


@pytest.mark.slow
def test_no_subject_in_train_and_test(cv, data_root):
    workdir, _ = cv
    with open(os.path.join(workdir, "kfold.json")) as f:
        check = json.load(f)["subject_check"]
    assert check["no_subject_in_train_and_test"] and check["test_folds_disjoint"]
    assert check["subjects_tested"] == 2 and check["subjects_total"] == 10
    expected = fold_file_subjects()[:10]  # subject i of the fake layout is in fold i
    for k in (0, 1):
        record = check["per_fold"][str(k)]
        assert record["overlap"] == []
        assert record["test_subjects"] == [expected[k]]
        assert sorted(record["train_subjects"]) == sorted(s for s in expected if s != expected[k])
        with open(os.path.join(workdir, f"fold{k}", workdir_lib.SUBJECTS)) as f:
            assert json.load(f) == record
    # Independently of kfold.py: the built fold splits share no subject.
    builder = _builder(data_root)
    subjects = [set(folds.split_subjects(builder, f"fold{k}")) for k in range(10)]
    for i in range(10):
        for j in range(i):
            assert not subjects[i] & subjects[j], (i, j)


@pytest.mark.slow
def test_a_shared_subject_is_caught(data_root, cv):
    with pytest.raises(folds.KFoldError, match="in both"):
        folds.check_subjects(_builder(data_root), "fold0+fold1", "fold1")


@pytest.mark.slow
def test_folds_of_different_configs_are_not_aggregated(cv, tmp_path):
    workdir, _ = cv
    mixed = str(tmp_path / "mixed")
    for k in (0, 1):
        shutil.copytree(os.path.join(workdir, f"fold{k}"), os.path.join(mixed, f"fold{k}"))
    path = os.path.join(mixed, "fold1", "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved["config"]["model"]["use_se"] = False
    with open(path, "w") as f:
        json.dump(saved, f)
    with pytest.raises(folds.KFoldError, match="model.use_se"):
        folds.aggregate(mixed)


def test_a_config_without_folds_is_refused(tmp_path):
    config = raf_db.get_config()
    with pytest.raises(folds.KFoldError, match="the config names no fold"):
        kfold.run_folds(config, str(tmp_path))
    with pytest.raises(folds.KFoldError, match="no finished fold"):
        folds.aggregate(str(tmp_path))


@pytest.mark.slow
def test_a_finished_fold_is_kept_and_a_new_config_refused(cv, data_root):
    workdir, _ = cv
    fold0 = os.path.join(workdir, "fold0")
    names = ("config.json", "export.json", "params.npz", "subjects.json")

    def stamps():
        return {n: os.stat(os.path.join(fold0, n)).st_mtime_ns for n in names}

    before = stamps()
    r = _kfold(workdir, data_root, "--folds=0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Fold 0: finished in {fold0} with this config; kept as it is" in r.stderr
    assert stamps() == before  # its records are not rewritten
    r = _kfold(workdir, data_root, "--folds=0", "--config.model.use_se=False")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vit_se.kfold: workdir {fold0} holds a run with another config (")
    assert "model.use_se: True -> False" in last
    assert stamps() == before
