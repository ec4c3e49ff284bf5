"""A training config resolved and checked in one place, before anything is written or compiled.

`prepare(config, run_dir)` is the one function that does it, and only the command entry points
(`vit_se.main`, `vit_se.kfold`, `vit_se.experiments`, a notebook's cell) call it; the trainer and
everything below it trust the config they are given. A wrong value should cost a user a second,
not the minutes a B/16 takes to compile or a dataset takes to build, so the checks run cheapest
first, each failing with one line that names the field and what was expected:

1. every value on its own and against the others (enumerations from `vit_se.choices`, ranges,
   sizes, divisibility that needs no device): pure Python, before JAX or TensorFlow is imported;
2. the paths the config names (pretrained_path, init_from, manual_dir), local or gs://, and
   whether the run directory can be written;
3. what needs JAX: the device count (the caller says when JAX may start, after
   `jax.distributed.initialize`);
4. the run directory: a workdir holding another run is never resumed with a different config
   (its identity is the whole resolved config minus the fields that may change on resume: paths,
   logging, evaluation and checkpoint frequencies, a longer training, how the model computes as
   opposed to what), so its records always describe its weights.

k-fold configs name a fold; resolving turns it into the builder's train/test splits, so the rest
of the trainer only ever sees split strings.
"""

from __future__ import annotations

import os
import re
import zipfile

from vit_se import choices, mae_sources, model_configs, workdir
from vit_se.configs import common
from vit_se.datasets import registry
from vit_se.errors import Error

# Fields that may differ between a run and its resumption (dotted paths in the config).
RESUMABLE = (
    "data_dir",
    "manual_dir",
    "pretrained_path",  # read at step 0 only
    "init_from",
    "num_train_steps",  # checked against the checkpoint's step instead: only longer
    "num_epochs",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "profile_steps",
    "prefetch",
    "eval_batch_size",
    "cache_max_bytes",
    "skip_bad_images",
    "max_consecutive_skips",
    "fake_data",
    "model.name",
    "model.sow_attention",
    "model.impl",
    "model.attention_impl",
    "model.remat_policy",
    "model.last_block_token_only",
)


class ConfigError(Error, ValueError):
    """A config that cannot run; the message is one line naming the field."""


def model_identity(config):
    """The model's shape: recorded in config.json for readers of the run directory."""
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
    config.face_crop = choices.face_crop_mode(config.face_crop)  # check_values came first
    if config.fake_data.enabled and run_dir is not None:
        base = os.path.join(run_dir, workdir.FAKE_DATA)
        if config.manual_dir is None:
            config.manual_dir = os.path.join(base, "manual")
        if config.data_dir is None:
            config.data_dir = os.path.join(base, "tensorflow_datasets")
    if config.fold is None:
        return config
    if config.dataset not in registry.NAMES:
        return config  # check_values names the dataset
    try:
        config.train_split, config.test_split = registry.fold_splits(
            config.dataset, config.fold, config.num_folds
        )
    except ValueError as e:
        raise ConfigError(f"config.fold: {e}") from None
    return config


# ----------------------------------------------------------------------------------------------
# Values.


def _choice(config, field, allowed):
    value = _get(config, field)
    if value not in allowed:
        raise ConfigError(
            f"config.{field}: {value!r}; expected one of {', '.join(map(str, allowed))}"
        )


def _get(config, field):
    for part in field.split("."):
        config = config[part]
    return config


def _at_least(config, field, low):
    if _get(config, field) < low:
        raise ConfigError(f"config.{field} {_get(config, field)} must be at least {low}")


def _between(config, field, low, high, high_open=False):
    value = _get(config, field)
    if not (low <= value < high if high_open else low <= value <= high):
        bracket = ")" if high_open else "]"
        raise ConfigError(f"config.{field} {value} must be in [{low}, {high}{bracket}")


def check_values(config):
    """Every field that can be checked without JAX, TensorFlow or the dataset (see the module
    docstring); raises ConfigError. `config` may be resolved or not."""
    _choice(config, "task", choices.TASKS)
    if config.task == "mae":
        _check_mae(config)
    else:
        _check_labelled_data(config)
    _check_model(config)
    _check_augment(config)
    _check_optimisation(config)
    for field in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        _at_least(config, field, 1)
    for field in ("eval_batch_size", "shuffle_buffer", "max_consecutive_skips"):
        _at_least(config, field, 1)
    for field in ("prefetch", "profile_steps", "fsdp_min_size", "cache_max_bytes"):
        _at_least(config, field, 0)
    _choice(config, "param_sharding", choices.PARAM_SHARDINGS)
    try:
        re.compile(config.fsdp_pattern)
    except re.error as e:
        raise ConfigError(
            f"config.fsdp_pattern {config.fsdp_pattern!r}: not a regex ({e})"
        ) from None
    _choice(config, "on_nonfinite", choices.NONFINITE_MODES)
    try:
        choices.face_crop_mode(config.face_crop)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_labelled_data(config):
    if config.dataset not in registry.NAMES:
        raise ConfigError(
            f"config.dataset: unknown dataset {config.dataset!r}; expected one of "
            f"{', '.join(registry.NAMES)}"
        )
    if config.fold is None and not config.train_split:
        raise ConfigError("config.train_split is empty; name a split (or a fold for CK+/JAFFE)")
    if config.fold is not None:
        _between(config, "fold", 0, config.num_folds, high_open=True)
    if config.val_split and config.val_split == config.test_split:
        raise ConfigError(
            f"config.val_split and config.test_split are both {config.val_split!r}: the split "
            "that selects the checkpoint cannot be the one reported"
        )
    if config.num_classes not in (7, 8):
        raise ConfigError(
            f"config.num_classes {config.num_classes}; expected 7 (the canonical classes) or 8 "
            "(with contempt)"
        )
    _choice(config, "selection_metric", choices.SELECTION_METRICS)


def _check_mae(config):
    """Task 'mae': the mask, the decoder and the unlabelled sources (names, face crops, no test
    split unless allowed); the dataset fields only name the demo's fake data, if any."""
    m = config.mae
    if config.fake_data.enabled and config.dataset not in registry.NAMES:
        raise ConfigError(
            f"config.dataset: {config.dataset!r} names the fake layout to write; expected one of "
            f"{', '.join(registry.NAMES)}"
        )
    patch = tuple(config.model.patches.size)
    if len(patch) == 2 and min(patch) >= 1 and patch[0] != patch[1]:
        raise ConfigError(f"config.model.patches.size {patch} must be square for MAE")
    if len(patch) == 2 and min(patch) >= 1 and config.image_size >= patch[0]:
        patches = (config.image_size // patch[0]) ** 2
        try:
            model_configs.num_visible(patches, m.mask_ratio)
        except ValueError as e:
            raise ConfigError(f"config.mae.mask_ratio: {e}") from None
    for field in ("decoder_width", "decoder_depth", "decoder_heads", "decoder_mlp_dim"):
        if m[field] is not None and m[field] < 1:
            raise ConfigError(f"config.mae.{field} {m[field]} must be a positive integer")
    if config.model.hidden_size >= 1 and config.model.transformer.num_heads >= 1:
        width, _, heads = model_configs.mae_decoder(config.model)
        width, heads = m.decoder_width or width, m.decoder_heads or heads
        if width % heads:
            raise ConfigError(
                f"config.mae.decoder_heads {heads} does not divide config.mae.decoder_width {width}"
            )
        if width % 4:
            raise ConfigError(
                f"config.mae.decoder_width {width} must be a multiple of 4 (its sin-cos position "
                "embedding)"
            )
    _at_least(config, "mae.holdout_every", 1)
    _at_least(config, "mae.figure_faces", 0)
    if not m.base_learning_rate > 0:
        raise ConfigError(f"config.mae.base_learning_rate {m.base_learning_rate} must be positive")
    _between(config, "mae.b2", 0.0, 1.0, high_open=True)
    _choice(config, "selection_metric", choices.MAE_SELECTION_METRICS)
    if config.accum_steps != 1:
        raise ConfigError(
            f"config.accum_steps {config.accum_steps}: MAE pretraining takes whole batches "
            "(accum_steps 1); lower batch_size or use param_sharding=fsdp / model.remat_policy"
        )
    try:
        mae_sources.from_config(m)
    except mae_sources.UnlabelledError as e:
        raise ConfigError(str(e)) from None


def _check_model(config):
    m = config.model
    patch = tuple(m.patches.size)
    if len(patch) != 2 or min(patch) < 1:
        raise ConfigError(f"config.model.patches.size {patch}; expected two positive sizes")
    for field in ("hidden_size", "transformer.num_layers", "transformer.num_heads"):
        _at_least(m, field, 1)
    _at_least(m, "transformer.mlp_dim", 1)
    if m.hidden_size % m.transformer.num_heads:
        raise ConfigError(
            f"config.model.transformer.num_heads {m.transformer.num_heads} does not divide "
            f"config.model.hidden_size {m.hidden_size}"
        )
    if m.use_se and (
        m.se_reduction < 1 or (m.representation_size or m.hidden_size) % m.se_reduction
    ):
        raise ConfigError(
            f"config.model.se_reduction {m.se_reduction} must divide the width "
            f"{m.representation_size or m.hidden_size}"
        )
    if m.representation_size is not None and m.representation_size < 1:
        raise ConfigError(f"config.model.representation_size {m.representation_size} must be >= 1")
    for field in ("dropout_rate", "attention_dropout_rate", "stochastic_depth"):
        _between(m, f"transformer.{field}", 0.0, 1.0, high_open=True)
    for field, allowed in (
        ("classifier", choices.CLASSIFIERS),
        ("posemb", choices.POSEMBS),
        ("dtype", choices.DTYPES),
        ("impl", choices.IMPLS),
        ("attention_impl", choices.ATTENTION_IMPLS),
        ("remat_policy", choices.REMAT_POLICIES),
    ):
        if m[field] not in allowed:
            raise ConfigError(
                f"config.model.{field}: {m[field]!r}; expected one of {', '.join(allowed)}"
            )
    size = config.image_size
    if size < 1 or size % patch[0] or size % patch[1]:
        raise ConfigError(f"config.image_size {size} is not a multiple of the patch size {patch}")


def _check_augment(config):
    a = config.augment
    _choice(config, "augment.crop", choices.CROPS)
    low, high = tuple(a.crop_scale)
    if not 0 < low <= high <= 1:
        raise ConfigError(
            f"config.augment.crop_scale {(low, high)}; expected 0 < low <= high <= 1 (fractions "
            "of the image area)"
        )
    if a.resize_to is not None and a.resize_to < config.image_size:
        raise ConfigError(
            f"config.augment.resize_to {a.resize_to} px is smaller than config.image_size "
            f"{config.image_size}: five-crop resizes to resize_to, then crops image_size"
        )
    _between(config, "augment.rotation", 0.0, 180.0)
    _between(config, "augment.color_jitter", 0.0, 1.0)
    _between(config, "augment.grayscale", 0.0, 1.0)
    # The square is clipped at the borders as its centre moves: a side of image_size erases 9/16
    # of the image on average; a larger square is no longer a cut-out.
    if not 0 <= a.cutout <= config.image_size:
        raise ConfigError(
            f"config.augment.cutout {a.cutout} px must be in [0, image_size {config.image_size}]"
        )


def _check_optimisation(config):
    _choice(config, "optimizer", choices.OPTIMIZERS)
    _choice(config, "schedule", choices.SCHEDULES)
    if not config.learning_rate > 0:
        raise ConfigError(f"config.learning_rate {config.learning_rate} must be positive")
    _at_least(config, "batch_size", 1)
    _at_least(config, "accum_steps", 1)
    if config.batch_size % config.accum_steps:
        raise ConfigError(
            f"config.batch_size {config.batch_size} is not divisible by config.accum_steps "
            f"{config.accum_steps}"
        )
    if config.num_train_steps <= 0 and not config.num_epochs > 0:
        raise ConfigError(
            "config.num_epochs must be positive when config.num_train_steps is not "
            f"(got {config.num_epochs} and {config.num_train_steps})"
        )
    for field in ("warmup_steps", "weight_decay", "grad_clip_norm", "freeze_backbone_steps"):
        _at_least(config, field, 0)
    _between(config, "momentum", 0.0, 1.0, high_open=True)
    _between(config, "label_smoothing", 0.0, 1.0, high_open=True)
    if config.schedule == "step":
        _between(config, "step_decay_factor", 0.0, 1.0)
        if not config.step_decay_every_epochs > 0:
            raise ConfigError(
                f"config.step_decay_every_epochs {config.step_decay_every_epochs} must be positive"
            )


# ----------------------------------------------------------------------------------------------
# Paths, devices and the run directory.


def check_paths(config):
    """Every path the config names exists (local, or gs:// through `vit_se.workdir`)."""
    if config.pretrained_path:
        path = config.pretrained_path
        if not workdir.exists(path):
            raise ConfigError(f"config.pretrained_path: {path} does not exist")
        if "://" not in path and not zipfile.is_zipfile(path):
            raise ConfigError(
                f"config.pretrained_path: {path} is not an .npz file (empty or truncated?); "
                "expected an official vit_jax / big_vision checkpoint or a vit_se export"
            )
    if config.init_from:
        path = workdir.run_weights(config.init_from)
        if not workdir.exists(path):
            raise ConfigError(
                f"config.init_from: {path} does not exist; expected the workdir of a finished run "
                f"(its {workdir.PARAMS}, or a pretraining run's {workdir.ENCODER})"
            )
    if config.task == "mae":
        for field in ("folder", "manual_root"):
            path = config.mae[field]
            if path and not workdir.isdir(path):
                raise ConfigError(f"config.mae.{field}: {path} is not a folder")
    # The demo writes its own files there; any other manual_dir holds the user's downloads.
    labelled = config.task != "mae"
    if (
        labelled
        and config.manual_dir
        and not config.fake_data.enabled
        and not workdir.isdir(config.manual_dir)
    ):
        raise ConfigError(
            f"config.manual_dir: {config.manual_dir} is not a folder; expected the folder of "
            f"the downloaded {config.dataset} files (README, 'Preparing the datasets')"
        )


def check_devices(config, devices, where=None, error=None):
    """The global batch splits over `devices` (a count; `where` names them, e.g. "the 8 chips of
    v5e-8") and over accum_steps micro-batches of them."""
    error = error or ConfigError
    where = where or f"the {devices} devices"
    if config.batch_size % devices:
        raise error(
            f"config.batch_size {config.batch_size} does not divide over {where}: use a "
            f"multiple of {devices}"
        )
    if config.batch_size % (config.accum_steps * devices):
        raise error(
            f"config.batch_size {config.batch_size} does not split into accum_steps "
            f"{config.accum_steps} micro-batches that divide over {where}"
        )


def _jax_device_count():
    import jax

    return jax.device_count()


def prepare(config, run_dir, device_count=_jax_device_count):
    """The resolved copy of `config` for a run in `run_dir`, every check passed (module docstring).

    `device_count`: an int, or a callable the checks call once the values and paths have passed
    (an entry point starts JAX there, after `jax.distributed.initialize`). Raises ConfigError or
    workdir.WorkdirError.
    """
    check_values(config)  # first: pure Python (resolving a k-fold config imports its builder)
    config = resolve(config, run_dir)
    names = registry.config_names(config.dataset) if config.dataset in registry.NAMES else ()
    if config.dataset_config is not None and config.dataset_config not in names:
        raise ConfigError(
            f"config.dataset_config: {config.dataset_config!r} is not a config of "
            f"{config.dataset}; expected one of {', '.join(names)}"
        )
    check_paths(config)
    workdir.check_writable(run_dir)
    check_devices(config, device_count() if callable(device_count) else int(device_count))
    check_same_run(config, run_dir)
    return config


def flat(d, prefix=""):
    """{'a.b': value} of a nested dict; tuples as lists (what config.json reads back)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _ignored(key, fields):
    return any(key == r or key.startswith(r + ".") for r in fields)


def differences(saved, config, also_ignore=()):
    """['field: saved -> new', ...] between a saved config dict and a config (or its dict), over
    the fields that make a run what it is: everything but RESUMABLE and `also_ignore`."""
    ignore = RESUMABLE + tuple(also_ignore)
    new = config if isinstance(config, dict) else config.to_dict()
    a = {k: v for k, v in flat(saved).items() if not _ignored(k, ignore)}
    b = {k: v for k, v in flat(new).items() if not _ignored(k, ignore)}
    # A field a run's config.json lacks came later: that run had its default behaviour.
    defaults = flat(common.get_config().to_dict())
    a.update({k: defaults[k] for k in b.keys() - a.keys() if k in defaults})
    return [
        f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def has_run(run_dir):
    """Whether the workdir holds checkpoints or an export of a run."""
    return bool(workdir.checkpoint_steps(run_dir)) or any(
        workdir.exists(os.path.join(run_dir, name))
        for name in (workdir.EXPORT_INFO, workdir.PRETRAINING_INFO)
    )


def check_same_run(config, run_dir):
    """A workdir that holds a run resumes only with that run's config (see RESUMABLE)."""
    if not has_run(run_dir):
        return
    saved = workdir.read_run_config(run_dir).get("config")
    if saved is None:
        return  # a run directory from before config.json: nothing to compare
    diff = differences(saved, config)
    if diff:
        raise ConfigError(
            f"workdir {run_dir} holds a run with another config ({'; '.join(diff)}); resume it "
            "with its own config, or use a new --workdir"
        )


def warnings(config, total_steps, steps_per_epoch):
    """Lines worth a warning: the run can go ahead, but probably not as its author meant."""
    out = []
    m = config.model
    pretraining = config.task == "mae"  # from random weights is what pretraining is for
    if (
        not pretraining
        and not config.pretrained_path
        and not config.init_from
        and m.hidden_size > 64
    ):
        out.append(
            f"config.model ViT-{m.name} (width {m.hidden_size}) starts from random weights: "
            "FER databases are far too small to train it from scratch; set "
            "--config.pretrained_path (an official .npz) or --config.init_from (a finished run)"
        )
    first_profile = 10  # clu's Profile hook, as the trainer sets it
    if config.profile_steps and total_steps < first_profile + config.profile_steps:
        out.append(
            f"config.profile_steps {config.profile_steps}: the trace starts after step "
            f"{first_profile} and this run has {total_steps} steps; nothing will be written"
        )
    if config.schedule == "step":
        every = max(int(round(config.step_decay_every_epochs * steps_per_epoch)), 1)
        decays = max(total_steps - config.warmup_steps - 1, 0) // every
        final = config.learning_rate * config.step_decay_factor**decays
        if decays and final < 1e-3 * config.learning_rate:
            out.append(
                f"config.schedule 'step' divides the learning rate by "
                f"{1 / config.step_decay_factor:g} {decays} times: {final:.2g} at the end "
                f"(from {config.learning_rate:g}); raise step_decay_every_epochs or use cosine"
            )
    return out
