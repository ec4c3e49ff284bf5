"""A training config resolved and checked before any data is read or anything compiled.

A wrong value should cost a user seconds, not the minutes a B/16 takes to compile or a dataset
takes to build, so every check that needs neither happens here, each failing with one line that
names the field. k-fold configs name a fold; `resolve` turns it into the builder's train/test
splits, so the rest of the trainer only ever sees split strings.
"""

from __future__ import annotations

import os

import jax

from vit_se import model_configs, workdir
from vit_se.datasets import registry
from vit_se.errors import Error
from vit_se.train_step import NONFINITE_MODES


class ConfigError(Error, ValueError):
    """A config that cannot run; the message is one line naming the field."""


def model_identity(config):
    """What must not change when a run resumes from its checkpoints."""
    m = config.model
    return {
        "hidden_size": int(m.hidden_size),
        "num_layers": int(m.transformer.num_layers),
        "patch": list(m.patches.size),
        "use_se": bool(m.use_se),
        "se_reduction": int(m.se_reduction),
        "representation_size": m.representation_size,
        "classifier": m.classifier,
        "scan": bool(m.scan),  # stacked blocks: another train-state tree
        "num_classes": int(config.num_classes),
        "image_size": int(config.image_size),
    }


def resolve(config, run_dir=None):
    """A copy with the fold's splits filled in and the model named after what it is.

    Any width, depth, head count, MLP width and patch size is a valid model; it keeps a variant's
    name only when all five equal that variant's ("custom" otherwise), so an export never calls a
    model "B/16" that is not one. Built-in fake data without a manual_dir / data_dir of its own
    goes under the run directory (WORKDIR/fake_data), never to a folder shared by every run.
    """
    config = config.copy_and_resolve_references()
    config.model.name = model_configs.variant_name(config.model)
    if config.fake_data.enabled and run_dir is not None:
        base = os.path.join(run_dir, workdir.FAKE_DATA)
        if config.manual_dir is None:
            config.manual_dir = os.path.join(base, "manual")
        if config.data_dir is None:
            config.data_dir = os.path.join(base, "tensorflow_datasets")
    if config.fold is None:
        return config
    if config.dataset not in registry.NAMES:
        return config  # validate names the dataset
    try:
        config.train_split, config.test_split = registry.fold_splits(
            config.dataset, config.fold, config.num_folds
        )
    except ValueError as e:
        raise ConfigError(f"config.fold: {e}") from None
    return config


def validate(config, run_dir):
    """Raises ConfigError with one line for each way a resolved config can fail early."""
    if config.dataset not in registry.NAMES:
        raise ConfigError(
            f"config.dataset: unknown dataset {config.dataset!r}; expected one of "
            f"{', '.join(registry.NAMES)}"
        )
    if config.on_nonfinite not in NONFINITE_MODES:
        raise ConfigError(
            f"config.on_nonfinite: {config.on_nonfinite!r}; expected one of "
            f"{', '.join(NONFINITE_MODES)}"
        )
    if config.max_consecutive_skips < 1:
        raise ConfigError(
            f"config.max_consecutive_skips {config.max_consecutive_skips} must be at least 1"
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
    patch = config.model.patches.size
    if config.image_size % patch[0] or config.image_size % patch[1]:
        raise ConfigError(
            f"config.image_size {config.image_size} is not a multiple of the patch size "
            f"{tuple(patch)}"
        )
    if config.model.hidden_size % config.model.transformer.num_heads:
        raise ConfigError(
            f"config.model.transformer.num_heads {config.model.transformer.num_heads} does not "
            f"divide config.model.hidden_size {config.model.hidden_size}"
        )
    if config.pretrained_path and not workdir.exists(config.pretrained_path):
        raise ConfigError(f"config.pretrained_path: {config.pretrained_path} does not exist")
    if config.init_from:
        path = os.path.join(config.init_from, workdir.PARAMS)
        if not workdir.exists(path):
            raise ConfigError(
                f"config.init_from: {path} does not exist; expected the workdir of a finished run"
            )
    _check_workdir(config, run_dir)


def _check_workdir(config, run_dir):
    """A workdir holding checkpoints of another model cannot be resumed with this config."""
    ckpt_dir = os.path.join(run_dir, workdir.CHECKPOINTS)
    if not (workdir.isdir(ckpt_dir) and workdir.listdir(ckpt_dir)):
        return
    old = workdir.read_run_config(run_dir).get("model_identity")
    new = model_identity(config)
    if old is not None and old != new:
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
        raise ConfigError(
            f"workdir {run_dir} holds checkpoints of another model ({diff} as (saved, config)); "
            "use a new --workdir"
        )
