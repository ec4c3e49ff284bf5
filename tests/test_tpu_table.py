"""benchmarks/tpu_table.py: its search finds the largest batch with few compiles, and the table it
committed holds together. The compiler is replaced by a memory model here (no libtpu needed): the
real compiles are the preflight's, tested in test_preflight.py."""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import tpu_table  # noqa: E402

from vit_se import tpu_slices  # noqa: E402

GiB = 2**30
CELL = ("B/16", "bfloat16", "v5e-8", "replicate", False, "none")


def _compiler(total_per_chip, compiled):
    """A stand-in for one compile: per-chip bytes from a function of the per-chip batch, refused
    above the chip's HBM as the TPU compiler refuses."""

    def run_compile(store, cell, batch):
        key = tpu_table._key(cell, batch)
        if key in store.done:
            return store.done[key]
        compiled.append(batch)
        slice_ = tpu_slices.parse(cell[2])
        state, temp = total_per_chip(batch // slice_.devices)
        v, d, s, sh, scan, remat = cell
        row = dict(key=key, variant=v, dtype=d, slice=s, sharding=sh, scan=scan, remat=remat)
        row.update(batch=batch, seconds=1.0)
        if state + temp > slice_.hbm_bytes:
            row.update(fits=False, refused="Ran out of memory on HBM")
        else:
            row.update(fits=True, total=state + temp, state=state, temp=temp, collectives={})
        store.add(row)
        return row

    return run_compile


def _largest_power_of_two(total_per_chip, hbm):
    b = 1
    while sum(total_per_chip(b * 2)) <= hbm:
        b *= 2
    return b


@pytest.mark.parametrize(
    "name, total_per_chip",
    [
        # A straight line: the prediction from two small batches is right.
        ("linear", lambda b: (1 * GiB, int(0.05 * GiB * b))),
        # Temp that bends down under pressure, as the TPU compiler's rematerialisation makes it:
        # the line from small batches underestimates, and the search must walk on.
        ("sublinear", lambda b: (1 * GiB, int(0.9 * GiB * math.sqrt(b)))),
        # A state too large for 16 per chip: the search walks down first.
        ("large state", lambda b: (15 * GiB, int(0.1 * GiB * b))),
    ],
)
def test_search_confirms_the_largest_batch_by_a_refusal_at_twice_it(
    tmp_path, monkeypatch, name, total_per_chip
):
    compiled = []
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(total_per_chip, compiled))
    store = tpu_table.Store(str(tmp_path / "table.json"))
    tpu_table.search(store, CELL)
    chips = tpu_slices.parse(CELL[2]).devices
    expected = _largest_power_of_two(total_per_chip, tpu_slices.parse(CELL[2]).hbm_bytes)
    summary = tpu_table.cell_summary(store, CELL)
    assert (summary["largest"], summary["confirmed"]) == (expected * chips, True), compiled
    assert tpu_table.PAPER_BATCH in compiled  # the paper's batch is a column of the table
    assert len(compiled) == len(set(compiled)) <= 7, compiled
    # Resumed from its file, the same search compiles nothing more.
    again = []
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(total_per_chip, again))
    tpu_table.search(tpu_table.Store(str(tmp_path / "table.json")), CELL)
    assert again == []


@pytest.mark.parametrize("twin_scale", [0.25, 1.0, 4.0])
def test_a_cell_starts_from_its_twins_edge_and_still_confirms_its_own(
    tmp_path, monkeypatch, twin_scale
):
    """The fsdp cell starts where the replicated one ended, whether its own edge lies below,
    at or above it; the twin saves compiles, never the cell's own refusal at twice its batch."""
    store = tpu_table.Store(str(tmp_path / "table.json"))
    replicated = lambda b: (1 * GiB, int(0.05 * GiB * b))  # noqa: E731
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(replicated, []))
    tpu_table.search(store, CELL)
    fsdp_cell = CELL[:3] + ("fsdp", False, "none")
    fsdp = lambda b: (1 * GiB, int(0.05 * GiB * b / twin_scale))  # noqa: E731
    compiled = []
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(fsdp, compiled))
    tpu_table.search(store, fsdp_cell)
    slice_ = tpu_slices.parse(CELL[2])
    summary = tpu_table.cell_summary(store, fsdp_cell)
    expected = _largest_power_of_two(fsdp, slice_.hbm_bytes) * slice_.devices
    assert (summary["largest"], summary["confirmed"]) == (expected, True), compiled
    assert compiled[0] == tpu_table.PAPER_BATCH
    assert compiled[1] == tpu_table.cell_summary(store, CELL)["largest"], compiled
    assert len(compiled) == len(set(compiled)) <= 5, compiled


def test_a_memory_bump_below_the_edge_is_found_from_a_twin_and_named_in_the_table(
    tmp_path, monkeypatch
):
    """The TPU compiler can plan more memory for a smaller batch (H/14 bfloat16 fsdp on v5e-32:
    19.0 GiB per chip at 8 images per chip, 16.1 at 16). A search that met such a bump first
    stops under it; once a twin fits more, the resumed search compiles the cell at the twin's
    edge and walks on, and the table names the refusals below the largest batch."""
    store = tpu_table.Store(str(tmp_path / "table.json"))
    fsdp_cell = CELL[:3] + ("fsdp", False, "none")
    # Below 64 images per chip each image costs 1.5 GiB, from 64 on 0.05 GiB: the line through
    # 1 and 8 per chip aims the walk at the bump (16 and 32 per chip are refused).
    bump = lambda b: (1 * GiB, int((1.5 if b < 64 else 0.05) * GiB * b))  # noqa: E731
    compiled = []
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(bump, compiled))
    tpu_table.search(store, fsdp_cell)
    chips = tpu_slices.parse(CELL[2]).devices
    fooled = tpu_table.cell_summary(store, fsdp_cell)
    assert (fooled["largest"], fooled["confirmed"]) == (8 * chips, True), compiled

    replicated = lambda b: (1 * GiB, int(0.05 * GiB * b))  # noqa: E731
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(replicated, []))
    tpu_table.search(store, CELL)
    assert tpu_table.cell_summary(store, CELL)["largest"] == 256 * chips

    compiled.clear()
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(bump, compiled))
    tpu_table.search(store, fsdp_cell)
    summary = tpu_table.cell_summary(store, fsdp_cell)
    assert (summary["largest"], summary["confirmed"]) == (256 * chips, True), compiled
    assert compiled == [256 * chips, 512 * chips]
    table, missing = tpu_table.markdown(store, [fsdp_cell])
    assert missing == []
    assert f"| {256 * chips} (256 per chip; {16 * chips} refused) |" in table

    # A twin's edge that the cell cannot reach costs one compile and changes nothing.
    other = tpu_table.Store(str(tmp_path / "other.json"))
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(replicated, []))
    tpu_table.search(other, CELL)
    small = lambda b: (1 * GiB, int(0.2 * GiB * b))  # noqa: E731
    compiled.clear()
    monkeypatch.setattr(tpu_table, "run_compile", _compiler(small, compiled))
    tpu_table.search(other, fsdp_cell)
    assert tpu_table.cell_summary(other, fsdp_cell)["largest"] == 64 * chips, compiled
    assert compiled.count(256 * chips) == 1


def test_the_table_names_what_limits_the_largest_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(
        tpu_table, "run_compile", _compiler(lambda b: (1 * GiB, int(0.05 * GiB * b)), [])
    )
    store = tpu_table.Store(str(tmp_path / "table.json"))
    tpu_table.search(store, CELL)
    table, missing = tpu_table.markdown(store, [CELL, CELL[:3] + ("fsdp", False, "none")])
    row = table.splitlines()[2]
    assert row.startswith("| B/16 | bfloat16 | v5e-8 | replicate | 2048 (256 per chip) |")
    assert "| temp |" in row
    assert missing == [CELL[:3] + ("fsdp", False, "none")]


def _committed_rows():
    with open(os.path.join(ROOT, "benchmarks", "tpu_table.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_the_committed_table_holds_together():
    rows = _committed_rows()
    assert rows
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a compile is stored twice"
    for r in rows:
        cell = tpu_table.cell_of(r)
        assert r["key"] == tpu_table._key(cell, r["batch"])
        slice_ = tpu_slices.parse(r["slice"])
        assert r["batch"] % slice_.devices == 0, r["key"]
        if r["fits"]:
            # Fitting means under the chip's HBM, and the state is part of the arguments.
            assert r["total"] <= slice_.hbm_bytes, r["key"]
            assert r["state"] <= r["argument"], r["key"]
            assert r["impl"] == "plain", r["key"]  # `auto` resolved for the TPU, not this CPU
        else:
            # Refused by the compiler, or compiled over the HBM the preflight counts (the v5p
            # compiler accepted 96.7 GiB per chip for L/16 fsdp at 2048; a v5p chip has 95 GiB).
            assert r.get("refused") or r["total"] > slice_.hbm_bytes, r["key"]
    # Every searched cell's largest batch is confirmed by a refusal at twice it, and where a twin
    # fits a larger batch the cell was compiled there too: memory is not monotone in the batch,
    # so a refusal alone does not prove that nothing larger fits.
    store = tpu_table.Store(os.path.join(ROOT, "benchmarks", "tpu_table.json"))  # reads only
    cells = {tpu_table.cell_of(r) for r in rows}
    for cell in cells:
        summary = tpu_table.cell_summary(store, cell)
        assert summary["confirmed"], cell
        for edge in tpu_table._twin_edges(store, cell):
            batch = edge * summary["chips"]
            assert batch <= summary["largest"] or batch in summary["rows"], (cell, batch)


def test_every_committed_cell_is_in_the_readme_table():
    store = tpu_table.Store(os.path.join(ROOT, "benchmarks", "tpu_table.json"))  # reads only
    rows = store.done.values()
    cells = sorted({tpu_table.cell_of(r) for r in rows})
    table, _ = tpu_table.markdown(store, cells)
    with open(os.path.join(ROOT, "benchmarks", "README.md")) as f:
        readme = f.read()
    for line in table.splitlines()[2:]:
        assert line in readme, f"benchmarks/README.md lacks the row: {line}"
