"""Several seeds: one run per seed, each reported as a single run is, and their mean ± std."""

import json
import os
import subprocess

import numpy as np
import pytest
import tolerances
from conftest import ROOT, TIMEOUT, demo_cmd, demo_env

from vit_se import seeds
from vit_se.experiments import ablation

STEPS = [
    "--config.fake_data.num_train=210",
    "--config.fake_data.num_test=42",
    "--config.num_train_steps=40",
    "--config.eval_every=20",
    "--config.checkpoint_every=20",
    "--config.log_every=20",
    "--config.batch_size=16",
]


@pytest.mark.slow
def test_three_seeds_give_three_runs_and_one_aggregated_row(short_run, tmp_path):
    run_dir = str(tmp_path / "seeds")
    cmd = demo_cmd(run_dir, short_run["data_root"], *STEPS, "--seeds=0,1,2")
    r = subprocess.run(
        cmd, cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(run_dir, "seeds.json")) as f:
        result = json.load(f)
    rows = result["rows"]
    assert [row["seed"] for row in rows] == [0, 1, 2]
    for row in rows:
        run = os.path.join(run_dir, f"seed{row['seed']}")
        with open(os.path.join(run, "config.json")) as f:
            assert json.load(f)["config"]["seed"] == row["seed"]
        # Reported as a single run is: best on train[90%:], evaluated on test.
        assert row["split"] == "test" and row["num_examples"] == 42
        assert row["selection"].startswith("best on train[90%:]")
        with open(os.path.join(run, "eval", "raf_db-aligned-test-best", "metrics.json")) as f:
            assert json.load(f)["accuracy"] == row["accuracy"]
    acc = np.array([row["accuracy"] for row in rows])
    # float64 mean and sample std over the seeds.
    n, e64 = 2 * len(acc), tolerances.EPS64
    assert result["summary"]["accuracy"]["mean"] == tolerances.approx(acc.mean(), n, 1.0, eps=e64)
    assert result["summary"]["accuracy"]["std"] == tolerances.approx(
        acc.std(ddof=1), n, 1.0, eps=e64
    )
    # The seeds trained different models (their test losses differ).
    with_loss = []
    for row in rows:
        path = os.path.join(run_dir, f"seed{row['seed']}", "eval", "raf_db-aligned-test-best")
        with open(os.path.join(path, "metrics.json")) as f:
            with_loss.append(json.load(f)["loss"])
    assert len(set(with_loss)) == 3
    with open(os.path.join(run_dir, "seeds.md")) as f:
        md = f.read()
    assert md in r.stdout
    assert "**mean ± std (3 seeds)**" in md
    assert f"**{100 * acc.mean():.2f} ± {100 * acc.std(ddof=1):.2f}**" in md
    with open(os.path.join(run_dir, "seeds.csv")) as f:
        lines = f.read().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2", "mean", "std"]


def test_ablation_rows_over_seeds_are_mean_and_sample_std():
    rows = [
        {
            "model": "ViT+SE",
            "intermediate": "none",
            "seed": s,
            "workdir": f"/w/vit_se/seed{s}",
            "accuracy": a,
            "mean_class_accuracy": m,
            "macro_f1": f,
            "selection": "final step",
        }
        for s, a, m, f in [(0, 0.5, 0.4, 0.3), (1, 0.7, 0.6, 0.5), (2, 0.6, 0.8, 0.4)]
    ]
    (agg,) = ablation._over_seeds(rows)
    # float64 mean and sample std over 3 seeds.
    close = lambda x: tolerances.approx(x, n=6, scale=1.0, eps=tolerances.EPS64)  # noqa: E731
    assert agg["accuracy"] == close(0.6) and agg["accuracy_std"] == close(0.1)
    assert agg["mean_class_accuracy"] == close(0.6)
    assert agg["mean_class_accuracy_std"] == close(0.2)
    assert agg["macro_f1_std"] == close(0.1)
    assert agg["workdir"] == "/w/vit_se" and agg["seed"] == "mean ± std over 3 seeds"
    assert agg["selection"].endswith("over seeds 0, 1, 2")
    assert ablation._cell(agg, "accuracy") == "60.00 ± 10.00"


@pytest.mark.parametrize(
    "values,message",
    [(["0", "x"], "expected integers"), (["1", "1"], "names a seed twice"), ([], "at least one")],
)
def test_bad_seeds_are_one_line(values, message):
    with pytest.raises(seeds.SeedsError, match=message):
        seeds.parse(values)
