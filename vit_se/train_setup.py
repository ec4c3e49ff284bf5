"""The trainer's model, optimizer, state shardings and jitted step, built from a resolved config in
one place.

The trainer runs these programs, the benchmarks time them and the tests drive them, so each must
get exactly the same ones from the same config; this module is the only one below the trainer
that reads the config's optimisation, sharding and model fields, and it hands each lower module
(`models`, `optim`, `train_step`, `sharding`) the values it uses. Free of TensorFlow, like
`train_step`.

`config.task` picks the programs: 'classify' (ViT-SE and its cross-entropy step) or 'mae' (the
same backbone as a masked autoencoder, `vit_se.mae`, with He et al.'s optimisation: AdamW beta2
0.95, peak rate `mae.base_learning_rate x batch_size / 256`, warmup then cosine to 0). Everything
else (mesh, shardings, state, donation, compiler options) is shared.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax.sharding import Mesh

from vit_se import mae, mae_step, model_configs, models, optim, train_step, workdir


def is_mae(config):
    return config.get("task", "classify") == "mae"


def mae_decoder(config):
    """(width, blocks, heads, MLP width) of the MAE decoder: config.mae's, unset ones from
    `model_configs.mae_decoder` of the encoder (MLP: 4 x width)."""
    width, depth, heads = model_configs.mae_decoder(config.model)
    m = config.mae
    width = m.decoder_width or width
    depth, heads = m.decoder_depth or depth, m.decoder_heads or heads
    return width, depth, heads, m.decoder_mlp_dim or 4 * width


def create_model(config, platform=None, **overrides):
    """The config's model (`config.model`, `config.num_classes`); `overrides` replace fields.

    `impl='auto'` is resolved for `platform`, the platform the programs are compiled for (None:
    this process's devices): the preflight compiles on a CPU for TPU devices. Task 'mae': the
    masked autoencoder around the same backbone.
    """
    if is_mae(config):
        width, depth, heads, mlp = mae_decoder(config)
        return mae.build_model(
            {**config.model.to_dict(), **overrides},
            mask_ratio=config.mae.mask_ratio,
            decoder_width=width,
            decoder_depth=depth,
            decoder_heads=heads,
            decoder_mlp_dim=mlp,
            image_size=config.image_size,
            platform=platform,
        )
    impl = models.resolve_impl(config.model.impl, config.model.attention_impl, backend=platform)
    overrides = {"impl": impl, **overrides}
    return models.build_model(config.model, config.num_classes, **overrides)


def total_steps(config, num_train):
    """(steps per epoch, total steps) for a training split of `num_train` examples."""
    steps_per_epoch = max(num_train // config.batch_size, 1)
    if config.num_train_steps > 0:
        return steps_per_epoch, int(config.num_train_steps)
    return steps_per_epoch, int(config.num_epochs * steps_per_epoch)


def learning_rate(config, steps_per_epoch, total):
    if is_mae(config):
        peak = mae_step.scaled_learning_rate(config.mae.base_learning_rate, config.batch_size)
        return optim.schedule(peak, total, "cosine", warmup_steps=config.warmup_steps)
    return optim.schedule(
        config.learning_rate,
        total,
        config.schedule,
        warmup_steps=config.warmup_steps,
        steps_per_epoch=steps_per_epoch,
        decay_every_epochs=config.step_decay_every_epochs,
        decay_factor=config.step_decay_factor,
    )


def skips_nonfinite(config):
    return config.on_nonfinite == "skip_step"


def optimizer(config, lr_schedule):
    return optim.optimizer(
        lr_schedule,
        config.optimizer,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        grad_clip_norm=config.grad_clip_norm,
        skip_nonfinite=config.max_consecutive_skips if skips_nonfinite(config) else 0,
        **({"b2": config.mae.b2} if is_mae(config) else {}),
    )


def pretrained_source(config):
    """The file whose weights replace fresh ones at step 0: an official npz or a finished run's
    export (`init_from`: its params.npz, or a pretraining run's encoder.npz), or None."""
    if config.pretrained_path:
        return config.pretrained_path
    if config.init_from:
        return workdir.run_weights(config.init_from)
    return None


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run of `config` trains with, on `mesh`."""

    model: Any
    lr_schedule: Any
    tx: Any
    mesh: Mesh
    abstract: train_step.TrainState  # of jax.ShapeDtypeStruct
    state_sh: train_step.TrainState  # of NamedSharding
    train_step: Any  # jitted (state, batch) -> (state, metrics), the state donated


def build(config, mesh, steps_per_epoch, total):
    """Model, schedule, optimizer, state shapes and shardings and the jitted step; computes
    nothing on the devices (the state's shapes come from `jax.eval_shape`)."""
    model = create_model(config, train_step.platform_of(mesh))
    lr = learning_rate(config, steps_per_epoch, total)
    tx = optimizer(config, lr)
    abstract, state_sh = train_step.abstract_state(
        model,
        tx,
        mesh,
        config.image_size,
        config.param_sharding,
        pattern=config.fsdp_pattern,
        min_size=config.fsdp_min_size,
    )
    if is_mae(config):
        step_fn = mae_step.make_train_step(
            model,
            tx,
            lr,
            norm_pix_loss=config.mae.norm_pix_loss,
            seed=config.seed,
            skip_nonfinite=skips_nonfinite(config),
        )
    else:
        step_fn = train_step.make_train_step(
            model,
            tx,
            lr,
            num_classes=config.num_classes,
            accum_steps=config.accum_steps,
            seed=config.seed,
            label_smoothing=config.label_smoothing,
            freeze_backbone_steps=config.freeze_backbone_steps,
            skip_nonfinite=skips_nonfinite(config),
        )
    jitted = train_step.jit_train_step(step_fn, state_sh, mesh)
    return Setup(model, lr, tx, mesh, abstract, state_sh, jitted)


def init_state(config, setup):
    """A fresh train state for `setup`, the pretrained weights the config names on top."""
    return train_step.init_state(
        setup.model,
        setup.tx,
        setup.state_sh,
        config.image_size,
        config.seed,
        source=pretrained_source(config),
        loader=mae_step.load_encoder_into if is_mae(config) else None,
    )
