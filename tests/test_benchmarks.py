"""The benchmark scripts run, and their side-by-side protocol adds up (speeds are not tested)."""

import json
import os
import re
import subprocess
import sys

import pytest
import tolerances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import train_speed  # noqa: E402
from conftest import TIMEOUT  # noqa: E402

from vit_se import models  # noqa: E402


def _round(times, peak, others=0.0):
    return {"step_times": times, "peak_rss_bytes": peak, "others_cpu_share": others}


def test_merge_rounds_pools_times_and_keeps_the_highest_peak():
    merged = train_speed.merge_rounds(
        [dict(_round([1.0, 3.0], 100, 0.1), compile_s=5), _round([2.0], 300, 0.3)]
    )
    assert merged["step_times"] == [1.0, 3.0, 2.0]
    assert merged["peak_rss_bytes"] == 300
    assert merged["others_cpu_share"] == tolerances.approx(0.2, n=2, eps=tolerances.EPS64)
    assert merged["compile_s"] == 5
    assert [r["step_times"] for r in merged["rounds"]] == [[1.0, 3.0], [2.0]]


def test_merge_rounds_reports_a_failed_round():
    merged = train_speed.merge_rounds([_round([1.0], 1), {"error": "exit 1: boom"}])
    assert merged == {"error": "exit 1: boom"}


def test_round_ratios_compare_each_round_with_its_own_peer():
    jax_result = train_speed.merge_rounds([_round([2.0, 2.0], 90), _round([4.0], 110)])
    timm_result = train_speed.merge_rounds([_round([4.0], 100), _round([4.0, 4.0], 100)])
    ratios = train_speed.round_ratios(jax_result, timm_result, batch=8)
    # float64 means of a few step times, and their ratios.
    assert ratios["speed"] == tolerances.approx([2.0, 1.0], n=4, eps=tolerances.EPS64)
    assert ratios["memory"] == tolerances.approx([0.9, 1.1], n=4, eps=tolerances.EPS64)
    assert train_speed.round_ratios(train_speed.merge_rounds([_round([1.0], 1)]), {}, 8) is None


@pytest.mark.slow
def test_train_speed_runs_every_measurement_in_rounds(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "train_speed.py"),
        "--model=tiny/4",
        "--image_size=16",
        "--steps=2",
        "--warmup=1",
        "--rounds=2",
        f"--json_out={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train images/s" in proc.stdout
    results = json.loads(out.read_text())["results"]
    for name in ("jax_train", "jax_infer"):
        assert "error" not in results[name], results[name]
        assert len(results[name]["rounds"]) == 2
        assert len(results[name]["step_times"]) == 4
        assert results[name]["images_per_s"] > 0
    # XLA's planned scratch is reported (its size is the compiler's: not asserted), and so is what
    # 'auto' resolved to on this backend.
    assert results["jax_train"]["xla_temp_bytes"] > 0
    assert results["jax_train"]["impl"] == models.resolve_impl("auto")


def test_every_model_option_can_be_benchmarked_and_no_other():
    for flag, values in (
        ("impl", models.IMPLS),
        ("attention_impl", models.ATTENTION_IMPLS),
        ("remat_policy", tuple(models.REMAT_POLICIES)),
    ):
        for value in values:
            assert getattr(train_speed.parse_args([f"--{flag}={value}"]), flag) == value
        with pytest.raises(SystemExit):
            train_speed.parse_args([f"--{flag}=unknown"])


def test_parse_batches():
    assert train_speed.parse_batches(None) == [None]
    assert train_speed.parse_batches("64,256") == [64, 256]
    with pytest.raises(SystemExit, match="--batches"):
        train_speed.parse_batches("64,x")
    with pytest.raises(SystemExit, match="--batches"):
        train_speed.parse_batches("0")


def test_the_speed_table_prints_rates_as_plain_numbers():
    """An accelerator's 1190 images/s read '1.19e+03' under `:.3g`."""
    rows = {label: spec for label, _, _, spec, _, _ in train_speed.ROWS}
    assert train_speed._fmt(1190.4, rows["train images/s"]) == "1190"
    assert train_speed._fmt(2380.6, rows["train images/s, best"]) == "2381"
    assert train_speed._fmt(87.54, rows["infer images/s, best"]) == "87.5"
    assert train_speed._fmt(None, rows["train images/s"]) == "-"
    assert train_speed._fmt(0.01234, rows["train step s (mean)"]) == "0.0123"


@pytest.mark.slow
def test_train_speed_model_options_and_batches(tmp_path):
    # The plain implementation, scanned and rematerialised, at two batch sizes in one command.
    out = tmp_path / "speed.json"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "train_speed.py"),
        "--model=tiny/4",
        "--image_size=16",
        "--steps=1",
        "--warmup=1",
        "--impl=plain",
        "--scan",
        "--remat_policy=full",
        "--batches=2,4",
        f"--json_out={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "impl plain (plain), attention_impl xla, scan True, remat_policy full" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [(r["args"]["batch"], r["args"]["inference_batch"]) for r in runs] == [(2, 2), (4, 4)]
    for run in runs:
        for name in ("jax_train", "jax_infer"):
            result = run["results"][name]
            assert "error" not in result, result
            assert (result["impl"], result["scan"], result["remat_policy"]) == (
                "plain",
                True,
                "full",
            )
    replay = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "train_speed.py"), f"--from_json={out}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT,
    )
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert replay.stdout.count("train images/s ") == 2


@pytest.mark.slow
def test_cpu_breakdown_times_every_piece():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "cpu_breakdown.py"), "--repeats=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(",")[0] for line in proc.stdout.splitlines() if "," in line]
    pieces = ("dense 768->768", "dense 768->3072", "dense 3072->768", "attention", "adamw")
    for piece in pieces + ("attention plain",):
        assert piece in rows, proc.stdout


@pytest.mark.slow
def test_xla_cpu_memory_prints_each_figure():
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "xla_cpu_memory.py"),
        "--remat_layers=2",
        "--remat_batch=4",
        "--init_model=tiny/4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for impl in ("plain", "cpu_lean"):
        for scan in (True, False):
            assert re.search(rf"^  {impl} +scan={scan} +\d+ / \d+ / \d+$", out, re.M), out
    assert re.search(
        r"^init: .* jit_model_init \d+ MiB, jax\.jit\(model\.init\) \d+ MiB$", out, re.M
    )
    assert re.search(r"^donation: the first train step updated \d+ of \d+ parameter", out, re.M)
