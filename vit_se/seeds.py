"""Several seeds of one experiment, so that a difference can be told from seed noise.

`--seeds=0,1,2` on `vit_se.main`, `vit_se.kfold` and `vit_se.experiments ablation` runs the same
config once per seed, each in WORKDIR/seed{s} (only `config.seed` differs: initialisation of the
fresh head and SE, dropout, shuffling and augmentation), and reports every run beside the mean and
the sample standard deviation (n - 1) over the seeds, in the same JSON/Markdown/CSV tables.
"""

from __future__ import annotations

import os

from vit_se import reports, workdir
from vit_se.errors import Error

METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")


class SeedsError(Error, ValueError):
    """A --seeds value that cannot be run."""


def parse(values):
    """--seeds=0,1,2 (a list of strings from absl) -> (0, 1, 2)."""
    try:
        seeds = tuple(int(v) for v in values)
    except ValueError:
        raise SeedsError(f"--seeds: expected integers, got {','.join(values)}") from None
    if len(set(seeds)) != len(seeds):
        raise SeedsError(f"--seeds: {','.join(values)} names a seed twice")
    if not seeds:
        raise SeedsError("--seeds: name at least one seed")
    return seeds


def with_seed(config, seed):
    config = config.copy_and_resolve_references()
    config.seed = int(seed)
    return config


def summary(rows, metrics=METRICS):
    """{'seeds': [...], metric: {'mean', 'std'}} over one row per seed."""
    return {
        "seeds": [r["seed"] for r in rows],
        **{m: reports.mean_std([r[m] for r in rows]) for m in metrics},
    }


def cell(stats):
    """'87.22 ± 0.31' from {'mean', 'std'} fractions."""
    return f"{reports.pct(stats['mean'])} ± {reports.pct(stats['std'])}"


def markdown(title, rows, rule, metrics=METRICS):
    s = summary(rows, metrics)
    headers = ["seed", "run", "reported on", "examples"] + [f"{m} (%)" for m in metrics]
    body = [
        [r["seed"], r["workdir"], r["split"], r["num_examples"]]
        + [reports.pct(r[m]) for m in metrics]
        for r in rows
    ]
    body.append(
        [f"**mean ± std ({len(rows)} seeds)**", "", "", ""] + [f"**{cell(s[m])}**" for m in metrics]
    )
    lines = [f"# {title}", "", f"Selection: {rule}. Std: sample standard deviation over seeds.", ""]
    lines += reports.markdown_table(headers, body, ["---:", "---", "---", "---:"] + ["---:"] * 3)
    return "\n".join(lines) + "\n"


def csv(rows, metrics=METRICS):
    s = summary(rows, metrics)
    keys = ["seed", "split", "num_examples", *metrics, "workdir"]
    text = reports.csv_records(keys, rows)
    extra = [
        ["mean", "", "", *(s[m]["mean"] for m in metrics), ""],
        ["std", "", "", *(s[m]["std"] for m in metrics), ""],
    ]
    return text + reports.csv_text(keys, extra).split("\n", 1)[1]


def write(out_dir, title, rows, rule):
    """WORKDIR/seeds.{json,md,csv}; returns the result dict."""
    result = {"title": title, "selection": rule, "rows": rows, "summary": summary(rows)}
    reports.write_report(
        out_dir, workdir.SEEDS_REPORT, result, markdown(title, rows, rule), csv(rows)
    )
    return result


def stem(out_dir):
    return os.path.join(out_dir, workdir.SEEDS_REPORT)
