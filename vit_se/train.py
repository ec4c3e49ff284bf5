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
from typing import Any

import flax
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
from vit_se import input_pipeline, metrics, model_configs, models, optim, sharding
from vit_se.datasets import registry
from vit_se.datasets.labels import CLASS_NAMES, CLASS_NAMES_WITH_CONTEMPT

EXPORT_PARAMS = "params.npz"
EXPORT_INFO = "export.json"
RUN_CONFIG = "config.json"


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the field."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


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


def create_model(config, **overrides):
    return models.build_model(config.model, config.num_classes, **overrides)


def class_names(config):
    return CLASS_NAMES_WITH_CONTEMPT if config.num_classes == 8 else CLASS_NAMES


def _init_params(config, model):
    """Fresh parameters, then an official checkpoint or an earlier run's export on top."""
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), dummy)["params"]
    params = jax.tree_util.tree_map(np.asarray, params)
    source = config.get("pretrained_path") or (
        os.path.join(config.init_from, EXPORT_PARAMS) if config.get("init_from") else None
    )
    if source:
        params = ckpt_lib.load_pretrained(source, params)
    return params


def _put(tree, shardings):
    """Host numpy (identical on every process) -> global arrays with the given shardings."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
        tree,
        shardings,
    )


def _backbone_mask(params):
    """True for parameters frozen during `freeze_backbone_steps` (all but head and SE)."""
    trainable = ("head", "se")
    return {
        name: jax.tree_util.tree_map(lambda _, frozen=name not in trainable: frozen, sub)
        for name, sub in params.items()
    }


def make_train_step(model, tx, lr_schedule, config):
    num_classes = config.num_classes
    accum = int(config.accum_steps)
    base_rng = jax.random.PRNGKey(config.seed + 1)

    def loss_fn(params, images, targets, rng):
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy(logits, targets).mean(), logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        labels = batch["label"]
        targets = jax.nn.one_hot(labels, num_classes)
        if config.label_smoothing:
            targets = optax.smooth_labels(targets, config.label_smoothing)
        if accum == 1:
            (loss, logits), grads = grad_fn(state.params, batch["image"], targets, rng)
            correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        else:
            # Micro-batch i takes every accum-th example, so no example leaves its device.
            def split(x):
                x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
                return jnp.swapaxes(x, 0, 1)

            micro = (split(batch["image"]), split(targets), split(labels), jnp.arange(accum))

            def body(carry, xs):
                g_sum, l_sum, c_sum = carry
                x, t, lb, i = xs
                (loss_i, logits_i), g = grad_fn(state.params, x, t, jax.random.fold_in(rng, i))
                g_sum = jax.tree_util.tree_map(jnp.add, g_sum, g)
                c_sum = c_sum + jnp.sum(jnp.argmax(logits_i, -1) == lb)
                return (g_sum, l_sum + loss_i, c_sum), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
            (grads, loss, correct), _ = jax.lax.scan(body, init, micro)
            grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
            loss = loss / accum
        if config.freeze_backbone_steps:
            frozen = state.step < config.freeze_backbone_steps
            mask = _backbone_mask(state.params)
            grads = jax.tree_util.tree_map(lambda g, m: jnp.where(frozen & m, 0.0, g), grads, mask)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if config.freeze_backbone_steps:
            updates = jax.tree_util.tree_map(
                lambda u, m: jnp.where(frozen & m, 0.0, u), updates, mask
            )
        params = optax.apply_updates(state.params, updates)
        out = {
            "loss": loss,
            "accuracy": correct / labels.shape[0],
            "grad_norm": optax.global_norm(grads),
            "learning_rate": lr_schedule(state.step),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), out

    return train_step


def abstract_state(config, model, tx, mesh):
    """Shapes of the train state and the sharding of every leaf, without computing anything."""
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)["params"]
    abstract = jax.eval_shape(
        lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
        abstract_params,
    )
    state_sh = sharding.state_shardings(
        mesh, abstract, config.param_sharding, config.fsdp_pattern, config.fsdp_min_size
    )
    return abstract, state_sh


def init_state(config, model, tx, state_sh):
    """A fresh (or pretrained) state placed with `state_sh`."""
    params = _put(_init_params(config, model), state_sh.params)
    opt_state = jax.jit(tx.init, out_shardings=state_sh.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), state_sh.step)
    return TrainState(step=step, params=params, opt_state=opt_state)


def jit_train_step(model, tx, lr_schedule, config, state_sh, mesh):
    return jax.jit(
        make_train_step(model, tx, lr_schedule, config),
        in_shardings=(state_sh, sharding.batch_sharding(mesh)),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


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
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
    return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options)


def export(params, config, workdir, extra):
    """Writes params.npz (vit_jax-style keys) and export.json: all predict/evaluate need."""
    params = jax.experimental.multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return
    ckpt_lib.save_npz(params, os.path.join(workdir, EXPORT_PARAMS))
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, evaluates, checkpoints and exports; returns the final metrics."""
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
    if latest is not None:
        target = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh
        )
        state = mngr.restore(latest, args=ocp.args.StandardRestore(target))
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
    mngr.wait_until_finished()
    if not final:  # resumed after the last step: evaluate the restored state
        final = {
            name: evaluate(eval_step, state.params, data, batch_sh, config.num_classes)
            for name, data in eval_data.items()
        }
    best_step = _best_step(mngr, config.selection_metric)
    export(
        state.params,
        config,
        workdir,
        {"step": total_steps, "best_step": best_step, "metrics": final},
    )
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


def _best_step(mngr, metric):
    scored = []
    for step in mngr.all_steps():
        m = mngr.metrics(step)
        if m and metric in m:
            scored.append((m[metric], step))
    return max(scored)[1] if scored else None


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
