"""Subject-independent k-fold cross-validation for CK+ and JAFFE: run folds, then aggregate.

  python -m vit_se.kfold --config=configs/ck_plus.py --workdir=$W/ck_plus \
      --config.pretrained_path=$CKPT/ViT-B_16-224.npz --config.manual_dir=$CKP
  # or one fold per machine, then combine whatever W/fold{k} exist:
  python -m vit_se.kfold --config=configs/ck_plus.py --workdir=$W/ck_plus --folds=3 ...
  python -m vit_se.kfold --workdir=$W/ck_plus --aggregate_only

Fold k trains `vit_se.train.train_and_evaluate` in WORKDIR/fold{k} on the other folds' subjects
(the builder's fold files, `fold_splits(k)`) and evaluates the held-out fold as `test`. Selection
rule: each fold reports its final training step's model; the held-out fold is never used to
select a checkpoint or to stop early. Runs resume: a fold already finished with this config is
kept as it is (nothing retrained, re-evaluated or rewritten); one of another config refuses.

The subject check and the aggregate (WORKDIR/kfold.{json,md,csv}, kfold_confusion.png, also
printed) are `vit_se.folds`'.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from vit_se import cli, config_checks, folds, seeds, train, workdir


def _fold_config(config, k):
    config = config.copy_and_resolve_references()
    config.fold = k
    return config


# ----------------------------------------------------------------------------------------------
# Running folds.


def check_kfold_config(config):
    if config.fold is None:
        raise folds.KFoldError(
            "the config names no fold: use a k-fold config (configs/ck_plus.py, configs/jaffe.py)"
        )
    if config.val_split:
        # Allowed (e.g. a split carved from the training folds), but it only picks
        # best_params.npz, which the aggregate does not use.
        logging.warning(
            "config.val_split %r selects best_params.npz in each fold; the aggregate reports "
            "the final step's model",
            config.val_split,
        )


def run_folds(config, cv_dir, fold_ids=None):
    """Trains (or resumes) the given folds in sequence; returns {k: final test metrics}."""
    check_kfold_config(config)
    num_folds = int(config.num_folds)
    fold_ids = list(range(num_folds)) if fold_ids is None else list(fold_ids)
    bad = [k for k in fold_ids if not 0 <= k < num_folds]
    if bad:
        raise folds.KFoldError(f"--folds: {bad} outside 0..{num_folds - 1}")
    # Every fold's config before the first trains (a fold of another config refuses here).
    runs = {
        k: config_checks.prepare(_fold_config(config, k), workdir.fold_dir(cv_dir, k))
        for k in fold_ids
    }
    results = {}
    for k, cfg in runs.items():
        run_dir = workdir.fold_dir(cv_dir, k)
        if _finished(cfg, run_dir):
            logging.info("Fold %d: finished in %s with this config; kept as it is", k, run_dir)
            results[k] = workdir.read_export_info(run_dir).metrics
            continue
        record = folds.subjects_of_fold(cfg)
        logging.info(
            "Fold %d/%d: %d train subjects, %d test subjects (%s), none shared",
            k,
            num_folds,
            len(record["train_subjects"]),
            len(record["test_subjects"]),
            ", ".join(record["test_subjects"]),
        )
        results[k] = train.train_and_evaluate(cfg, run_dir)
        workdir.write_json(os.path.join(run_dir, workdir.SUBJECTS), record)
    return results


def _finished(config, run_dir):
    """An exported fold trained with exactly this config (training length included): rerunning
    it would only rewrite its records."""
    if not workdir.exists(os.path.join(run_dir, workdir.EXPORT_INFO)):
        return False
    saved = workdir.read_run_config(run_dir).get("config", {})
    same_length = all(saved.get(k) == config[k] for k in ("num_train_steps", "num_epochs"))
    return same_length and not config_checks.differences(saved, config)


# ----------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "k-fold training config.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Cross-validation dir; fold k trains in WORKDIR/fold{k}.")
    flags.DEFINE_list("folds", None, "Folds to run, e.g. 0,1 (default: all).")
    flags.DEFINE_bool("aggregate_only", False, "Only combine the finished WORKDIR/fold{k}.")
    cli.define_verbose_flag()
    flags.DEFINE_list(
        "seeds",
        None,
        "Cross-validate once per seed (e.g. 0,1,2) in WORKDIR/seed{s}/fold{k}; report each seed's "
        "mean over folds and the mean ± sample std over seeds in WORKDIR/seeds.{json,md,csv}.",
    )


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        raise cli.CommandError("--workdir is required")
    if not FLAGS.aggregate_only and FLAGS.config is None:
        raise cli.CommandError("--config is required unless --aggregate_only")
    if FLAGS.config is not None and FLAGS.config.get("task") == "mae":
        raise cli.CommandError(
            "--config is a pretraining config (task 'mae'): k-fold cross-validates a classifier; "
            "pretrain with python -m vit_se.main, then run k-fold with --config.init_from"
        )
    fold_ids = [int(k) for k in FLAGS.folds] if FLAGS.folds else None
    num_folds = FLAGS.config.num_folds if FLAGS.config is not None else None
    if FLAGS.seeds:
        _seeds_main(seeds.parse(FLAGS.seeds), fold_ids, num_folds)
        return
    if not FLAGS.aggregate_only:
        run_folds(FLAGS.config, FLAGS.workdir, fold_ids)
    result = folds.aggregate(FLAGS.workdir, num_folds)
    print(folds.markdown(result))
    stem = os.path.join(FLAGS.workdir, workdir.KFOLD_REPORT)
    print(f"wrote {stem}.json, .md, .csv and {workdir.KFOLD_CONFUSION}")


def _seeds_main(seed_list, fold_ids, num_folds):
    rows = []
    for seed in seed_list:
        cv_dir = workdir.seed_dir(FLAGS.workdir, seed)
        if not FLAGS.aggregate_only:
            run_folds(seeds.with_seed(FLAGS.config, seed), cv_dir, fold_ids)
        agg = folds.aggregate(cv_dir, num_folds)
        rows.append({"seed": seed, "workdir": os.path.abspath(cv_dir), **folds.reported(cv_dir)})
    title = f"{agg['dataset']} ({agg['dataset_config']}) cross-validation, {len(rows)} seeds"
    rule = rows[0]["selection"]
    seeds.write(FLAGS.workdir, title, rows, rule)
    print(seeds.markdown(title, rows, rule))
    print(f"wrote {seeds.stem(FLAGS.workdir)}.md, .csv and .json")


if __name__ == "__main__":
    define_flags()
    sys.argv = cli.resolve_config_paths(sys.argv, command="kfold")
    cli.run(main, "kfold")
