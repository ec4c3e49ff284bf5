"""Learning-rate schedules and optimizers from the config, built from optax parts only."""

from __future__ import annotations

import jax
import optax


def schedule(config, steps_per_epoch, total_steps):
    """Linear warmup, then 'cosine', 'linear', 'step' (x factor every N epochs) or 'constant'."""
    lr = config.learning_rate
    warm = int(config.warmup_steps)
    rest = max(total_steps - warm, 1)
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, rest)
    elif config.schedule == "linear":
        after = optax.linear_schedule(lr, 0.0, rest)
    elif config.schedule == "step":
        every = max(int(round(config.step_decay_every_epochs * steps_per_epoch)), 1)
        boundaries = {b: config.step_decay_factor for b in range(every, rest, every)}
        after = optax.piecewise_constant_schedule(lr, boundaries)
    elif config.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(
            f"config.schedule: unknown {config.schedule!r}; expected cosine, linear, step, constant"
        )
    if warm <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def _decay_mask(params):
    """Weight decay on arrays of two or more axes (kernels, position embedding, cls), not on
    biases or LayerNorm scales.

    A scanned model's blocks (`Transformer/encoderblock`) carry a leading depth axis, which does
    not make a stacked bias a kernel.
    """

    def decayed(path, p):
        stacked = any(getattr(k, "key", None) == "encoderblock" for k in path)
        return p.ndim - int(stacked) > 1

    return jax.tree_util.tree_map_with_path(decayed, params)


def optimizer(config, lr_schedule):
    parts = []
    if config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.optimizer == "sgd":
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask))
        parts.append(optax.sgd(lr_schedule, momentum=config.momentum or None))
    elif config.optimizer == "adamw":
        parts.append(optax.adamw(lr_schedule, weight_decay=config.weight_decay, mask=_decay_mask))
    else:
        raise ValueError(f"config.optimizer: unknown {config.optimizer!r}; expected sgd or adamw")
    return optax.chain(*parts)
