"""Evaluate a trained workdir on any builder's split: metrics JSON, confusion PNG, TensorBoard.

  python -m vit_se.evaluate --workdir=$W/raf_db                    # the run's own test split
  python -m vit_se.evaluate --workdir=$W/raf_db --params=params.npz  # the final step's model
  python -m vit_se.evaluate --workdir=$W/raf_db --dataset=jaffe --dataset_config=face224 \
      --manual_dir=$HOME/fer/jaffe                                     # cross-database

The model is the run's export (`best_params.npz`, selected on the run's val_split, when it exists,
else `params.npz`; + `export.json`); batches come from the trainer's own evaluation pipeline
(`input_pipeline.eval_dataset` with the export's resize and face crop, padded and masked batches)
and go through the trainer's jitted eval step on the device mesh (`vit_se.eval_step`), which
checks that every example of the split was counted exactly once.

Every builder emits one label order (FER-2013's, 7 classes), so a model from one database is
evaluated on another without relabelling. A CK+ 8-class model (contempt last) on a 7-class dataset
is evaluated over 8 columns: its contempt predictions count as errors and the class means run over
the 7 classes present. A 7-class model on a dataset with contempt is refused (it cannot predict
that class): evaluate on a 7-class config instead.

Default split: the run's `test_split` (or `val_split` when it has none) on its own dataset; on
another database the split no run has seen: RAF-DB `test`, SFEW `validation`, FER-2013
`private_test`, AffectNet `validation` (the official validation set every paper reports), CK+ and
JAFFE `all` (every fold).

Writes to --out (default WORKDIR/eval/<dataset>[-<config>]-<split>[-best]): `metrics.json`,
`confusion.png`, and TensorBoard events (scalars `eval/*`, image `eval/confusion`).
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from absl import flags

from vit_se import cli, eval_step, figures, inference, input_pipeline, reports, sharding, workdir
from vit_se.datasets import registry
from vit_se.errors import Error

# The split of each database that a model trained elsewhere is reported on.
DEFAULT_SPLITS = {
    "raf_db": "test",
    "sfew": "validation",
    "fer2013": "private_test",
    "ck_plus": "all",
    "jaffe": "all",
    "affectnet": "validation",
}
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion.png"


class EvaluationError(Error, ValueError):
    """An evaluation that cannot run; the message is one line saying why and what to do."""


# ----------------------------------------------------------------------------------------------
# What to evaluate on.


def resolve_target(run, info, dataset=None, dataset_config=None, split=None, where="workdir"):
    """Returns (dataset, dataset_config, split, notes) with the defaults described above.

    `run`: the run's saved training config ({} for a model vit_se did not train); `info`: its
    ExportInfo.
    """
    trained_on = run.get("dataset") or info.dataset
    notes = []
    if dataset is None:
        if not trained_on:
            raise EvaluationError(f"{where}: no dataset recorded; pass --dataset")
        dataset = trained_on
        if dataset_config is None:
            dataset_config = run.get("dataset_config") or info.dataset_config
    if dataset not in registry.NAMES:
        raise EvaluationError(
            f"--dataset: unknown dataset {dataset!r}; expected one of {', '.join(registry.NAMES)}"
        )
    same = dataset == trained_on
    val_note = f"the run's val_split, which selected {workdir.BEST_PARAMS}"
    if split is None:
        if same:
            split = run.get("test_split") or run.get("val_split")
            if not split:
                raise EvaluationError(f"{where}: the run has no test or val split; pass --split")
            if split == run.get("val_split"):
                notes.append(f"{split!r} is {val_note}")
        else:
            split = DEFAULT_SPLITS[dataset]
    elif same:
        if split == run.get("train_split"):
            notes.append(f"{split!r} is the split this model was trained on")
        elif split == run.get("val_split"):
            notes.append(f"{split!r} is {val_note}")
    if not same and trained_on:
        notes.append(f"cross-database: trained on {trained_on}, evaluated on {dataset}")
    return dataset, dataset_config, split, notes


def check_labels(model_names, data_names, dataset):
    """Model and dataset classes must share the canonical order; returns notes, or raises."""
    model_names, data_names = list(model_names), list(data_names)
    if model_names == data_names:
        return []
    n, m = len(data_names), len(model_names)
    if m > n and model_names[:n] == data_names:
        extra = ", ".join(model_names[n:])
        return [
            f"the model has {m} classes, {dataset} has {n}: predictions of {extra} are counted "
            f"as errors and class means run over the classes present"
        ]
    if n > m and data_names[:m] == model_names:
        raise EvaluationError(
            f"{dataset} has {n} classes ({', '.join(data_names[m:])} beyond the model's {m}); "
            f"a {m}-class model cannot predict them: evaluate on a {m}-class config "
            "(e.g. --dataset_config=7class for ck_plus)"
        )
    raise EvaluationError(
        f"label orders differ: model {model_names} vs {dataset} {data_names}; every vit_se "
        "builder uses the canonical order, so this model was not trained by vit_se on it"
    )


# ----------------------------------------------------------------------------------------------
# The evaluation.


def evaluate_workdir(
    run_dir,
    *,
    dataset=None,
    dataset_config=None,
    split=None,
    data_dir=None,
    manual_dir=None,
    params_file=None,
    out=None,
    batch_size=None,
    write=True,
):
    """Evaluates a finished run's export; returns the result dict also written to metrics.json.

    `params_file` defaults to `workdir.default_params(run_dir)`.
    """
    trained = inference.load_trained(run_dir, params_file)
    params_file = trained.source["params"]
    info = trained.info
    run = workdir.read_run_config(run_dir).get("config", {})
    dataset, dataset_config, split, notes = resolve_target(
        run, info, dataset, dataset_config, split, where=run_dir
    )
    trained_on = run.get("dataset") or info.dataset
    same = dataset == trained_on
    if data_dir is None:
        data_dir = run.get("data_dir")  # one tfds data dir holds every dataset
    if manual_dir is None and same:
        manual_dir = run.get("manual_dir")

    builder = input_pipeline.load_builder(dataset, dataset_config, data_dir, manual_dir)
    if dataset_config is None:
        dataset_config = builder.builder_config.name if builder.builder_config else None
    data_names = builder.info.features["label"].names
    notes += check_labels(trained.class_names, data_names, dataset)
    try:
        expected = input_pipeline.num_examples(builder, split)
    except (KeyError, ValueError) as e:
        raise EvaluationError(
            f"--split: {split!r} is not a split of {dataset} "
            f"({', '.join(builder.info.splits.keys())}): {e}"
        ) from None

    num_classes = len(trained.class_names)
    mesh = sharding.make_mesh()
    repl = sharding.replicated(mesh)
    batch = batch_size or int(run.get("eval_batch_size", 64))
    batch = int(np.ceil(batch / jax.device_count()) * jax.device_count())
    data = input_pipeline.eval_dataset(
        builder,
        split,
        batch // jax.process_count(),
        image_size=info.image_size,
        eval_resize=info.eval_resize,
        face_crop=info.face_crop,
    )
    step_fn = eval_step.jit_eval_step(trained.model, num_classes, repl, mesh)
    params = jax.device_put(trained.params, repl)
    batches = data.global_batches(sharding.batch_sharding(mesh))
    metrics = eval_step.evaluate(step_fn, params, batches, num_classes, data.num_examples)
    assert metrics["num_examples"] == expected, (metrics["num_examples"], expected)

    result = {
        "workdir": os.path.abspath(run_dir),
        "params_file": params_file,
        "step": info.step_of(params_file),
        "trained_on": {
            "dataset": trained_on,
            "dataset_config": run.get("dataset_config") or info.dataset_config,
        },
        "dataset": dataset,
        "dataset_config": dataset_config,
        "split": split,
        "num_examples": metrics["num_examples"],
        "class_names": list(trained.class_names),
        "notes": notes,
        **{k: v for k, v in metrics.items() if k != "num_examples"},
        "per_class": per_class_table(metrics, trained.class_names),
    }
    if write:
        out = out or default_out(run_dir, dataset, dataset_config, split, params_file)
        result["out"] = os.path.abspath(out)
        write_outputs(result, out)
    return result


def default_out(run_dir, dataset, dataset_config, split, params_file):
    name = dataset + (f"-{dataset_config}" if dataset_config else "") + f"-{safe_name(split)}"
    if workdir.is_best(params_file):
        name += "-best"
    return os.path.join(run_dir, workdir.EVAL_DIR, name)


def safe_name(text):
    """A split string as a file name: 'train[90%:]' -> 'train_90pct_'."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text.replace("%", "pct"))


def reported(cfg, run_dir, select="best"):
    """What one finished (non-k-fold) run reports, under the selection rule it states.

    With a val_split and a test_split: the checkpoint selected on val_split (best_params.npz),
    evaluated on test_split (`select='final'`: the final step's test metrics); with a test split
    only: the final step on it; with neither: the final step on val_split.
    """
    info = workdir.read_export_info(run_dir)
    best = os.path.join(run_dir, workdir.BEST_PARAMS)
    if cfg.test_split and cfg.val_split and select == "best":
        if not workdir.exists(best):
            raise EvaluationError(f"{run_dir}: no {workdir.BEST_PARAMS} to report")
        m = evaluate_workdir(run_dir, split=cfg.test_split, params_file=workdir.BEST_PARAMS)
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


def per_class_table(metrics, class_names):
    rows = {}
    for i, name in enumerate(class_names):
        p, r = metrics["per_class_precision"][i], metrics["per_class_recall"][i]
        rows[name] = {
            "precision": p,
            "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "support": metrics["per_class_support"][i],
        }
    return rows


def write_outputs(result, out):
    """metrics.json, confusion.png and TensorBoard scalars + image, from process 0."""
    if jax.process_index() != 0:
        return
    from clu import metric_writers

    workdir.makedirs(out)
    title = (
        f"{result['dataset']} {result['split']} ({result['num_examples']} examples), "
        f"accuracy {100 * result['accuracy']:.2f}%"
    )
    image = figures.save_confusion_png(
        result["confusion"], result["class_names"], os.path.join(out, CONFUSION_PNG), title
    )
    workdir.write_json(os.path.join(out, METRICS_FILE), result)
    writer = metric_writers.create_default_writer(out, asynchronous=False)
    step = int(result["step"] or 0)
    scalars = {
        f"eval/{k}": result[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1", "loss")
    }
    for name, row in result["per_class"].items():
        if row["support"]:
            scalars[f"eval/recall/{name}"] = row["recall"]
    writer.write_scalars(step, scalars)
    writer.write_images(step, {"eval/confusion": image[None]})
    writer.flush()
    writer.close()


def format_result(result):
    """A short plain-text report: headline metrics and the per-class table."""
    lines = [
        f"{result['dataset']}"
        + (f"/{result['dataset_config']}" if result["dataset_config"] else "")
        + f" split {result['split']}: {result['num_examples']} examples, model "
        f"{result['params_file']} (step {result['step']}) of {result['workdir']}",
        f"accuracy {result['accuracy']:.4f}  mean class accuracy "
        f"{result['mean_class_accuracy']:.4f}  macro F1 {result['macro_f1']:.4f}  "
        f"loss {result['loss']:.4f}",
        f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}",
    ]
    for name, row in result["per_class"].items():
        lines.append(
            f"{name:<10} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f} "
            f"{row['support']:8d}"
        )
    lines += [f"note: {n}" for n in result["notes"]]
    if result.get("out"):
        lines.append(f"wrote {result['out']}/{METRICS_FILE} and {CONFUSION_PNG}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command (defined only when run as a program, so others can import this)."""
    cli.define_model_flags(official=False)
    flags.DEFINE_string("split", None, "tfds split string; default: see the module docstring.")
    flags.DEFINE_string("dataset", None, f"Builder name ({', '.join(registry.NAMES)}).")
    flags.DEFINE_string("dataset_config", None, "Builder config, e.g. aligned, 7class, face224.")
    flags.DEFINE_string("data_dir", None, "tfds data dir (default: the run's).")
    flags.DEFINE_string("manual_dir", None, "The dataset's files, to build it on first use.")
    flags.DEFINE_string("out", None, "Output folder (default WORKDIR/eval/<dataset>-<split>).")
    flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: the run's).")


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        raise cli.CommandError("--workdir is required")
    result = evaluate_workdir(
        FLAGS.workdir,
        dataset=FLAGS.dataset,
        dataset_config=FLAGS.dataset_config,
        split=FLAGS.split,
        data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir,
        params_file=FLAGS.params,
        out=FLAGS.out,
        batch_size=FLAGS.batch_size,
    )
    if jax.process_index() == 0:
        print(format_result(result))


if __name__ == "__main__":
    define_flags()
    cli.run(main, "evaluate")
