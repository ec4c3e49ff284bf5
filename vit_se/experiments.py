"""The paper's result grids, one command each: the SE ablation and the cross-database matrix.

Ablation, ViT vs ViT+SE with the same seed and budget (the configs differ only in
`model.use_se`), optionally with and without an intermediate training stage (FER-2013 before SFEW):

  python -m vit_se.experiments ablation --config=configs/sfew.py --workdir=$W/ablation_sfew \
      --config.pretrained_path=$CKPT/ViT-B_16-224.npz --config.manual_dir=$SFEW \
      --intermediate_config=configs/fer2013.py \
      --intermediate_config.pretrained_path=$CKPT/ViT-B_16-224.npz \
      --intermediate_config.manual_dir=$FER

Runs WORKDIR/vit and WORKDIR/vit_se, and with an intermediate config also
WORKDIR/intermediate_{vit,vit_se} (the intermediate dataset, with the same model as the variant)
followed by WORKDIR/{vit,vit_se}_<dataset> (the target config with `init_from` the stage-1 run).
A k-fold config (CK+, JAFFE) runs every variant through `vit_se.kfold` (`--folds` limits them)
and reports mean ± std over folds. Writes WORKDIR/ablation.{md,csv,json}.

Selection, stated in each row: k-fold runs report each fold's final step; runs with a val_split
and a test_split report the checkpoint selected on val_split (best_params.npz) evaluated on
test_split (`--select=final` reports the final step instead); runs without a test split report
the final step on val_split.

Cross-database matrix, every model on every database through `vit_se.evaluate`:

  python -m vit_se.experiments cross_dataset --out=$W/cross \
      --workdirs=raf_db=$W/raf_db,sfew=$W/sfew,fer2013=$W/fer2013 \
      --datasets=raf_db,sfew,fer2013,ck_plus/7class,jaffe/face224 \
      --manual_dirs=ck_plus=$CKP,jaffe=$JAFFE

A dataset entry is NAME[/CONFIG][:SPLIT]. On the model's own training database the run's held-out
test split is used (marked * in the table); elsewhere `evaluate.DEFAULT_SPLITS` (RAF-DB test,
SFEW validation, FER-2013 private_test, CK+/JAFFE every fold). `--params=auto` takes the
val-selected best_params.npz where a run has one, params.npz otherwise. Writes
OUT/cross_dataset.{md,csv,json} and each cell's evaluation under OUT/evals/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

VARIANTS = {"vit": ("ViT", False), "vit_se": ("ViT+SE", True)}
DATASET_TITLES = {
    "fer2013": "FER-2013",
    "raf_db": "RAF-DB",
    "sfew": "SFEW",
    "ck_plus": "CK+",
    "jaffe": "JAFFE",
}


class ExperimentError(ValueError):
    """A grid that cannot run; one line saying why."""


def _pct(x):
    return f"{100 * x:.2f}"


def _read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def count_params(npz_path):
    with tf.io.gfile.GFile(npz_path, "rb") as f, np.load(f) as z:
        return int(sum(z[k].size for k in z.files))


def _table(headers, rows, align=None):
    align = align or ["---"] * len(headers)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _csv(headers, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows(rows)
    return buf.getvalue()


def _write(path, text):
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------------------------
# Ablation.


def _report_single(cfg, workdir, select):
    """Metrics of one finished (non-k-fold) run under the stated selection rule."""
    from vit_se import evaluate, train

    info = _read_json(os.path.join(workdir, "export.json"))
    best = os.path.join(workdir, train.BEST_PARAMS)
    if cfg.get("test_split") and cfg.get("val_split") and select == "best":
        if not tf.io.gfile.exists(best):
            raise ExperimentError(f"{workdir}: no {train.BEST_PARAMS} to report")
        m = evaluate.evaluate_workdir(workdir, split=cfg.test_split, params_file=train.BEST_PARAMS)
        rule = f"best on {cfg.val_split} (step {info['best_step']}), reported on {cfg.test_split}"
        split = cfg.test_split
    elif cfg.get("test_split"):
        m = info["metrics"]["test"]
        rule = f"final step, reported on {cfg.test_split}"
        split = cfg.test_split
    else:
        m = info["metrics"]["val"]
        rule = f"final step, reported on {cfg.val_split} (the run has no test split)"
        split = cfg.val_split
    return {
        "split": split,
        "num_examples": m["num_examples"],
        "accuracy": m["accuracy"],
        "accuracy_std": None,
        "mean_class_accuracy": m["mean_class_accuracy"],
        "macro_f1": m["macro_f1"],
        "steps": info["step"],
        "params": count_params(os.path.join(workdir, "params.npz")),
        "selection": rule,
    }


def _report_kfold(workdir):
    from vit_se import kfold

    agg = kfold.aggregate(workdir)
    s = agg["summary"]
    first = kfold.fold_dir(workdir, agg["folds_done"][0])
    n_done = len(agg["folds_done"])
    return {
        "split": f"{n_done} of {agg['num_folds']} folds (held-out fold)",
        "num_examples": agg["pooled"]["num_examples"],
        "accuracy": s["accuracy"]["mean"],
        "accuracy_std": s["accuracy"]["std"],
        "mean_class_accuracy": s["mean_class_accuracy"]["mean"],
        "macro_f1": s["macro_f1"]["mean"],
        "steps": agg["folds"][0]["step"],
        "params": count_params(os.path.join(first, "params.npz")),
        "selection": "final step of each fold; mean ± sample std over folds",
    }


def ablation(
    config,
    workdir,
    intermediate_config=None,
    folds=None,
    select="best",
    variants=("vit", "vit_se"),
):
    """Trains every variant (resuming finished ones), returns the rows and writes the tables."""
    from vit_se import kfold, train

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ExperimentError(f"--variants: unknown {unknown}; expected {list(VARIANTS)}")
    if select not in ("best", "final"):
        raise ExperimentError(f"--select: expected best or final, got {select!r}")
    is_kfold = config.get("fold") is not None
    stages = [None] if intermediate_config is None else [None, intermediate_config]
    rows = []
    for inter in stages:
        for variant in variants:
            label, use_se = VARIANTS[variant]
            cfg = config.copy_and_resolve_references()
            cfg.model.use_se = use_se
            key = variant
            inter_desc = "none"
            if inter is not None:
                icfg = inter.copy_and_resolve_references()
                icfg.model = cfg.model.copy_and_resolve_references()
                icfg.seed = cfg.seed
                iwork = os.path.join(workdir, f"intermediate_{variant}")
                logging.info(
                    "Ablation %s: intermediate stage on %s in %s", label, icfg.dataset, iwork
                )
                train.train_and_evaluate(icfg, iwork)
                cfg.init_from = iwork
                cfg.pretrained_path = None
                key = f"{variant}_{icfg.dataset}"
                inter_desc = DATASET_TITLES.get(icfg.dataset, icfg.dataset)
            run_dir = os.path.join(workdir, key)
            logging.info("Ablation %s (intermediate: %s) in %s", label, inter_desc, run_dir)
            if is_kfold:
                kfold.run_folds(cfg, run_dir, folds)
                row = _report_kfold(run_dir)
            else:
                train.train_and_evaluate(cfg, run_dir)
                row = _report_single(cfg, run_dir, select)
            rows.append(
                {
                    "model": label,
                    "use_se": use_se,
                    "intermediate": inter_desc,
                    "dataset": cfg.dataset,
                    "dataset_config": cfg.get("dataset_config"),
                    "workdir": os.path.abspath(run_dir),
                    "seed": cfg.seed,
                    "batch_size": cfg.batch_size,
                    **row,
                }
            )
    result = {
        "config": {
            "dataset": config.dataset,
            "dataset_config": config.get("dataset_config"),
            "model": config.model.name,
            "se_reduction": config.model.se_reduction,
            "seed": config.seed,
            "image_size": config.image_size,
        },
        "rows": rows,
    }
    tf.io.gfile.makedirs(workdir)
    train._write_json(os.path.join(workdir, "ablation.json"), result)
    _write(os.path.join(workdir, "ablation.md"), ablation_markdown(result))
    _write(os.path.join(workdir, "ablation.csv"), ablation_csv(result))
    return result


ABLATION_HEADERS = [
    "model",
    "intermediate training",
    "dataset",
    "reported on",
    "examples",
    "accuracy (%)",
    "mean class acc. (%)",
    "macro F1 (%)",
    "parameters",
    "steps",
    "seed",
    "selection",
]


def _acc_cell(row):
    if row["accuracy_std"] is None:
        return _pct(row["accuracy"])
    return f"{_pct(row['accuracy'])} ± {_pct(row['accuracy_std'])}"


def ablation_markdown(result):
    c = result["config"]
    title = DATASET_TITLES.get(c["dataset"], c["dataset"])
    lines = [
        f"# Ablation on {title}: ViT vs ViT+SE (ViT-{c['model']}, SE r = {c['se_reduction']}, "
        f"{c['image_size']} px, seed {c['seed']})",
        "",
        "Both variants share the config, seed and training budget; they differ only in "
        "`model.use_se`.",
        "",
    ]
    body = [
        [
            r["model"],
            r["intermediate"],
            f"{r['dataset']}/{r['dataset_config']}" if r["dataset_config"] else r["dataset"],
            r["split"],
            r["num_examples"],
            _acc_cell(r),
            _pct(r["mean_class_accuracy"]),
            _pct(r["macro_f1"]),
            f"{r['params']:,}",
            r["steps"],
            r["seed"],
            r["selection"],
        ]
        for r in result["rows"]
    ]
    align = [
        "---",
        "---",
        "---",
        "---",
        "---:",
        "---:",
        "---:",
        "---:",
        "---:",
        "---:",
        "---:",
        "---",
    ]
    lines += _table(ABLATION_HEADERS, body, align)
    return "\n".join(lines) + "\n"


def ablation_csv(result):
    keys = [
        "model",
        "use_se",
        "intermediate",
        "dataset",
        "dataset_config",
        "split",
        "num_examples",
        "accuracy",
        "accuracy_std",
        "mean_class_accuracy",
        "macro_f1",
        "params",
        "steps",
        "seed",
        "batch_size",
        "selection",
        "workdir",
    ]
    return _csv(keys, [[r[k] if r[k] is not None else "" for k in keys] for r in result["rows"]])


# ----------------------------------------------------------------------------------------------
# Cross-database matrix.


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
    from vit_se import evaluate, train

    manual_dirs = manual_dirs or {}
    specs = [parse_dataset_spec(d) for d in datasets]
    if not workdirs or not specs:
        raise ExperimentError("cross_dataset needs --workdirs and --datasets")
    cells = []
    for name, workdir in workdirs.items():
        params_file = params
        if params == "auto":
            has_best = tf.io.gfile.exists(os.path.join(workdir, train.BEST_PARAMS))
            params_file = train.BEST_PARAMS if has_best else "params.npz"
        for dataset, dataset_config, split in specs:
            column = dataset + (f"/{dataset_config}" if dataset_config else "")
            r = evaluate.evaluate_workdir(
                workdir,
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
                    "workdir": os.path.abspath(workdir),
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
    tf.io.gfile.makedirs(out)
    train._write_json(os.path.join(out, "cross_dataset.json"), result)
    _write(os.path.join(out, "cross_dataset.md"), cross_markdown(result))
    _write(os.path.join(out, "cross_dataset.csv"), cross_csv(result))
    return result


def cross_markdown(result):
    by = {(c["model"], c["column"]): c for c in result["cells"]}
    lines = [
        "# Cross-database evaluation: accuracy (%), rows trained on, columns tested on",
        "",
        "\\* the model's own training database, on its held-out test split; other cells use "
        "the split no run has seen (" + ", ".join(f"{k} {v}" for k, v in _default_splits()) + ").",
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
            row.append(_pct(c["accuracy"]) + ("\\*" if c["within"] else ""))
        body.append(row)
    headers = ["trained on \\ tested on", *result["columns"]]
    lines += _table(headers, body, ["---"] + ["---:"] * len(result["columns"]))
    lines += ["", "## Every cell", ""]
    detail = [
        [
            c["model"],
            c["column"],
            c["split"],
            c["num_examples"],
            _pct(c["accuracy"]),
            _pct(c["mean_class_accuracy"]),
            _pct(c["macro_f1"]),
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
    lines += _table(headers, detail, ["---", "---", "---", "---:", "---:", "---:", "---:", "---"])
    return "\n".join(lines) + "\n"


def _default_splits():
    from vit_se import evaluate

    return evaluate.DEFAULT_SPLITS.items()


def cross_csv(result):
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
    return _csv(keys, [[c[k] if c[k] is not None else "" for k in keys] for c in result["cells"]])


# ----------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS
COMMANDS = ("ablation", "cross_dataset")


def define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ablation: training config.", lock_config=True)
    config_flags.DEFINE_config_file(
        "intermediate_config",
        None,
        "ablation: an intermediate stage (e.g. configs/fer2013.py) run before the config.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "ablation: one run per variant below this dir.")
    flags.DEFINE_list("folds", None, "ablation with a k-fold config: folds to run (default all).")
    flags.DEFINE_enum("select", "best", ["best", "final"], "ablation: reported checkpoint.")
    flags.DEFINE_list("variants", ["vit", "vit_se"], "ablation: variants to run.")
    flags.DEFINE_list("workdirs", None, "cross_dataset: NAME=WORKDIR,... trained runs.")
    flags.DEFINE_list("datasets", None, "cross_dataset: NAME[/CONFIG][:SPLIT],... to test on.")
    flags.DEFINE_string("out", None, "cross_dataset: output dir.")
    flags.DEFINE_string("params", "auto", "cross_dataset: auto, params.npz or best_params.npz.")
    flags.DEFINE_string("data_dir", None, "cross_dataset: tfds data dir (default: each run's).")
    flags.DEFINE_list("manual_dirs", None, "cross_dataset: NAME=DIR,... to build datasets.")


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m vit_se.experiments {{{'|'.join(COMMANDS)}}} ...")
    from vit_se import evaluate, kfold, train

    logging.get_absl_handler().addFilter(kfold.QuietOrbax())
    tf.config.set_visible_devices([], "GPU")
    try:
        if argv[1] == "ablation":
            if FLAGS.config is None or not FLAGS.workdir:
                raise app.UsageError("ablation needs --config and --workdir")
            folds = [int(k) for k in FLAGS.folds] if FLAGS.folds else None
            result = ablation(
                FLAGS.config,
                FLAGS.workdir,
                FLAGS.intermediate_config,
                folds,
                FLAGS.select,
                tuple(FLAGS.variants),
            )
            print(ablation_markdown(result))
            print(f"wrote {FLAGS.workdir}/ablation.md, ablation.csv, ablation.json")
        else:
            if not FLAGS.out:
                raise app.UsageError("cross_dataset needs --out")
            result = cross_dataset(
                parse_mapping(FLAGS.workdirs, "workdirs"),
                FLAGS.datasets or [],
                FLAGS.out,
                FLAGS.params,
                FLAGS.data_dir,
                parse_mapping(FLAGS.manual_dirs, "manual_dirs"),
            )
            print(cross_markdown(result))
            print(f"wrote {FLAGS.out}/cross_dataset.md, cross_dataset.csv, cross_dataset.json")
    except (
        ExperimentError,
        evaluate.EvaluationError,
        kfold.KFoldError,
        train.ConfigError,
        FileNotFoundError,
    ) as e:
        sys.exit(f"vit_se.experiments: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
