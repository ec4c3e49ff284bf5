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

import itertools
import os
import sys

from absl import flags, logging

from vit_se import cli, config_checks, evaluate, kfold, reports, seeds, train, workdir
from vit_se.datasets import registry
from vit_se.experiments import ExperimentError
from vit_se.folds import reported as reported_over_folds

VARIANTS = {"vit": ("ViT", False), "vit_se": ("ViT+SE", True)}


# ----------------------------------------------------------------------------------------------
# Running the variants.


def ablation(
    config,
    out_dir,
    intermediate_config=None,
    folds=None,
    select="best",
    variants=("vit", "vit_se"),
    seed_list=None,
):
    """Trains every variant (resuming finished ones), returns the rows and writes the tables.

    `seed_list`: run every variant once per seed (in <variant>/seed{s}) and add one row per
    variant with the mean ± sample std over the seeds.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ExperimentError(f"--variants: unknown {unknown}; expected {list(VARIANTS)}")
    if select not in ("best", "final"):
        raise ExperimentError(f"--select: expected best or final, got {select!r}")
    is_kfold = config.fold is not None
    # Values first, for every stage: a mistake in the second stage must not wait for the first.
    for stage in (config, intermediate_config):
        if stage is not None:
            config_checks.check_values(stage)
    stages = [None] if intermediate_config is None else [None, intermediate_config]
    rows = []
    for inter, variant, seed in itertools.product(stages, variants, seed_list or [None]):
        label, use_se = VARIANTS[variant]
        cfg = config.copy_and_resolve_references()
        cfg.model.use_se = use_se
        if seed is not None:
            cfg.seed = seed
        key = variant
        inter_desc = "none"
        if inter is not None:
            icfg = inter.copy_and_resolve_references()
            icfg.model = cfg.model.copy_and_resolve_references()
            icfg.seed = cfg.seed
            iwork = _in_seed(os.path.join(out_dir, f"intermediate_{variant}"), seed)
            logging.info("Ablation %s: intermediate stage on %s in %s", label, icfg.dataset, iwork)
            train.train_and_evaluate(config_checks.prepare(icfg, iwork), iwork)
            cfg.init_from = iwork
            cfg.pretrained_path = None
            key = f"{variant}_{icfg.dataset}"
            inter_desc = registry.TITLES.get(icfg.dataset, icfg.dataset)
        run_dir = _in_seed(os.path.join(out_dir, key), seed)
        logging.info("Ablation %s (intermediate: %s) in %s", label, inter_desc, run_dir)
        if is_kfold:
            kfold.run_folds(cfg, run_dir, folds)
            row = reported_over_folds(run_dir)
        else:
            train.train_and_evaluate(config_checks.prepare(cfg, run_dir), run_dir)
            row = evaluate.reported(cfg, run_dir, select)
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
    if seed_list:
        rows += _over_seeds(rows)
    result = {
        "config": {
            "dataset": config.dataset,
            "dataset_config": config.dataset_config,
            "model": config.model.name,
            "se_reduction": config.model.se_reduction,
            "seed": list(seed_list) if seed_list else config.seed,
            "image_size": config.image_size,
        },
        "rows": rows,
    }
    reports.write_report(out_dir, workdir.ABLATION_REPORT, result, markdown(result), csv(result))
    return result


def _in_seed(run_dir, seed):
    return run_dir if seed is None else workdir.seed_dir(run_dir, seed)


def _over_seeds(rows):
    """One row per (variant, intermediate stage): mean ± sample std over its seeds' rows."""
    out = []
    for key in dict.fromkeys((r["model"], r["intermediate"]) for r in rows):
        group = [r for r in rows if (r["model"], r["intermediate"]) == key]
        s = seeds.summary(group)
        out.append(
            {
                **group[0],
                "workdir": os.path.dirname(group[0]["workdir"]),
                "seed": f"mean ± std over {len(group)} seeds",
                **{m: s[m]["mean"] for m in seeds.METRICS},
                **{f"{m}_std": s[m]["std"] for m in seeds.METRICS},
                "selection": f"{group[0]['selection']}; mean ± sample std over seeds "
                + ", ".join(str(r["seed"]) for r in group),
            }
        )
    return out


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


def _cell(row, metric):
    """'87.22', or '87.22 ± 0.31' where the row is a mean (over folds or seeds)."""
    std = row.get(f"{metric}_std")
    if std is None:
        return reports.pct(row[metric])
    return f"{reports.pct(row[metric])} ± {reports.pct(std)}"


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
            _cell(r, "accuracy"),
            _cell(r, "mean_class_accuracy"),
            _cell(r, "macro_f1"),
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
        "mean_class_accuracy_std",
        "macro_f1",
        "macro_f1_std",
        "params",
        "steps",
        "seed",
        "batch_size",
        "selection",
        "workdir",
    ]
    # A single run has no spread; a row over folds has accuracy_std only.
    rows = [{"mean_class_accuracy_std": None, "macro_f1_std": None, **r} for r in result["rows"]]
    return reports.csv_records(keys, rows)


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
    cli.define_verbose_flag()
    flags.DEFINE_list(
        "seeds", None, "Run every variant once per seed (e.g. 0,1,2) and add mean ± std rows."
    )


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None or not FLAGS.workdir:
        raise cli.CommandError("ablation needs --config and --workdir")
    if "mae" in (FLAGS.config.get("task"), getattr(FLAGS.intermediate_config, "task", None)):
        raise cli.CommandError(
            "ablation compares classifiers: a pretraining config (task 'mae') is not one; "
            "pretrain with python -m vit_se.main, then pass --config.init_from"
        )
    folds = [int(k) for k in FLAGS.folds] if FLAGS.folds else None
    result = ablation(
        FLAGS.config,
        FLAGS.workdir,
        FLAGS.intermediate_config,
        folds,
        FLAGS.select,
        tuple(FLAGS.variants),
        seeds.parse(FLAGS.seeds) if FLAGS.seeds else None,
    )
    print(markdown(result))
    stem = os.path.join(FLAGS.workdir, workdir.ABLATION_REPORT)
    print(f"wrote {stem}.md, .csv and .json")


def start():
    """Runs the command on sys.argv once `define_flags` has run."""
    sys.argv = cli.resolve_config_paths(sys.argv, CONFIG_FLAGS, "experiments ablation")
    cli.run(main, "experiments ablation")


if __name__ == "__main__":
    define_flags()
    start()
