"""The SE ablation: ViT vs ViT+SE with the same seed and budget (the configs differ only in
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
and reports mean ± std over folds. Writes WORKDIR/ablation.{json,md,csv}.

Selection, stated in each row: k-fold runs report each fold's final step; runs with a val_split
and a test_split report the checkpoint selected on val_split (best_params.npz) evaluated on
test_split (`--select=final` reports the final step instead); runs without a test split report
the final step on val_split.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from vit_se import cli, evaluate, kfold, reports, train, workdir
from vit_se.datasets import registry
from vit_se.experiments import ExperimentError

VARIANTS = {"vit": ("ViT", False), "vit_se": ("ViT+SE", True)}


# ----------------------------------------------------------------------------------------------
# Running the variants.


def _report_single(cfg, run_dir, select):
    """Metrics of one finished (non-k-fold) run under the stated selection rule."""
    info = workdir.read_export_info(run_dir)
    best = os.path.join(run_dir, workdir.BEST_PARAMS)
    if cfg.test_split and cfg.val_split and select == "best":
        if not workdir.exists(best):
            raise ExperimentError(f"{run_dir}: no {workdir.BEST_PARAMS} to report")
        m = evaluate.evaluate_workdir(
            run_dir, split=cfg.test_split, params_file=workdir.BEST_PARAMS
        )
        rule = f"best on {cfg.val_split} (step {info.best_step}), reported on {cfg.test_split}"
        split = cfg.test_split
    elif cfg.test_split:
        m = info.metrics["test"]
        rule = f"final step, reported on {cfg.test_split}"
        split = cfg.test_split
    else:
        m = info.metrics["val"]
        rule = f"final step, reported on {cfg.val_split} (the run has no test split)"
        split = cfg.val_split
    return {
        "split": split,
        "num_examples": m["num_examples"],
        "accuracy": m["accuracy"],
        "accuracy_std": None,
        "mean_class_accuracy": m["mean_class_accuracy"],
        "macro_f1": m["macro_f1"],
        "steps": info.step,
        "params": reports.count_params(os.path.join(run_dir, workdir.PARAMS)),
        "selection": rule,
    }


def _report_kfold(cv_dir):
    agg = kfold.aggregate(cv_dir)
    s = agg["summary"]
    first = workdir.fold_dir(cv_dir, agg["folds_done"][0])
    n_done = len(agg["folds_done"])
    return {
        "split": f"{n_done} of {agg['num_folds']} folds (held-out fold)",
        "num_examples": agg["pooled"]["num_examples"],
        "accuracy": s["accuracy"]["mean"],
        "accuracy_std": s["accuracy"]["std"],
        "mean_class_accuracy": s["mean_class_accuracy"]["mean"],
        "macro_f1": s["macro_f1"]["mean"],
        "steps": agg["folds"][0]["step"],
        "params": reports.count_params(os.path.join(first, workdir.PARAMS)),
        "selection": "final step of each fold; mean ± sample std over folds",
    }


def ablation(
    config,
    out_dir,
    intermediate_config=None,
    folds=None,
    select="best",
    variants=("vit", "vit_se"),
):
    """Trains every variant (resuming finished ones), returns the rows and writes the tables."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ExperimentError(f"--variants: unknown {unknown}; expected {list(VARIANTS)}")
    if select not in ("best", "final"):
        raise ExperimentError(f"--select: expected best or final, got {select!r}")
    is_kfold = config.fold is not None
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
                iwork = os.path.join(out_dir, f"intermediate_{variant}")
                logging.info(
                    "Ablation %s: intermediate stage on %s in %s", label, icfg.dataset, iwork
                )
                train.train_and_evaluate(icfg, iwork)
                cfg.init_from = iwork
                cfg.pretrained_path = None
                key = f"{variant}_{icfg.dataset}"
                inter_desc = registry.TITLES.get(icfg.dataset, icfg.dataset)
            run_dir = os.path.join(out_dir, key)
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
                    "dataset_config": cfg.dataset_config,
                    "workdir": os.path.abspath(run_dir),
                    "seed": cfg.seed,
                    "batch_size": cfg.batch_size,
                    **row,
                }
            )
    result = {
        "config": {
            "dataset": config.dataset,
            "dataset_config": config.dataset_config,
            "model": config.model.name,
            "se_reduction": config.model.se_reduction,
            "seed": config.seed,
            "image_size": config.image_size,
        },
        "rows": rows,
    }
    reports.write_report(out_dir, workdir.ABLATION_REPORT, result, markdown(result), csv(result))
    return result


# ----------------------------------------------------------------------------------------------
# Tables.


HEADERS = [
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
        return reports.pct(row["accuracy"])
    return f"{reports.pct(row['accuracy'])} ± {reports.pct(row['accuracy_std'])}"


def markdown(result):
    c = result["config"]
    title = registry.TITLES.get(c["dataset"], c["dataset"])
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
            reports.pct(r["mean_class_accuracy"]),
            reports.pct(r["macro_f1"]),
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
    lines += reports.markdown_table(HEADERS, body, align)
    return "\n".join(lines) + "\n"


def csv(result):
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
    return reports.csv_records(keys, result["rows"])


# ----------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS
CONFIG_FLAGS = ("config", "intermediate_config")


def define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config.", lock_config=True)
    config_flags.DEFINE_config_file(
        "intermediate_config",
        None,
        "An intermediate stage (e.g. configs/fer2013.py) run before the config.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "One run per variant below this dir.")
    flags.DEFINE_list("folds", None, "With a k-fold config: folds to run (default all).")
    flags.DEFINE_enum("select", "best", ["best", "final"], "Reported checkpoint.")
    flags.DEFINE_list("variants", list(VARIANTS), "Variants to run.")


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None or not FLAGS.workdir:
        raise cli.CommandError("ablation needs --config and --workdir")
    folds = [int(k) for k in FLAGS.folds] if FLAGS.folds else None
    result = ablation(
        FLAGS.config,
        FLAGS.workdir,
        FLAGS.intermediate_config,
        folds,
        FLAGS.select,
        tuple(FLAGS.variants),
    )
    print(markdown(result))
    stem = os.path.join(FLAGS.workdir, workdir.ABLATION_REPORT)
    print(f"wrote {stem}.md, .csv and .json")


def run():
    define_flags()
    sys.argv = cli.resolve_config_paths(sys.argv, CONFIG_FLAGS)
    cli.run(main, "experiments ablation")


if __name__ == "__main__":
    run()
