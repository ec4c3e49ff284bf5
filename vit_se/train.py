"""train_and_evaluate: one readable, sharded, resumable training loop.

The config arrives resolved and checked (`vit_se.config_checks.prepare`, which the entry points
call) and is trusted here. Everything that can still fail on the user's input (building the
dataset, reading a pretrained checkpoint, the evaluation splits) happens before the first file of
the run is written, and a workdir this run created is removed again when it fails before that.
The loop itself is the Flax ImageNet example's shape with big_vision's habits:
a global batch assembled from per-process batches, one jitted step with explicit shardings,
evaluation by the exact evaluator below the trainer (`vit_se.eval_step`), orbax checkpoints that
make every run resumable, and clu writers for metrics. The run directory's files are named and
written by `vit_se.workdir`.

What can go wrong while it runs is handled where it happens, each ending in one line and its own
exit status (README, "Preemption and failures"): a second run on the workdir (`run_lock`), a
stop request (`preemption`: the step finishes, a checkpoint is written, exit 75), a non-finite
loss or gradient (`on_nonfinite`: exit 3 with the step and the value, nothing saved after it), a
checkpoint that does not restore (`state_checkpoints`: moved aside, the one before is used).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions

from vit_se import checkpoint as ckpt_lib
from vit_se import (
    config_checks,
    eval_step,
    figures,
    input_pipeline,
    metrics,
    pretraining,
    sharding,
    state_checkpoints,
    train_setup,
)
from vit_se import workdir as workdir_lib
from vit_se.config_checks import ConfigError
from vit_se.datasets import labels, registry
from vit_se.errors import Error
from vit_se.preemption import Preempted, StopSignals
from vit_se.progress import Progress
from vit_se.run_lock import RunLock
from vit_se.train_step import release_host_memory, xla_owned

__all__ = ["ConfigError", "Diverged", "train_and_evaluate"]


class Diverged(Error):
    """A loss or gradient norm that is not finite (see config.on_nonfinite)."""

    exit_code = 3


class _StepMetrics:
    """The train step's metrics between host syncs, checked for non-finite values.

    Reading metrics back is a host sync; it happens only where the loop syncs anyway (logging,
    evaluation, checkpoints), so the check costs no extra one per step.
    """

    def __init__(self, on_nonfinite, max_consecutive_skips, first_step, latest_checkpoint):
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.latest_checkpoint = latest_checkpoint  # () -> the newest saved step, or None
        self.next_step = first_step  # the step the next pending entry belongs to
        self.pending = []  # device metrics of steps not yet read back
        self.window = []  # host metrics since the last log line
        self.consecutive_skips = 0
        self.last_finite_step = first_step - 1

    def add(self, step_metrics):
        self.pending.append(step_metrics)

    def fetch(self):
        """Reads pending metrics back; raises Diverged per config.on_nonfinite."""
        if not self.pending:
            return
        for m in eval_step.to_host(self.pending):
            step, self.next_step = self.next_step, self.next_step + 1
            if bool(m["finite"]):
                self.consecutive_skips = 0
                self.last_finite_step = step
            else:
                what = f"loss {float(m['loss'])}, gradient norm {float(m['grad_norm'])}"
                latest = self.latest_checkpoint()
                kept = f"the latest checkpoint is step {latest}, nothing exported"
                if self.on_nonfinite == "stop":
                    raise Diverged(
                        f"step {step}: {what} (on_nonfinite='stop'); {kept}: lower the learning "
                        "rate, or set --config.on_nonfinite=skip_step"
                    )
                self.consecutive_skips += 1
                if self.consecutive_skips >= self.max_consecutive_skips:
                    raise Diverged(
                        f"step {step}: {what}; {self.consecutive_skips} steps in a row were "
                        f"skipped (max_consecutive_skips); {kept}"
                    )
            self.window.append(m)
        self.pending = []

    def log_line(self):
        """Mean of the window's metrics (non-finite steps left out) and the skipped count."""
        good = [m for m in self.window if bool(m["finite"])] or self.window
        keys = [k for k in self.window[0] if k != "finite"]
        mean = {f"train/{k}": float(np.mean([m[k] for m in good])) for k in keys}
        mean["train/skipped_steps"] = float(sum(not bool(m["finite"]) for m in self.window))
        self.window = []
        return mean


def _export_info(config, **facts):
    return workdir_lib.ExportInfo(
        model=config.model.to_dict(),
        class_names=list(labels.class_names(config.num_classes)),
        image_size=int(config.image_size),
        eval_resize=input_pipeline.eval_resize(config.augment, config.image_size),
        face_crop=config.face_crop,
        dataset=config.dataset,
        dataset_config=config.dataset_config,
        **facts,
    )


def _save_params(params, path):
    """Gathers (possibly sharded) parameters and writes them from process 0."""
    params = jax.experimental.multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        ckpt_lib.save_npz(params, path)


def _maybe_write_fake_data(config):
    """The demo config ships no data: it writes a dataset in the original layout first."""
    fake = config.fake_data
    if not fake.enabled:
        return
    root = config.manual_dir
    if workdir_lib.isdir(root) and workdir_lib.listdir(root):
        return
    if jax.process_index() == 0:
        kwargs = {k: v for k, v in fake.items() if k != "enabled"}
        logging.info("Writing a synthetic %s layout to %s", config.dataset, root)
        registry.write_fake_data(config.dataset, root, **kwargs)
    if jax.process_count() > 1:
        jax.experimental.multihost_utils.sync_global_devices("vit_se: fake data written")


# ----------------------------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, progress=None) -> dict:
    """Trains, evaluates, checkpoints and exports; returns the final metrics by split name.

    `config` is `config_checks.prepare(config, workdir)`'s result. `progress(step, total_steps,
    evaluated)` is called after every step (`evaluated` holds the metrics of an evaluation at
    that step, else None): notebooks draw their progress bar with it. Raises Preempted (a
    checkpoint was written; call again to resume), Diverged, WorkdirInUse or ConfigError.
    """
    existed = workdir_lib.exists(workdir)
    try:
        with RunLock(workdir) as lock, StopSignals() as stop:
            return _train(config, workdir, progress, lock, stop)
    finally:
        if not existed:
            workdir_lib.remove_if_empty(workdir)


def dataset_builder(config):
    """The tfds builder of the config's dataset, built from its manual_dir on first use."""
    return input_pipeline.load_builder(
        config.dataset,
        config.dataset_config,
        config.data_dir,
        config.manual_dir,
        skip_bad_images=config.skip_bad_images,
    )


def training_data(builder, config, local_batch, start_step=0):
    """`input_pipeline.train_dataset` with the config's fields: the batches this run trains on."""
    return input_pipeline.train_dataset(
        builder,
        config.train_split,
        local_batch,
        image_size=config.image_size,
        augment=config.augment,
        seed=config.seed,
        face_crop=config.face_crop,
        soft_targets=input_pipeline.has_soft_targets(builder, config.soft_targets),
        class_balanced=config.class_balanced,
        num_classes=config.num_classes,
        shuffle_buffer=config.shuffle_buffer,
        cache_max_bytes=config.cache_max_bytes,
        prefetch=config.prefetch,
        start_step=start_step,
    )


def _checkpoints(config, workdir):
    return state_checkpoints.manager(workdir, config.keep_checkpoints, config.selection_metric)


class _Classification:
    """Task 'classify': a labelled builder's splits, exact evaluation, the classifier's export
    (params.npz, best_params.npz, export.json). `vit_se.pretraining.Pretraining` is the other."""

    def __init__(self, config):
        self.config = config
        self.builder = dataset_builder(config)
        self.num_train = input_pipeline.num_examples(self.builder, config.train_split)
        self.description = config.dataset
        if input_pipeline.has_soft_targets(self.builder, config.soft_targets):
            logging.info(
                "Targets: the builder's label_distribution (soft), label smoothing %g",
                config.label_smoothing,
            )

    def train_batches(self, local_batch, start_step):
        return training_data(self.builder, self.config, local_batch, start_step)

    def evaluator(self, model, params_sharding, mesh):
        return _evaluator(self.config, self.builder, model, params_sharding, mesh)

    def evaluation_line(self, step, evaluated):
        return _evaluation_line(step, evaluated)

    def after_evaluation(self, step, params, writer, run_dir):
        pass

    def export(self, run_dir, params, total_steps, final, best, best_params):
        _save_params(params, os.path.join(run_dir, workdir_lib.PARAMS))
        best_step, best_metrics = best
        if best_params is not None:
            # The model selected on val_split: what every command loads by default.
            _save_params(best_params, os.path.join(run_dir, workdir_lib.BEST_PARAMS))
        if jax.process_index() == 0:
            info = _export_info(
                self.config,
                step=total_steps,
                best_step=best_step,
                metrics=final,
                best_metrics=best_metrics,
            )
            workdir_lib.write_export_info(run_dir, info)


def _train(config, workdir, progress, lock, stop):
    _maybe_write_fake_data(config)

    mesh = sharding.make_mesh()
    batch_sh = sharding.batch_sharding(mesh)
    task = pretraining.Pretraining(config) if config.task == "mae" else _Classification(config)
    num_train = task.num_train
    steps_per_epoch, total_steps = train_setup.total_steps(config, num_train)
    local_batch = config.batch_size // jax.process_count()
    saved_steps = workdir_lib.checkpoint_steps(workdir)
    if saved_steps and total_steps < max(saved_steps):
        raise ConfigError(
            f"config.num_train_steps: this config trains {total_steps} steps, but {workdir} "
            f"holds a checkpoint of step {max(saved_steps)}; train at least that long, or use a "
            "new --workdir"
        )
    for warning in config_checks.warnings(config, total_steps, steps_per_epoch):
        logging.warning("%s", warning)

    setup = train_setup.build(config, mesh, steps_per_epoch, total_steps)
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        setup.abstract,
        setup.state_sh,
    )
    # Nothing is written before the state exists: a checkpoint that does not load (or a
    # pretrained file of another model) leaves the workdir as it was.
    mngr = _checkpoints(config, workdir) if saved_steps else None
    latest, restored = (None, None)
    if mngr is not None:
        latest, restored = state_checkpoints.restore_latest(mngr, target, workdir)
    if latest is not None:
        state = xla_owned(restored, setup.state_sh)
        logging.info("Resumed from %s at step %d", workdir, latest)
    else:
        state = train_setup.init_state(config, setup)
    start_step = int(eval_step.to_host(state.step))
    evaluate = task.evaluator(setup.model, setup.state_sh.params, mesh)
    train_iter = task.train_batches(local_batch, start_step).as_numpy_iterator()

    if jax.process_index() == 0:
        workdir_lib.write_run_config(
            workdir, config.to_dict(), config_checks.model_identity(config)
        )
    mngr = mngr or _checkpoints(config, workdir)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )
    if start_step == 0:
        hparams = config_checks.flat(config.to_dict())
        writer.write_hparams({k: v for k, v in hparams.items() if isinstance(v, int | float | str)})
    hooks = []
    if config.profile_steps and jax.process_index() == 0:
        hooks.append(
            periodic_actions.Profile(
                logdir=workdir, num_profile_steps=config.profile_steps, first_profile=10
            )
        )

    logging.info(
        "Training %s%s on %s (%d examples, %d steps of %d) on %d devices, %d processes",
        config.model.name,
        " as a masked autoencoder" if config.task == "mae" else "",
        task.description,
        num_train,
        total_steps,
        config.batch_size,
        jax.device_count(),
        jax.process_count(),
    )
    train_step = setup.train_step
    final = {}
    step_metrics = _StepMetrics(
        config.on_nonfinite, config.max_consecutive_skips, start_step + 1, mngr.latest_step
    )
    shown = Progress(total_steps, start_step, config.batch_size)
    report = jax.process_index() == 0
    t0, last_log = time.time(), start_step
    try:
        for step in range(start_step + 1, total_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                batch = input_pipeline.to_global(next(train_iter), batch_sh)
                state, out = train_step(state, batch)
            step_metrics.add(out)
            if step == start_step + 1:
                jax.block_until_ready(out)
                release_host_memory()  # what compiling the step freed
                shown.started(step)
                t0, last_log = time.time(), step  # rates from here: compilation excluded
            for hook in hooks:
                hook(step)
            stopping = stop.should_stop(step)
            evaluating = step % config.eval_every == 0 or step == total_steps
            saving = evaluating or stopping or step % config.checkpoint_every == 0
            if step % config.log_every == 0 or saving:
                step_metrics.fetch()  # raises Diverged before anything is saved
            if (step % config.log_every == 0 or step == total_steps) and step_metrics.window:
                mean = step_metrics.log_line()
                if step > last_log:
                    dt = time.time() - t0
                    mean["train/images_per_sec"] = (step - last_log) * config.batch_size / dt
                writer.write_scalars(step, mean)
                if report:
                    shown.update(step, {k.removeprefix("train/"): v for k, v in mean.items()})
                lock.heartbeat()
                t0, last_log = time.time(), step
            evaluated = None
            if evaluating:
                evaluated = final = evaluate(state.params)
                for name, result in evaluated.items():
                    writer.write_scalars(
                        step, {f"{name}/{k}": v for k, v in metrics.scalars(result).items()}
                    )
                if report:
                    shown.note(task.evaluation_line(step, evaluated))
                task.after_evaluation(step, state.params, writer, workdir)
            if saving:
                ckpt_metrics = (
                    {k: float(v) for k, v in metrics.scalars(evaluated["val"]).items()}
                    if evaluated and "val" in evaluated
                    else None
                )
                mngr.save(step, args=ocp.args.StandardSave(state), metrics=ckpt_metrics, force=True)
            if progress is not None:
                progress(step, total_steps, evaluated)
            if stopping and step < total_steps:
                raise Preempted(
                    f"stopped by {stop.reason} after step {step} of {total_steps}; its "
                    f"checkpoint is in {os.path.join(workdir, workdir_lib.CHECKPOINTS)}: run the "
                    "same command to resume"
                )
    finally:
        # Whatever ends the loop, what was saved is complete and the logs are on disk.
        shown.close()
        mngr.wait_until_finished()
        writer.flush()
    if not final:  # resumed after the last step: evaluate the restored state
        final = evaluate(state.params)
    best_step = mngr.best_step() if (config.val_split or config.task == "mae") else None
    best_metrics, best_params = {}, None
    if best_step is not None:
        best_params = (
            state.params
            if best_step == total_steps
            else mngr.restore(best_step, args=ocp.args.StandardRestore(target)).params
        )
        best_metrics = final if best_step == total_steps else evaluate(best_params)
    mngr.close()
    task.export(workdir, state.params, total_steps, final, (best_step, best_metrics), best_params)
    if jax.process_index() == 0:
        figures.save_curves(workdir, os.path.join(workdir, workdir_lib.CURVES))
    logging.info("Done: step %d of %s in %s", total_steps, task.description, workdir)
    return final


def _evaluation_line(step, evaluated):
    parts = [
        f"{name} accuracy {m['accuracy']:.4f} (mean class {m['mean_class_accuracy']:.4f})"
        for name, m in evaluated.items()
    ]
    return f"step {step}: " + ", ".join(parts)


def _evaluator(config, builder, model, params_sharding, mesh):
    """params -> {'val': metrics, 'test': metrics} (the splits the config names)."""
    eval_batch = int(np.ceil(config.eval_batch_size / jax.device_count()) * jax.device_count())
    splits = {"val": config.val_split, "test": config.test_split}
    data = {
        name: input_pipeline.eval_dataset(
            builder,
            split,
            eval_batch // jax.process_count(),
            image_size=config.image_size,
            eval_resize=input_pipeline.eval_resize(config.augment, config.image_size),
            face_crop=config.face_crop,
            prefetch=config.prefetch,
        )
        for name, split in splits.items()
        if split
    }
    step = eval_step.jit_eval_step(model, config.num_classes, params_sharding, mesh)
    batch_sh = sharding.batch_sharding(mesh)

    def evaluate(params):
        return {
            name: eval_step.evaluate(
                step, params, d.global_batches(batch_sh), config.num_classes, d.num_examples
            )
            for name, d in data.items()
        }

    return evaluate
