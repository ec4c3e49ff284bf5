"""The cross-database matrix: every model on every database through `vit_se.evaluate`.

  python -m vit_se.experiments cross_dataset --out=$W/cross \
      --workdirs=raf_db=$W/raf_db,sfew=$W/sfew,fer2013=$W/fer2013 \
      --datasets=raf_db,sfew,fer2013,ck_plus/7class,jaffe/face224 \
      --manual_dirs=ck_plus=$CKP,jaffe=$JAFFE

A dataset entry is NAME[/CONFIG][:SPLIT]. On the model's own training database the run's held-out
test split is used (marked * in the table); elsewhere `evaluate.DEFAULT_SPLITS` (RAF-DB test,
SFEW validation, FER-2013 private_test, CK+/JAFFE every fold). `--params=auto` (the default)
takes each run's default parameter file: the val-selected best_params.npz where the run has
one, params.npz otherwise. Writes
OUT/cross_dataset.{md,csv,json} and each cell's evaluation under OUT/evals/.
"""

from __future__ import annotations

import os

from absl import flags

from vit_se import cli, evaluate, reports, workdir
from vit_se.experiments import ExperimentError


def parse_dataset_spec(spec):
    """'ck_plus/7class:fold0' -> ('ck_plus', '7class', 'fold0'); config and split optional."""
    name, _, split = spec.partition(":")
    name, _, config = name.partition("/")
    return name.strip(), (config.strip() or None), (split.strip() or None)


def parse_mapping(items, what):
    """['a=x', 'b=y'] -> {'a': 'x', 'b': 'y'} (order kept), naming the flag on a bad item."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ExperimentError(f"--{what}: expected NAME=VALUE, got {item!r}")
        if key in out:
            raise ExperimentError(f"--{what}: {key!r} given twice")
        out[key] = value
    return out


def cross_dataset(
    workdirs,
    datasets,
    out,
    params="auto",
    data_dir=None,
    manual_dirs=None,
):
    """Evaluates every workdir on every dataset; returns the result and writes the tables."""
    manual_dirs = manual_dirs or {}
    specs = [parse_dataset_spec(d) for d in datasets]
    if not workdirs or not specs:
        raise ExperimentError("cross_dataset needs --workdirs and --datasets")
    cells = []
    for name, run_dir in workdirs.items():
        params_file = workdir.default_params(run_dir) if params == "auto" else params
        for dataset, dataset_config, split in specs:
            column = dataset + (f"/{dataset_config}" if dataset_config else "")
            r = evaluate.evaluate_workdir(
                run_dir,
                dataset=dataset,
                dataset_config=dataset_config,
                split=split,
                data_dir=data_dir,
                manual_dir=manual_dirs.get(dataset),
                params_file=params_file,
                out=os.path.join(out, "evals", f"{name}__{evaluate.safe_name(column)}"),
            )
            cells.append(
                {
                    "model": name,
                    "workdir": os.path.abspath(run_dir),
                    "trained_on": r["trained_on"]["dataset"],
                    "trained_on_config": r["trained_on"]["dataset_config"],
                    "column": column,
                    "dataset": dataset,
                    "dataset_config": r["dataset_config"],
                    "split": r["split"],
                    "within": dataset == r["trained_on"]["dataset"],
                    "params_file": params_file,
                    "num_examples": r["num_examples"],
                    "accuracy": r["accuracy"],
                    "mean_class_accuracy": r["mean_class_accuracy"],
                    "macro_f1": r["macro_f1"],
                    "notes": r["notes"],
                }
            )
    result = {
        "models": list(workdirs),
        "columns": list(dict.fromkeys(c["column"] for c in cells)),
        "cells": cells,
    }
    reports.write_report(out, workdir.CROSS_DATASET_REPORT, result, markdown(result), csv(result))
    return result


def markdown(result):
    by = {(c["model"], c["column"]): c for c in result["cells"]}
    lines = [
        "# Cross-database evaluation: accuracy (%), rows trained on, columns tested on",
        "",
        "\\* the model's own training database, on its held-out test split; other cells use "
        "the split no run has seen ("
        + ", ".join(f"{k} {v}" for k, v in evaluate.DEFAULT_SPLITS.items())
        + ").",
        "",
    ]
    body = []
    for model in result["models"]:
        first = next(c for c in result["cells"] if c["model"] == model)
        trained = first["trained_on"] + (
            f"/{first['trained_on_config']}" if first["trained_on_config"] else ""
        )
        row = [f"{model} ({trained})"]
        for column in result["columns"]:
            c = by[(model, column)]
            row.append(reports.pct(c["accuracy"]) + ("\\*" if c["within"] else ""))
        body.append(row)
    headers = ["trained on \\ tested on", *result["columns"]]
    lines += reports.markdown_table(headers, body, ["---"] + ["---:"] * len(result["columns"]))
    lines += ["", "## Every cell", ""]
    detail = [
        [
            c["model"],
            c["column"],
            c["split"],
            c["num_examples"],
            reports.pct(c["accuracy"]),
            reports.pct(c["mean_class_accuracy"]),
            reports.pct(c["macro_f1"]),
            c["params_file"],
        ]
        for c in result["cells"]
    ]
    headers = [
        "model",
        "tested on",
        "split",
        "examples",
        "accuracy (%)",
        "mean class acc. (%)",
        "macro F1 (%)",
        "parameters file",
    ]
    lines += reports.markdown_table(
        headers, detail, ["---", "---", "---", "---:", "---:", "---:", "---:", "---"]
    )
    return "\n".join(lines) + "\n"


def csv(result):
    keys = [
        "model",
        "trained_on",
        "trained_on_config",
        "dataset",
        "dataset_config",
        "split",
        "within",
        "num_examples",
        "accuracy",
        "mean_class_accuracy",
        "macro_f1",
        "params_file",
        "workdir",
    ]
    return reports.csv_records(keys, result["cells"])


# ----------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("workdirs", None, "NAME=WORKDIR,... trained runs.")
    flags.DEFINE_list("datasets", None, "NAME[/CONFIG][:SPLIT],... to test on.")
    flags.DEFINE_string("out", None, "Output dir.")
    flags.DEFINE_string(
        "params", "auto", "auto (each run's default: best_params.npz if any), or a file name."
    )
    flags.DEFINE_string("data_dir", None, "tfds data dir (default: each run's).")
    flags.DEFINE_list("manual_dirs", None, "NAME=DIR,... to build datasets.")


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.out:
        raise cli.CommandError("cross_dataset needs --out")
    result = cross_dataset(
        parse_mapping(FLAGS.workdirs, "workdirs"),
        FLAGS.datasets or [],
        FLAGS.out,
        FLAGS.params,
        FLAGS.data_dir,
        parse_mapping(FLAGS.manual_dirs, "manual_dirs"),
    )
    print(markdown(result))
    stem = os.path.join(FLAGS.out, workdir.CROSS_DATASET_REPORT)
    print(f"wrote {stem}.md, .csv and .json")


def start():
    """Runs the command on sys.argv once `define_flags` has run."""
    cli.run(main, "experiments cross_dataset")


if __name__ == "__main__":
    define_flags()
    start()
