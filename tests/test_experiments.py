"""vit_se.experiments: the ablation grid and the cross-database matrix with tiny budgets.

The ablation CLI trains ViT and ViT+SE on the synthetic RAF-DB of configs/demo.py; the
intermediate-training path (FER-2013 first) and the k-fold path (CK+) run in-process on one
variant and one fold each; the cross-database matrix evaluates the ablation's two runs on RAF-DB
and a fake JAFFE.
"""

import csv
import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import TIMEOUT, once

from vit_se import evaluate
from vit_se.datasets.ck_plus.fake_data import write_fake_ck_plus
from vit_se.datasets.fer2013.fake_data import write_fake_fer2013
from vit_se.datasets.jaffe.fake_data import write_fake_jaffe
from vit_se.experiments import ablation, cross_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = 8
DEMO = [
    "--config.fake_data.num_train=140",
    "--config.fake_data.num_test=28",
    f"--config.num_train_steps={STEPS}",
    "--config.eval_every=4",
    "--config.checkpoint_every=4",
    "--config.log_every=4",
    "--config.batch_size=16",
]


def _read(path):
    with open(path) as f:
        return f.read()


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _experiments(*args):
    return subprocess.run(
        [sys.executable, "-m", "vit_se.experiments", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _config(name, arg=None, **fields):
    config = importlib.import_module(f"vit_se.configs.{name}").get_config(arg)
    for key, value in fields.items():
        target = config
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return config


def _ablation(root):
    workdir = os.path.join(root, "raf")
    r = _experiments(
        "ablation",
        "--config=configs/demo.py",
        f"--workdir={workdir}",
        f"--config.manual_dir={root}/raf_manual",
        f"--config.data_dir={root}/tfds",
        *DEMO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return {"workdir": workdir, "stdout": r.stdout}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return once(tmp_path_factory, "grid_data", _ablation)


@pytest.fixture(scope="module")
def data_root(shared):
    """RAF-DB is built there; each test that adds another dataset is its only writer."""
    return os.path.dirname(shared["workdir"])


@pytest.fixture(scope="module")
def ablation_dir(shared):
    return shared["workdir"], shared["stdout"]


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_ablation_table_same_seed_and_budget(ablation_dir):
    workdir, stdout = ablation_dir
    md = _read(os.path.join(workdir, "ablation.md"))
    assert md in stdout
    rows = _read_csv(os.path.join(workdir, "ablation.csv"))
    assert [(r["model"], r["use_se"], r["intermediate"]) for r in rows] == [
        ("ViT", "False", "none"),
        ("ViT+SE", "True", "none"),
    ]
    assert {r["steps"] for r in rows} == {str(STEPS)} and {r["seed"] for r in rows} == {"0"}
    assert int(rows[1]["params"]) > int(rows[0]["params"])  # the SE block's weights
    for r in rows:
        # Selected on train[90%:], reported on test through evaluate with best_params.npz.
        assert r["split"] == "test" and r["num_examples"] == "28"
        assert r["selection"].startswith("best on train[90%:] (step ")
        with open(os.path.join(r["workdir"], "export.json")) as f:
            assert json.load(f)["model"]["use_se"] == (r["use_se"] == "True")
        with open(
            os.path.join(r["workdir"], "eval", "raf_db-aligned-test-best", "metrics.json")
        ) as f:
            # The same float64, through the CSV's repr.
            assert float(r["accuracy"]) == json.load(f)["accuracy"]
    assert "| ViT+SE | none | raf_db/aligned | test | 28 |" in md


@pytest.mark.slow
def test_ablation_with_intermediate_training(ablation_dir, data_root, tmp_path):
    """One variant with FER-2013 first; the variant without it resumes from the CLI's run."""
    workdir = str(tmp_path / "raf")
    shutil.copytree(os.path.join(ablation_dir[0], "vit_se"), os.path.join(workdir, "vit_se"))
    write_fake_fer2013(os.path.join(data_root, "fer_manual"))
    config = _config(
        "demo",
        manual_dir=f"{data_root}/raf_manual",
        data_dir=f"{data_root}/tfds",
        **{"fake_data.num_train": 140, "fake_data.num_test": 28},
        num_train_steps=STEPS,
        eval_every=4,
        checkpoint_every=4,
        batch_size=16,
    )
    inter = _config(
        "fer2013",
        "B/16",  # replaced by the variant's model
        manual_dir=f"{data_root}/fer_manual",
        data_dir=f"{data_root}/tfds",
        image_size=48,
        num_train_steps=4,
        batch_size=8,
        eval_every=4,
        checkpoint_every=4,
    )
    result = ablation.ablation(config, workdir, inter, variants=("vit_se",))
    rows = result["rows"]
    assert [(r["model"], r["intermediate"]) for r in rows] == [
        ("ViT+SE", "none"),
        ("ViT+SE", "FER-2013"),
    ]
    stage1 = os.path.join(workdir, "intermediate_vit_se")
    with open(os.path.join(stage1, "config.json")) as f:
        first = json.load(f)["config"]
    assert first["dataset"] == "fer2013" and first["model"]["name"] == "tiny/8"
    assert first["model"]["use_se"] is True
    with open(os.path.join(workdir, "vit_se_fer2013", "config.json")) as f:
        second = json.load(f)["config"]
    assert second["init_from"] == stage1 and second["pretrained_path"] is None
    assert rows[0]["steps"] == rows[1]["steps"] == STEPS
    md = _read(os.path.join(workdir, "ablation.md"))
    assert "| ViT+SE | FER-2013 | raf_db/aligned | test |" in md


@pytest.mark.slow
def test_kfold_ablation_reports_mean_and_std(data_root, tmp_path):
    write_fake_ck_plus(os.path.join(data_root, "ck_manual"))
    config = _config(
        "ck_plus",
        "tiny/8",
        manual_dir=f"{data_root}/ck_manual",
        data_dir=f"{data_root}/tfds",
        image_size=32,
        num_train_steps=4,
        batch_size=8,
        eval_batch_size=8,
    )
    workdir = str(tmp_path / "ck")
    result = ablation.ablation(config, workdir, folds=[0], variants=("vit",))
    (row,) = result["rows"]
    assert row["split"] == "1 of 10 folds (held-out fold)"
    assert row["selection"].startswith("final step of each fold")
    assert os.path.exists(os.path.join(workdir, "vit", "kfold.md"))
    md = _read(os.path.join(workdir, "ablation.md"))
    assert f"| {100 * row['accuracy']:.2f} ± 0.00 |" in md


@pytest.mark.slow
def test_cross_database_matrix(ablation_dir, data_root, tmp_path):
    workdir, _ = ablation_dir
    jaffe = os.path.join(data_root, "jaffe_manual")
    write_fake_jaffe(jaffe, images_per_class=3, size=64)
    out = str(tmp_path / "cross")
    r = _experiments(
        "cross_dataset",
        f"--workdirs=vit={workdir}/vit,vit_se={workdir}/vit_se",
        "--datasets=raf_db,jaffe/original",
        f"--manual_dirs=jaffe={jaffe}",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    cells = _read_csv(os.path.join(out, "cross_dataset.csv"))
    assert [(c["model"], c["dataset"], c["split"], c["num_examples"]) for c in cells] == [
        ("vit", "raf_db", "test", "28"),
        ("vit", "jaffe", "all", "21"),
        ("vit_se", "raf_db", "test", "28"),
        ("vit_se", "jaffe", "all", "21"),
    ]
    assert [c["within"] for c in cells] == ["True", "False", "True", "False"]
    assert {c["params_file"] for c in cells} == {"best_params.npz"}
    md = _read(os.path.join(out, "cross_dataset.md"))
    assert md in r.stdout
    assert "| trained on \\ tested on | raf_db | jaffe/original |" in md
    vit_raf = float(cells[0]["accuracy"])
    assert f"| vit (raf_db/aligned) | {100 * vit_raf:.2f}\\* |" in md
    # Each cell is an ordinary evaluate output.
    with open(os.path.join(out, "evals", "vit_se__jaffe_original", evaluate.METRICS_FILE)) as f:
        cell = json.load(f)
    assert cell["accuracy"] == float(cells[3]["accuracy"])  # the same float64, through the CSV
    assert cell["trained_on"]["dataset"] == "raf_db"


def test_bad_arguments_fail_in_one_line(tmp_path):
    r = _experiments(
        "cross_dataset", "--workdirs=novalue", "--datasets=raf_db", f"--out={tmp_path}"
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "vit_se.experiments cross_dataset: --workdirs: expected NAME=VALUE, got 'novalue'"
    )
    r = _experiments("grid")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "vit_se.experiments: no command 'grid'; usage: python -m vit_se.experiments"
        " {ablation|cross_dataset} [flags]; COMMAND --help: its flags"
    )
    spec = cross_dataset.parse_dataset_spec("ck_plus/7class:fold0")
    assert spec == ("ck_plus", "7class", "fold0")
    assert cross_dataset.parse_dataset_spec("sfew") == ("sfew", None, None)
