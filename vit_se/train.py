"""train_and_evaluate: one readable, sharded, resumable training loop.

Everything that can be wrong with a config is checked in `validate_config` before any data is
read or anything compiled. The loop itself is the Flax ImageNet example's shape with big_vision's
habits: a global batch assembled from per-process batches, one jitted step with explicit
shardings, orbax checkpoints that make every run resumable, and clu writers for metrics.
"""

from __future__ import annotations

import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow as tf
from absl import logging
from clu import metric_writers, periodic_actions
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vit_se import checkpoint as ckpt_lib
from vit_se import input_pipeline, metrics, model_configs, optim, sharding
from vit_se.datasets import registry
from vit_se.datasets.labels import CLASS_NAMES, CLASS_NAMES_WITH_CONTEMPT
from vit_se.train_step import (
    EXPORT_PARAMS,
    abstract_state,
    create_model,
    init_state,
    jit_train_step,
    release_host_memory,
    xla_owned,
)

EXPORT_INFO = "export.json"
RUN_CONFIG = "config.json"
BEST_PARAMS = "best_params.npz"


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the field."""


# ----------------------------------------------------------------------------------------------
# Config checks (no compilation, no data).


def _model_identity(config):
    m = config.model
    return {
        "hidden_size": int(m.hidden_size),
        "num_layers": int(m.transformer.num_layers),
        "patch": list(m.patches.size),
        "use_se": bool(m.use_se),
        "se_reduction": int(m.se_reduction),
        "representation_size": m.representation_size,
        "classifier": m.classifier,
        "num_classes": int(config.num_classes),
        "image_size": int(config.image_size),
    }


def validate_config(config, workdir):
    """Raises ConfigError with one line for each way a config can fail before compiling."""
    if config.dataset not in registry.NAMES:
        raise ConfigError(
            f"config.dataset: unknown dataset {config.dataset!r}; expected one of "
            f"{', '.join(registry.NAMES)}"
        )
    name = config.model.get("name", "")
    try:
        variant = model_configs.get_config(name)
    except ValueError as e:
        raise ConfigError(f"config.model.name: {e}") from None
    if int(variant.hidden_size) != int(config.model.hidden_size):
        raise ConfigError(
            f"config.model: hidden_size {config.model.hidden_size} does not match {name} "
            f"({variant.hidden_size})"
        )
    devices = jax.device_count()
    if config.batch_size % devices:
        raise ConfigError(
            f"config.batch_size {config.batch_size} is not divisible by the {devices} devices"
        )
    if config.batch_size % (config.accum_steps * devices):
        raise ConfigError(
            f"config.batch_size {config.batch_size} must split into accum_steps "
            f"{config.accum_steps} micro-batches divisible by the {devices} devices"
        )
    if config.image_size % config.model.patches.size[0]:
        raise ConfigError(
            f"config.image_size {config.image_size} is not a multiple of the patch size "
            f"{config.model.patches.size[0]}"
        )
    if config.get("pretrained_path") and not tf.io.gfile.exists(config.pretrained_path):
        raise ConfigError(f"config.pretrained_path: {config.pretrained_path} does not exist")
    if config.get("init_from"):
        path = os.path.join(config.init_from, EXPORT_PARAMS)
        if not tf.io.gfile.exists(path):
            raise ConfigError(
                f"config.init_from: {path} does not exist; expected the workdir of a finished run"
            )
    _check_workdir(config, workdir)


def resolve_splits(config):
    """k-fold configs name a fold; their train/test splits come from the builder's fold files."""
    if config.get("fold") is None:
        return config
    if config.dataset not in registry.NAMES:
        return config  # validate_config names the dataset
    module = importlib.import_module(f"vit_se.datasets.{config.dataset}")
    if not hasattr(module, "fold_splits"):
        raise ConfigError(f"config.fold: dataset {config.dataset!r} has no cross-validation folds")
    try:
        train_split, test_split = module.fold_splits(config.fold, config.get("num_folds", 10))
    except ValueError as e:
        raise ConfigError(f"config.fold: {e}") from None
    config = config.copy_and_resolve_references()
    config.train_split = train_split
    config.test_split = test_split
    return config


def _check_workdir(config, workdir):
    saved = os.path.join(workdir, RUN_CONFIG)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (tf.io.gfile.exists(saved) and tf.io.gfile.exists(ckpt_dir)):
        return
    if not tf.io.gfile.listdir(ckpt_dir):
        return
    with tf.io.gfile.GFile(saved) as f:
        old = json.load(f).get("model_identity")
    new = _model_identity(config)
    if old is not None and old != new:
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
        raise ConfigError(
            f"workdir {workdir} holds checkpoints of another model ({diff} as (saved, config)); "
            "use a new --workdir"
        )


# ----------------------------------------------------------------------------------------------
# Model, parameters, steps.


def class_names(config):
    return CLASS_NAMES_WITH_CONTEMPT if config.num_classes == 8 else CLASS_NAMES


def make_eval_step(model, num_classes):
    def eval_step(params, batch):
        logits = model.apply({"params": params}, batch["image"])
        mask = batch["mask"]
        onehot = jax.nn.one_hot(batch["label"], num_classes)
        loss = optax.softmax_cross_entropy(logits, onehot)
        pred = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
        return {
            "loss_sum": jnp.sum(loss * mask),
            "confusion": jnp.einsum("n,nc,nd->cd", mask, onehot, pred),
        }

    return eval_step


def _host(tree):
    """Replicated global arrays -> numpy, valid on every process."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def evaluate(eval_step, params, data, batch_sh, num_classes):
    confusion = np.zeros((num_classes, num_classes))
    loss_sum = 0.0
    for batch in data.dataset.as_numpy_iterator():
        out = _host(eval_step(params, input_pipeline.to_global(batch, batch_sh)))
        confusion += out["confusion"]
        loss_sum += float(out["loss_sum"])
    result = metrics.from_confusion(confusion, loss_sum)
    if result["num_examples"] != data.num_examples:
        raise RuntimeError(
            f"evaluation counted {result['num_examples']} examples, expected {data.num_examples}"
        )
    result["confusion"] = confusion.astype(int).tolist()
    return result


# ----------------------------------------------------------------------------------------------
# Checkpoints and exports.


def checkpoint_manager(workdir, config):
    policy = preservation_policy.AnyPreservationPolicy(
        [
            preservation_policy.LatestN(n=config.keep_checkpoints),
            preservation_policy.BestN(
                get_metric_fn=lambda m: m[config.selection_metric],
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    # best_fn makes orbax store the metrics with each checkpoint (and rank them for best_step).
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m[config.selection_metric],
        best_mode="max",
        create=True,
    )
    return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options)


def export(params, config, workdir, extra, params_file=EXPORT_PARAMS):
    """Writes params.npz (vit_jax-style keys) and export.json: all predict/evaluate need."""
    params = jax.experimental.multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return
    ckpt_lib.save_npz(params, os.path.join(workdir, params_file))
    info = {
        "model": config.model.to_dict(),
        "num_classes": config.num_classes,
        "class_names": list(class_names(config)),
        "image_size": config.image_size,
        "dataset": config.dataset,
        "dataset_config": config.get("dataset_config"),
        "face_crop": bool(config.face_crop),
        "eval_crop": config.augment.crop,
        "resize_to": config.augment.resize_to,
        **extra,
    }
    _write_json(os.path.join(workdir, EXPORT_INFO), info)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _maybe_write_fake_data(config):
    """The demo config ships no data: it writes a dataset in the original layout first."""
    fake = config.get("fake_data")
    if not fake or not fake.get("enabled"):
        return
    root = config.manual_dir
    if tf.io.gfile.exists(root) and tf.io.gfile.listdir(root):
        return
    if jax.process_index() == 0:
        module = importlib.import_module(f"vit_se.datasets.{config.dataset}.fake_data")
        writer = getattr(module, f"write_fake_{config.dataset}")
        kwargs = {k: v for k, v in fake.items() if k != "enabled"}
        logging.info("Writing a synthetic %s layout to %s", config.dataset, root)
        writer(root, **kwargs)
    if jax.process_count() > 1:
        jax.experimental.multihost_utils.sync_global_devices("vit_se: fake data written")


# ----------------------------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, progress=None) -> dict:
    """Trains, evaluates, checkpoints and exports; returns the final metrics.

    `progress(step, total_steps, evaluated)` is called after every step (`evaluated` holds the
    metrics of an evaluation at that step, else None): notebooks draw their progress bar with it.
    """
    config = resolve_splits(config)
    validate_config(config, workdir)
    tf.io.gfile.makedirs(workdir)
    if jax.process_index() == 0:
        _write_json(
            os.path.join(workdir, RUN_CONFIG),
            {"config": config.to_dict(), "model_identity": _model_identity(config)},
        )
    _maybe_write_fake_data(config)

    mesh = sharding.make_mesh()
    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    builder = input_pipeline.load_builder(config)
    num_train = input_pipeline.num_examples(builder, config.train_split)
    steps_per_epoch = max(num_train // config.batch_size, 1)
    total_steps = (
        config.num_train_steps
        if config.num_train_steps > 0
        else int(config.num_epochs * steps_per_epoch)
    )
    local_batch = config.batch_size // jax.process_count()
    eval_batch = int(np.ceil(config.eval_batch_size / jax.device_count()) * jax.device_count())
    local_eval_batch = eval_batch // jax.process_count()

    model = create_model(config)
    lr_schedule = optim.schedule(config, steps_per_epoch, total_steps)
    tx = optim.optimizer(config, lr_schedule)

    abstract, state_sh = abstract_state(config, model, tx, mesh)
    mngr = checkpoint_manager(workdir, config)
    latest = mngr.latest_step()
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh
    )
    if latest is not None:
        state = xla_owned(mngr.restore(latest, args=ocp.args.StandardRestore(target)), state_sh)
        logging.info("Resumed from %s at step %d", workdir, latest)
    else:
        state = init_state(config, model, tx, state_sh)
    start_step = int(_host(state.step))

    train_step = jit_train_step(model, tx, lr_schedule, config, state_sh, mesh)
    eval_step = jax.jit(
        make_eval_step(model, config.num_classes),
        in_shardings=(state_sh.params, batch_sh),
        out_shardings=repl,
    )
    evals = {"val": config.val_split}
    if config.get("test_split"):
        evals["test"] = config.test_split
    eval_data = {
        name: input_pipeline.eval_dataset(builder, config, split, local_eval_batch)
        for name, split in evals.items()
        if split
    }

    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )
    if start_step == 0:
        writer.write_hparams(
            {k: v for k, v in _flat(config.to_dict()).items() if isinstance(v, int | float | str)}
        )
    hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)]
    if config.profile_steps and jax.process_index() == 0:
        hooks.append(
            periodic_actions.Profile(
                logdir=workdir, num_profile_steps=config.profile_steps, first_profile=10
            )
        )

    train_iter = input_pipeline.train_dataset(
        builder, config, local_batch, start_step
    ).as_numpy_iterator()
    logging.info(
        "Training %s on %s (%d examples, %d steps of %d) on %d devices, %d processes",
        config.model.name,
        config.dataset,
        num_train,
        total_steps,
        config.batch_size,
        jax.device_count(),
        jax.process_count(),
    )
    final = {}
    pending = []
    t0, last_log = time.time(), start_step
    for step in range(start_step + 1, total_steps + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            batch = input_pipeline.to_global(next(train_iter), batch_sh)
            state, step_metrics = train_step(state, batch)
        if step == start_step + 1:
            release_host_memory()  # what compiling the step freed
        pending.append(step_metrics)
        for hook in hooks:
            hook(step)
        if step % config.log_every == 0 or step == total_steps:
            logged = _host(pending)
            mean = {f"train/{k}": float(np.mean([m[k] for m in logged])) for k in logged[0]}
            dt = time.time() - t0
            mean["train/images_per_sec"] = (step - last_log) * config.batch_size / max(dt, 1e-9)
            writer.write_scalars(step, mean)
            pending, t0, last_log = [], time.time(), step
        evaluated = None
        if step % config.eval_every == 0 or step == total_steps:
            evaluated = {}
            for name, data in eval_data.items():
                result = evaluate(eval_step, state.params, data, batch_sh, config.num_classes)
                evaluated[name] = result
                writer.write_scalars(
                    step, {f"{name}/{k}": v for k, v in metrics.scalars(result).items()}
                )
            final = evaluated
        if evaluated is not None or step % config.checkpoint_every == 0:
            ckpt_metrics = (
                {k: float(v) for k, v in metrics.scalars(evaluated["val"]).items()}
                if evaluated and "val" in evaluated
                else None
            )
            mngr.save(step, args=ocp.args.StandardSave(state), metrics=ckpt_metrics)
        if progress is not None:
            progress(step, total_steps, evaluated)
    mngr.wait_until_finished()
    if not final:  # resumed after the last step: evaluate the restored state
        final = {
            name: evaluate(eval_step, state.params, data, batch_sh, config.num_classes)
            for name, data in eval_data.items()
        }
    best_step = mngr.best_step() if eval_data.get("val") else None
    extra = {"step": total_steps, "best_step": best_step, "metrics": final}
    export(state.params, config, workdir, extra)
    if best_step is not None:
        # The model selected on val_split, for evaluate/predict --params=best_params.npz.
        best = mngr.restore(best_step, args=ocp.args.StandardRestore(target))
        export(best.params, config, workdir, extra, params_file=BEST_PARAMS)
    writer.flush()
    mngr.close()
    val = final.get("val", {})
    logging.info(
        "Done: step %d, validation accuracy %.4f, mean class accuracy %.4f",
        total_steps,
        val.get("accuracy", float("nan")),
        val.get("mean_class_accuracy", float("nan")),
    )
    return final


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
