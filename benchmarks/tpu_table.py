"""The TPU table: what fits on which slice, from the TPU compiler, on a machine without a TPU.

  nice -n 19 python benchmarks/tpu_table.py --out=benchmarks/tpu_table.json   # fills, resumes
  python benchmarks/tpu_table.py --out=benchmarks/tpu_table.json --print      # the Markdown

Each cell is the trainer's train step (`vit_se.preflight`, configs/raf_db.py with the row's
variant and dtype, 224 px, AdamW) compiled for a slice. The largest power-of-two global batch is
found with few compiles: the paper's batch (8) and one more give the temp bytes per example, a
straight line predicts the largest batch, and compiles confirm that it fits and that twice it
does not (walking on if the line was wrong). Every compile is appended to --out as soon as it is
known, with its time, and a rerun skips what is there; each compile runs in its own process so
that one that dies takes nothing else with it.

Needs the tpu extra (libtpu). Prints compiler facts only: there is no TPU here to time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import json
import math
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_BATCH = 8
VARIANTS = ("B/16", "L/16", "Ti/16", "S/16", "H/14")
DTYPES = ("bfloat16", "float32")
SLICES = ("v5e-8", "v4-8", "v5p-8", "v6e-8", "v5e-32")
SHARDINGS = ("replicate", "fsdp")
# (variant, dtype, slice, sharding, scan, remat)
DEFAULT_CELLS = [
    (v, d, s, sh, False, "none")
    for v in VARIANTS
    for d in DTYPES
    for s in SLICES
    for sh in SHARDINGS
]
# Where remat and scan may change the answer: L/16 and H/14 on the smallest HBM.
EXTRA_CELLS = [
    ("L/16", "bfloat16", "v5e-8", "replicate", False, "full"),
    ("L/16", "bfloat16", "v5e-8", "replicate", True, "full"),
    ("B/16", "bfloat16", "v5e-8", "replicate", True, "none"),
]


def _key(cell, batch):
    v, d, s, sh, scan, remat = cell
    return f"{v}|{d}|{s}|{sh}|scan={scan}|remat={remat}|batch={batch}"


def cell_of(row):
    """The cell a stored compile belongs to."""
    return (row["variant"], row["dtype"], row["slice"], row["sharding"], row["scan"], row["remat"])


# ----------------------------------------------------------------------------------------------
# One compile, in its own process.


def compile_one(spec):
    """The train step of one cell at one global batch -> a JSON-able dict."""
    from vit_se import tpu_slices

    slice_ = tpu_slices.parse(spec["slice"])
    tpu_slices.compile_only_environment(slice_)
    import importlib.util

    from vit_se import config_checks, preflight

    path = os.path.join(ROOT, "configs", "raf_db.py")
    module_spec = importlib.util.spec_from_file_location("raf_db_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(f"variant={spec['variant']}")
    config.model.dtype = spec["dtype"]
    config.model.scan = spec["scan"]
    config.model.remat_policy = spec["remat"]
    config.param_sharding = spec["sharding"]
    config.batch_size = spec["batch"]
    config_checks.check_values(config)
    config = config_checks.resolve(config)
    start = time.time()
    report = preflight.run(config, slice_, ["train step"])
    p = report.programs["train step"]
    out = {"seconds": round(p.seconds, 1), "wall": round(time.time() - start, 1)}
    if p.refused:
        return {**out, "fits": False, "refused": p.refused}
    return {
        **out,
        "fits": p.total <= slice_.hbm_bytes,
        "total": p.total,
        "state": report.state,
        **{k: v for k, v in p.memory.items()},
        "flops": p.flops,
        "analytic_flops": p.analytic_flops,
        "collectives": p.collectives,
        "impl": report.impl,
    }


class Store:
    """The JSON-lines file of finished compiles: appended at once, read on start."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.done = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        self.done[row["key"]] = row

    def add(self, row):
        with self.lock:
            self.done[row["key"]] = row
            with open(self.path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())


def run_compile(store, cell, batch):
    key = _key(cell, batch)
    if key in store.done:
        return store.done[key]
    v, d, s, sh, scan, remat = cell
    spec = dict(variant=v, dtype=d, slice=s, sharding=sh, scan=scan, remat=remat, batch=batch)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  {key}: failed: {tail}", flush=True)
        return None  # not stored: a rerun tries again
    row = {"key": key, **spec, **json.loads(lines[-1])}
    store.add(row)
    what = "fits" if row["fits"] else "does not fit"
    print(f"  {key}: {what}, compiled in {row['seconds']} s", flush=True)
    return row


# ----------------------------------------------------------------------------------------------
# The search.


def _chips(slice_name):
    from vit_se import tpu_slices

    return tpu_slices.parse(slice_name).devices


def _hbm(slice_name):
    from vit_se import tpu_slices

    return tpu_slices.parse(slice_name).hbm_bytes


def predict(a, b, hbm):
    """Largest per-chip batch a straight line through two fitting compiles allows."""
    (ba, ra), (bb, rb) = sorted([a, b], key=lambda x: x[0])
    slope = (rb["total"] - ra["total"]) / (bb - ba)
    if slope <= 0:
        return bb * 2
    return max(int((hbm - ra["total"]) / slope) + ba, 1)


def _same_chip_points(store, cell, not_batch):
    """A fitting compile of the same model on the same chip at another per-chip batch (another
    slice size): only to aim the next compile, never reported."""
    generation = cell[2].split("-")[0]
    for r in store.done.values():
        other = cell_of(r)
        same = other[:2] + other[3:] == tuple(cell[:2]) + tuple(cell[3:])
        if same and r["slice"].split("-")[0] == generation and r["fits"]:
            per_chip = r["batch"] // _chips(r["slice"])
            if per_chip != not_batch:
                return [(per_chip, r)]
    return []


def _twin_edges(store, cell):
    """The confirmed largest per-chip batches of the same model on the same slice with the other
    sharding, then with the other dtype."""
    v, d, s, sh, scan, remat = cell
    other_sharding = "fsdp" if sh == "replicate" else "replicate"
    other_dtype = "float32" if d == "bfloat16" else "bfloat16"
    edges = []
    for twin in [(v, d, s, other_sharding, scan, remat), (v, other_dtype, s, sh, scan, remat)]:
        summary = cell_summary(store, twin)
        if summary and summary["confirmed"]:
            edges.append(summary["largest"] // summary["chips"])
    return edges


def search(store, cell):
    """Compiles until the largest power-of-two global batch that fits is confirmed, then tries
    the cell at its twins' larger edges."""
    _search_own(store, cell)
    _try_twins_edges(store, cell)


def _try_twins_edges(store, cell):
    """A refusal at twice a fitting batch does not prove that nothing larger fits: memory per
    chip is not monotone in the batch. Under fsdp on v5e-32 the TPU compiler plans more for 8
    images per chip than for 16 or 64 (H/14 bfloat16: 19.0 GiB at global 256, 16.1 at 512,
    while 2048 fits in float32). So where a twin's confirmed edge lies above the cell's, the
    cell is compiled there once, and walks up from it if it fits. A refusal there ends it:
    walking down would spend compiles between two refusals."""
    chips = _chips(cell[2])
    for edge in _twin_edges(store, cell):
        summary = cell_summary(store, cell)
        if summary is None or not summary["confirmed"] or edge * chips <= summary["largest"]:
            continue
        row = run_compile(store, cell, edge * chips)
        if row is not None and row["fits"]:
            _walk(store, cell, edge, {edge: row})


def _search_own(store, cell):
    summary = cell_summary(store, cell)
    if summary is not None and summary["confirmed"]:
        return  # resumed: a seed found since would only aim compiles at an edge already known
    chips, hbm = _chips(cell[2]), _hbm(cell[2])
    fitting = []
    if PAPER_BATCH % chips == 0:
        row = run_compile(store, cell, PAPER_BATCH)
        if row is None:
            return
        if row["fits"]:
            fitting.append((PAPER_BATCH // chips, row))
    # The first twin's edge is where the search starts, which saves the compile at 16 per chip
    # (B/16 and L/16 compiles take minutes here); the walk still confirms the cell's own edge.
    edges = _twin_edges(store, cell)
    if edges:
        _walk(store, cell, edges[0], {})
        return
    first = 16
    row = run_compile(store, cell, first * chips)
    if row is None:
        return
    while not row["fits"] and first > 1:
        first //= 2
        row = run_compile(store, cell, first * chips)
        if row is None:
            return
    if not row["fits"]:
        return
    fitting.append((first, row))
    if len(fitting) < 2:
        fitting += _same_chip_points(store, cell, first)
    guess = predict(fitting[0], fitting[1], hbm) if len(fitting) >= 2 else first * 2
    _walk(store, cell, 2 ** int(math.log2(max(guess, 1))), {first: row})


def _walk(store, cell, per_chip, known):
    """From a guess, up by four while a batch and its double both fit, down by two while it
    does not, until a fitting batch whose double does not fit is compiled."""
    chips = _chips(cell[2])
    while True:
        here = known.get(per_chip) or run_compile(store, cell, per_chip * chips)
        if here is None:
            return
        known[per_chip] = here
        if here["fits"]:
            above = known.get(per_chip * 2) or run_compile(store, cell, per_chip * 2 * chips)
            if above is None:
                return
            known[per_chip * 2] = above
            if not above["fits"]:
                return
            per_chip *= 4
        else:
            per_chip //= 2
            if per_chip < 1:
                return


# ----------------------------------------------------------------------------------------------
# The table.


def _gib(b):
    return f"{b / 2**30:.1f}"


def cell_summary(store, cell):
    chips = _chips(cell[2])
    rows = {r["batch"]: r for r in store.done.values() if cell_of(r) == tuple(cell)}
    if not rows:
        return None
    fits = [b for b, r in rows.items() if r["fits"]]
    largest = max(fits) if fits else None
    confirmed = largest is not None and any(
        b == 2 * largest and not r["fits"] for b, r in rows.items()
    )
    paper = rows.get(PAPER_BATCH)
    out = {"chips": chips, "largest": largest, "confirmed": confirmed, "rows": rows}
    out["paper"] = paper
    return out


def _hbm_text(row):
    if row is None:
        return "—"
    if not row["fits"]:
        return "does not fit"
    return f"{_gib(row['total'])} (state {_gib(row['state'])}, temp {_gib(row['temp'])})"


def _collectives_text(row):
    if row is None or not row.get("collectives"):
        return "—"
    parts = []
    for op, (count, size) in row["collectives"].items():
        if count:
            parts.append(f"{op} {count} ({_gib(size)} GiB)")
    return ", ".join(parts) or "none"


def markdown(store, cells):
    head = (
        "| model | dtype | slice | params | largest batch | GiB/chip at batch 8 | "
        "GiB/chip at the largest | limited by | collectives per step at the largest | "
        "compiles (s) |"
    )
    lines = [head, "|" + "---|" * 10]
    missing = []
    for cell in cells:
        v, d, s, sh, scan, remat = cell
        summary = cell_summary(store, cell)
        label = sh + (", scan" if scan else "") + (f", remat {remat}" if remat != "none" else "")
        if summary is None or not summary["confirmed"]:
            missing.append(cell)
            continue
        largest = summary["largest"]
        at_largest = summary["rows"][largest]
        paper = summary["paper"]
        paper_text = (
            _hbm_text(paper)
            if PAPER_BATCH % summary["chips"] == 0
            else f"8 does not divide over {summary['chips']} chips"
        )
        limit = "temp" if at_largest["temp"] >= at_largest["state"] else "state"
        seconds = ", ".join(f"{b}: {r['seconds']:.0f}" for b, r in sorted(summary["rows"].items()))
        # Memory is not monotone in the batch (_try_twins_edges): say so where it showed.
        below = sorted(b for b, r in summary["rows"].items() if b < largest and not r["fits"])
        per_chip = f"{largest // summary['chips']} per chip"
        if below:
            per_chip += f"; {', '.join(map(str, below))} refused"
        lines.append(
            f"| {v} | {d} | {s} | {label} | {largest} ({per_chip}) "
            f"| {paper_text} | {_hbm_text(at_largest)} | {limit} | "
            f"{_collectives_text(at_largest)} | {seconds} |"
        )
    return "\n".join(lines), missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "tpu_table.json"))
    parser.add_argument("--print", action="store_true", help="print the table and stop")
    parser.add_argument("--workers", type=int, default=2, help="cells searched at once")
    parser.add_argument("--only", default="", help="comma-separated variants, e.g. B/16,L/16")
    parser.add_argument("--dtypes", default="", help="comma-separated, e.g. bfloat16")
    parser.add_argument("--slices", default="", help="comma-separated, e.g. v5e-8,v4-8")
    parser.add_argument("--shardings", default="", help="replicate, fsdp or both")
    parser.add_argument(
        "--no_extra", action="store_true", help="leave out the remat and scan cells"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(compile_one(json.loads(args.one))), flush=True)
        return
    cells = DEFAULT_CELLS + ([] if args.no_extra else EXTRA_CELLS)
    # A cell is (variant, dtype, slice, sharding, scan, remat): each filter keeps its field's
    # values, so a table can be filled a part at a time (every compile is kept in --out).
    for index, wanted in enumerate((args.only, args.dtypes, args.slices, args.shardings)):
        if wanted:
            cells = [c for c in cells if c[index] in set(wanted.split(","))]
    # B/16 and L/16 first, slice by slice, bfloat16 before float32; the other variants after.
    ordered = sorted(
        cells,
        key=lambda c: (
            VARIANTS.index(c[0]) > 1,
            DTYPES.index(c[1]),
            SLICES.index(c[2]),
            c[4] or c[5] != "none",
        ),
    )
    store = Store(args.out)
    if not args.print:
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda c: search(store, c), ordered))
    table, missing = markdown(store, ordered)
    print(table)
    if missing:
        print(f"\nnot yet measured ({len(missing)} cells):")
        for v, d, s, sh, scan, remat in missing:
            print(
                f"  {v} {d} {s} {sh}"
                + (" scan" if scan else "")
                + (f" remat={remat}" if remat != "none" else "")
            )


if __name__ == "__main__":
    main()
