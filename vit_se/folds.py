"""Subject-independent folds (CK+, JAFFE): the subject check, and the aggregate over folds.

Before a fold trains, the subjects (the built dataset's `subject_id` feature) of its train and
test splits are read and compared; a subject in both stops the run. The lists are kept in
WORKDIR/fold{k}/subjects.json, and the aggregation re-checks them, checks that test folds are
disjoint, and that the folds were trained with one config (apart from the fold, the paths and
logging).

Aggregate (WORKDIR/kfold.{json,md,csv} and kfold_confusion.png): per-fold table, mean and sample
standard deviation (n - 1) over folds of accuracy, mean class accuracy and macro F1, the pooled
metrics of the summed confusion matrix, and the subject check.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vit_se import config_checks, figures, metrics, reports, workdir
from vit_se.errors import Error

SUBJECT_FEATURE = "subject_id"
SELECTION_RULE = (
    "each fold reports its final training step's model (params.npz); the held-out fold is "
    "only evaluated, never used to select a checkpoint or to stop early"
)
# Config fields that may differ between the folds of one cross-validation.
PER_FOLD_FIELDS = ("fold", "train_split", "test_split", "data_dir", "manual_dir")


class KFoldError(Error, ValueError):
    """A cross-validation that cannot run or cannot be trusted; one line saying why."""


# ----------------------------------------------------------------------------------------------
# Subjects.


def split_subjects(builder, split):
    """The sorted subject ids of one split of a built dataset."""
    if SUBJECT_FEATURE not in builder.info.features:
        raise KFoldError(
            f"{builder.name} has no {SUBJECT_FEATURE!r} feature: subject independence cannot "
            "be checked"
        )
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: ex[SUBJECT_FEATURE])
    return sorted({s.decode() for s in ds.as_numpy_iterator()})


def check_subjects(builder, train_split, test_split):
    """{'train_subjects', 'test_subjects', 'overlap'} of one fold; raises on a shared subject."""
    train = split_subjects(builder, train_split)
    test = split_subjects(builder, test_split)
    overlap = sorted(set(train) & set(test))
    record = {
        "train_split": train_split,
        "test_split": test_split,
        "train_subjects": train,
        "test_subjects": test,
        "overlap": overlap,
    }
    if overlap:
        raise KFoldError(
            f"subjects {', '.join(overlap)} are in both {train_split!r} and {test_split!r}"
        )
    return record


def subjects_of_fold(config):
    """check_subjects on a fold config's dataset (built from its manual_dir if need be)."""
    from vit_se import train  # the trainer's builder, so the check reads what training reads

    return check_subjects(train.dataset_builder(config), config.train_split, config.test_split)


# ----------------------------------------------------------------------------------------------
# Aggregation.


def aggregate(cv_dir, num_folds=None, verify_dataset=True):
    """Combines every finished CV_DIR/fold{k}; writes kfold.{json,md,csv} and the PNG."""
    done = [
        k
        for k in workdir.folds_present(cv_dir)
        if workdir.exists(os.path.join(workdir.fold_dir(cv_dir, k), workdir.EXPORT_INFO))
    ]
    if not done:
        raise KFoldError(
            f"no finished fold under {cv_dir} (expected fold{{k}}/{workdir.EXPORT_INFO})"
        )
    configs = {k: workdir.read_run_config(workdir.fold_dir(cv_dir, k)) for k in done}
    first = configs[done[0]]["config"]
    for k in done[1:]:
        diff = config_checks.differences(first, configs[k]["config"], PER_FOLD_FIELDS)
        if diff:
            raise KFoldError(
                f"fold{k} was trained with another config than fold{done[0]}: {'; '.join(diff)}"
            )
    num_folds = int(num_folds or first.get("num_folds", 10))
    bad = [k for k in done if k >= num_folds]
    if bad:
        raise KFoldError(f"fold dirs {bad} are outside 0..{num_folds - 1}")

    rows, subjects, confusion, class_names = [], {}, None, None
    for k in done:
        info = workdir.read_export_info(workdir.fold_dir(cv_dir, k))
        test = info.metrics.get("test")
        if test is None:
            raise KFoldError(f"fold{k}/{workdir.EXPORT_INFO} has no test metrics")
        path = os.path.join(workdir.fold_dir(cv_dir, k), workdir.SUBJECTS)
        if verify_dataset or not workdir.exists(path):
            cfg = ml_collections.ConfigDict(configs[k]["config"])
            try:
                record = subjects_of_fold(cfg)
            except KFoldError:
                raise
            except Exception as e:  # the dataset may live on another machine
                if not workdir.exists(path):
                    raise KFoldError(
                        f"fold{k}: no {workdir.SUBJECTS} and the dataset cannot be read to check "
                        f"subjects ({type(e).__name__}: {e})"
                    ) from None
                logging.warning("fold%d: dataset not readable here; using %s", k, path)
                record = workdir.read_json(path)
        else:
            record = workdir.read_json(path)
        if record["overlap"]:
            raise KFoldError(f"fold{k}: subjects {record['overlap']} in both train and test")
        subjects[k] = record
        cm = np.asarray(test["confusion"], dtype=np.int64)
        confusion = cm if confusion is None else confusion + cm
        class_names = info.class_names
        rows.append(
            {
                "fold": k,
                "test_subjects": len(record["test_subjects"]),
                "num_examples": int(test["num_examples"]),
                "accuracy": float(test["accuracy"]),
                "mean_class_accuracy": float(test["mean_class_accuracy"]),
                "macro_f1": float(test["macro_f1"]),
                "step": int(info.step),
            }
        )

    seen = {}
    for k, record in subjects.items():
        for s in record["test_subjects"]:
            if s in seen:
                raise KFoldError(f"subject {s} is tested in fold{seen[s]} and fold{k}")
            seen[s] = k
    all_subjects = sorted(set(seen) | set(subjects[done[0]]["train_subjects"]))

    summary = {
        key: reports.mean_std([r[key] for r in rows])
        for key in ("accuracy", "mean_class_accuracy", "macro_f1")
    }
    pooled = metrics.from_confusion(confusion)
    model = first["model"]
    result = {
        "workdir": os.path.abspath(cv_dir),
        "dataset": first["dataset"],
        "dataset_config": first.get("dataset_config"),
        "model": reports.model_label(model),
        "num_folds": num_folds,
        "folds_done": done,
        "folds_missing": [k for k in range(num_folds) if k not in done],
        "selection_rule": SELECTION_RULE,
        "std": "sample standard deviation over folds (n - 1)",
        "folds": rows,
        "summary": summary,
        "pooled": {
            k: pooled[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1", "num_examples")
        },
        "class_names": class_names,
        "confusion": confusion.tolist(),
        "subject_check": {
            "feature": SUBJECT_FEATURE,
            "no_subject_in_train_and_test": True,
            "test_folds_disjoint": True,
            "subjects_tested": len(seen),
            "subjects_total": len(all_subjects),
            "per_fold": {str(k): subjects[k] for k in done},
        },
    }
    reports.write_report(cv_dir, workdir.KFOLD_REPORT, result, markdown(result), csv(result))
    title = (
        f"{result['dataset']}: {len(done)} of {num_folds} folds, summed confusion, accuracy "
        f"{reports.pct(summary['accuracy']['mean'])} ± {reports.pct(summary['accuracy']['std'])}%"
    )
    figures.save_confusion_png(
        confusion, class_names, os.path.join(cv_dir, workdir.KFOLD_CONFUSION), title
    )
    return result


def reported(cv_dir):
    """What a finished cross-validation reports: the mean (and std) over its folds."""
    agg = aggregate(cv_dir)
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


def markdown(result):
    s = result["summary"]
    check = result["subject_check"]
    done, total = len(result["folds_done"]), result["num_folds"]
    lines = [
        f"# {result['dataset']} ({result['dataset_config']}) {total}-fold cross-validation, "
        f"{result['model']}",
        "",
        f"Selection rule: {result['selection_rule']}.",
        "",
        f"Subjects: no subject is in both the train and the test split of any fold (checked on "
        f"the built dataset's `{check['feature']}` feature); test folds are disjoint; "
        f"{check['subjects_tested']} of {check['subjects_total']} subjects tested.",
        "",
    ]
    if result["folds_missing"]:
        lines += [
            f"**Partial: {done} of {total} folds** (missing {result['folds_missing']}).",
            "",
        ]
    keys = ("accuracy", "mean_class_accuracy", "macro_f1")
    body = [
        [r["fold"], r["test_subjects"], r["num_examples"]]
        + [reports.pct(r[k]) for k in keys]
        + [r["step"]]
        for r in result["folds"]
    ]
    n = sum(r["num_examples"] for r in result["folds"])
    body.append(
        ["**mean ± std**", check["subjects_tested"], n]
        + [f"**{reports.pct(s[k]['mean'])} ± {reports.pct(s[k]['std'])}**" for k in keys]
        + [""]
    )
    headers = [
        "fold",
        "test subjects",
        "test examples",
        "accuracy (%)",
        "mean class acc. (%)",
        "macro F1 (%)",
        "step",
    ]
    lines += reports.markdown_table(headers, body, ["---:"] * len(headers))
    p = result["pooled"]
    lines += [
        "",
        f"Pooled over folds (summed confusion matrix, {p['num_examples']} examples): accuracy "
        f"{reports.pct(p['accuracy'])}%, mean class accuracy "
        f"{reports.pct(p['mean_class_accuracy'])}%, macro F1 {reports.pct(p['macro_f1'])}%. "
        f"Std: {result['std']}.",
        "",
        "Summed confusion matrix (rows: true, columns: predicted):",
        "",
        "| true \\ predicted | " + " | ".join(result["class_names"]) + " |",
        "|---|" + "---:|" * len(result["class_names"]),
    ]
    for name, row in zip(result["class_names"], result["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def csv(result):
    keys = ("accuracy", "mean_class_accuracy", "macro_f1")
    rows = [
        [r["fold"], r["test_subjects"], r["num_examples"], *(r[k] for k in keys), r["step"]]
        for r in result["folds"]
    ]
    s = result["summary"]
    rows.append(["mean", "", "", *(s[k]["mean"] for k in keys), ""])
    rows.append(["std", "", "", *(s[k]["std"] for k in keys), ""])
    return reports.csv_text(["fold", "test_subjects", "num_examples", *keys, "step"], rows)
