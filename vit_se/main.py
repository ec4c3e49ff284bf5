"""Entry point: python -m vit_se.main --config=configs/sfew.py --workdir=DIR [--config.x=y].

The same command runs on one CPU, a multi-GPU node and every worker of a TPU slice. Multi-process
runs are detected from the environment (Cloud TPU, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS) or
forced with --coordinator_address/--num_processes/--process_id.

`--compile_for=SLICE` (e.g. v5e-8) trains nothing: it compiles the config's programs for that
Cloud TPU slice on this machine and says whether they fit (`vit_se.preflight`).
"""

from __future__ import annotations

import functools
import os
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from vit_se import cli, config_checks, progress, seeds, workdir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_list(
    "seeds",
    None,
    "Train once per seed (e.g. 0,1,2) into WORKDIR/seed{s}, then report every run and the mean "
    "± sample std over seeds in WORKDIR/seeds.{json,md,csv}.",
)
flags.DEFINE_enum(
    "select",
    "best",
    ["best", "final"],
    "With --seeds: report each seed's checkpoint selected on val_split (evaluated on test_split), "
    "or its final step.",
)
flags.DEFINE_string(
    "compile_for",
    None,
    "Train nothing: compile the config for this Cloud TPU slice (e.g. v5e-8, v5litepod-16, v4-32, "
    "v5p-8, v6e-8) on this machine, print per-chip memory, FLOPs and collectives, and exit 0 if "
    "it fits (needs the tpu extra; reads no data, writes nothing; --workdir is not needed).",
)
flags.DEFINE_integer("num_slices", 1, "With --compile_for: that many slices (multislice).")
flags.mark_flags_as_required(["config"])
cli.define_verbose_flag()


def _multi_process_environment():
    env = os.environ
    if FLAGS.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialise_distributed():
    import jax

    if not _multi_process_environment():
        return
    kwargs = {}
    if FLAGS.coordinator_address:
        kwargs = dict(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    jax.distributed.initialize(**kwargs)


@functools.cache
def start_jax():
    """Starts JAX (multi-process first, when the environment says so); returns the device count.

    Called by `config_checks.prepare` once the config's values and paths have passed, so that a
    mistake costs a second, not the import of JAX and TensorFlow.
    """
    cli.hide_accelerators_from_tensorflow()
    initialise_distributed()
    # After jax.distributed.initialize: nothing may touch a JAX backend before it.
    import jax

    logging.info(
        "JAX process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    return jax.device_count()


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.compile_for:
        if FLAGS.seeds:
            raise cli.CommandError("--compile_for compiles one config: drop --seeds")
        # Every value first: a mistake costs a second, not the import of libtpu and JAX.
        config_checks.check_values(FLAGS.config)
        _preflight()
        return
    if not FLAGS.workdir:
        raise cli.CommandError("--workdir is required (or --compile_for=SLICE to only compile)")
    if FLAGS.seeds and FLAGS.config.get("task") == "mae":
        raise cli.CommandError(
            "--seeds compares fine-tunes: pretrain once, then fine-tune from it with --seeds "
            "(README, 'Face-domain pretraining')"
        )
    if FLAGS.seeds:
        runs = [
            (workdir.seed_dir(FLAGS.workdir, seed), seeds.with_seed(FLAGS.config, seed))
            for seed in seeds.parse(FLAGS.seeds)
        ]
    else:
        runs = [(FLAGS.workdir, FLAGS.config)]
    # Every run's config before any run starts: the third seed's mistake must not wait.
    runs = [(d, config_checks.prepare(c, d, start_jax)) for d, c in runs]

    import jax

    from vit_se import train

    if FLAGS.seeds:
        _train_seeds(runs)
        return
    (run_dir, config), start = runs[0], time.time()
    before = _exported_step(run_dir)
    train.train_and_evaluate(config, run_dir)
    if jax.process_index() == 0:
        report = pretraining_summary if config.task == "mae" else summary
        print(report(run_dir, time.time() - start, before))


def _preflight():
    """Before JAX is imported: libtpu reads its settings when it loads."""
    from vit_se import tpu_slices

    slice_ = tpu_slices.parse(FLAGS.compile_for, FLAGS.num_slices)
    tpu_slices.compile_only_environment(slice_, FLAGS.verbose)
    from vit_se import preflight

    config = config_checks.resolve(FLAGS.config)
    report = preflight.run(config, slice_)
    print(report.text, flush=True)
    problem = preflight.verdict(config, report)
    if problem:
        raise preflight.PreflightError(problem)
    print(f"fits: every program compiled for {slice_.name} within its HBM")


def _exported_step(run_dir):
    """The step of the run's export.json (or pretraining.json), or None (nothing exported yet)."""
    pretrained = os.path.join(run_dir, workdir.PRETRAINING_INFO)
    if workdir.exists(pretrained):
        return workdir.read_json(pretrained)["step"]
    if not workdir.exists(os.path.join(run_dir, workdir.EXPORT_INFO)):
        return None
    return workdir.read_export_info(run_dir).step


def pretraining_summary(run_dir, seconds, exported_before=None):
    """What a finished pretraining run reached, and how to fine-tune from it."""
    info = workdir.read_json(os.path.join(run_dir, workdir.PRETRAINING_INFO))
    if exported_before == info["step"]:
        first = f"Already finished: pretraining in {run_dir} at step {info['step']}"
    else:
        first = (
            f"Finished masked-autoencoder pretraining in {run_dir}: {info['step']} steps, "
            f"{progress.duration(seconds)}"
        )
    final = info["metrics"]["val"]
    lines = [
        first,
        f"  held-out reconstruction loss {final['loss']:.4f} at the final step "
        f"({final['num_examples']} faces)",
    ]
    if info.get("best_step") is not None and info.get("best_metrics"):
        best = info["best_metrics"]["val"]["loss"]
        lines.append(f"  lowest held-out loss {best:.4f} at step {info['best_step']}")
    encoder = os.path.join(run_dir, workdir.ENCODER)
    lines += [
        f"  {workdir.ENCODER:<16} {encoder}  (the final step's backbone, official layout)",
        f"  {workdir.RECONSTRUCTIONS + '/':<16} {os.path.join(run_dir, workdir.RECONSTRUCTIONS)}",
        f"  {'TensorBoard':<16} tensorboard --logdir {run_dir}",
        f"  fine-tune from it: --config.init_from={run_dir} "
        f"(or --config.pretrained_path={encoder})",
    ]
    return "\n".join(lines)


def summary(run_dir, seconds, exported_before=None):
    """What a finished run reached, final and selected side by side, and where its files are.

    `exported_before`: the step the run had already exported when the command started; the same
    step now means this command trained nothing and says so.
    """
    info = workdir.read_export_info(run_dir)
    run = workdir.read_run_config(run_dir).get("config", {})
    splits = list(info.metrics)
    name = info.dataset + (f"/{info.dataset_config}" if info.dataset_config else "")
    if exported_before == info.step:
        first = (
            f"Already finished: {name} in {run_dir} at step {info.step}, nothing left to train "
            "(a longer --config.num_train_steps continues it; a new --workdir starts afresh)"
        )
    else:
        first = f"Finished {name} in {run_dir}: {info.step} steps, {progress.duration(seconds)}"
    lines = [first]
    header = f"  {'':<10}{'step':>7}" + "".join(
        f"  {s + ' accuracy':>16}  {s + ' mean class':>16}" for s in splits
    )
    lines.append(header)

    def row(label, step, metrics, note=""):
        cells = "".join(
            f"  {metrics[s]['accuracy']:>16.4f}  {metrics[s]['mean_class_accuracy']:>16.4f}"
            for s in splits
        )
        return f"  {label:<10}{step:>7}{cells}{note}"

    lines.append(row("final", info.step, info.metrics))
    if info.best_step is not None and info.best_metrics:
        note = f"   (best {run.get('selection_metric', 'accuracy')} on {run.get('val_split')})"
        lines.append(row("selected", info.best_step, info.best_metrics, note))
    files = [(workdir.PARAMS, "the final step")]
    if info.best_step is not None:
        files.append(
            (workdir.BEST_PARAMS, "the selected step: what evaluate/predict/analyze/export load")
        )
    files.append((workdir.CURVES, "loss and accuracy over steps"))
    for file, what in files:
        lines.append(f"  {file:<16} {os.path.join(run_dir, file)}  ({what})")
    lines.append(f"  {'TensorBoard':<16} tensorboard --logdir {run_dir}")
    return "\n".join(lines)


def _train_seeds(runs):
    import jax

    from vit_se import evaluate, train

    rows = []
    for run_dir, config in runs:
        logging.info("Seed %d in %s", config.seed, run_dir)
        train.train_and_evaluate(config, run_dir)
        row = evaluate.reported(config, run_dir, FLAGS.select)
        rows.append({"seed": config.seed, "workdir": os.path.abspath(run_dir), **row})
    if jax.process_index() == 0:
        title = f"{FLAGS.config.dataset} ({FLAGS.config.dataset_config}), {len(rows)} seeds"
        seeds.write(FLAGS.workdir, title, rows, rows[0]["selection"])
        print(seeds.markdown(title, rows, rows[0]["selection"]))
        print(f"wrote {seeds.stem(FLAGS.workdir)}.md, .csv and .json")


if __name__ == "__main__":
    sys.argv = cli.resolve_config_paths(sys.argv)
    cli.run(main, "main", hide_accelerators=False)
