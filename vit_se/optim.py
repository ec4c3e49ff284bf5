"""Learning-rate schedules and optimizers, built from optax parts only.

Both take the values they use, not a config: `vit_se.train_setup` reads those from the config.
"""

from __future__ import annotations

import jax
import optax


def schedule(
    learning_rate,
    total_steps,
    kind="cosine",
    *,
    warmup_steps=0,
    steps_per_epoch=1,
    decay_every_epochs=10.0,
    decay_factor=0.2,
):
    """Linear warmup, then `kind`: 'cosine', 'linear', 'step' (x `decay_factor` every
    `decay_every_epochs`) or 'constant' (vit_se.choices.SCHEDULES)."""
    warm = int(warmup_steps)
    rest = max(total_steps - warm, 1)
    if kind == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, rest)
    elif kind == "linear":
        after = optax.linear_schedule(learning_rate, 0.0, rest)
    elif kind == "step":
        every = max(int(round(decay_every_epochs * steps_per_epoch)), 1)
        boundaries = {b: decay_factor for b in range(every, rest, every)}
        after = optax.piecewise_constant_schedule(learning_rate, boundaries)
    else:  # 'constant'
        after = optax.constant_schedule(learning_rate)
    if warm <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warm), after], [warm])


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


def optimizer(
    lr_schedule,
    kind="adamw",
    *,
    weight_decay=0.0,
    momentum=0.9,
    grad_clip_norm=0.0,
    skip_nonfinite=0,
    b2=0.999,
):
    """'adamw' or 'sgd' (vit_se.choices.OPTIMIZERS), after global-norm clipping when
    `grad_clip_norm` > 0.

    `skip_nonfinite` > 0 wraps it in `optax.apply_if_finite`: an update with a NaN or Inf drops
    out (parameters and moments unchanged) on the device, with no host sync; after that many in a
    row optax would apply one anyway, so the trainer stops at that count first
    (config.max_consecutive_skips). `b2` is AdamW's second-moment decay (MAE pretraining: 0.95).
    """
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if kind == "sgd":
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay, mask=_decay_mask))
        parts.append(optax.sgd(lr_schedule, momentum=momentum or None))
    else:  # 'adamw'
        parts.append(optax.adamw(lr_schedule, b2=b2, weight_decay=weight_decay, mask=_decay_mask))
    tx = optax.chain(*parts)
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=int(skip_nonfinite))
    return tx
