"""The jitted train step and the sharded train state it updates.

Kept free of TensorFlow and of the input pipeline so that benchmarks and accelerator checks can
build exactly the step the trainer runs on a machine that has only JAX.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_se import checkpoint as ckpt_lib
from vit_se import sharding

# XLA:CPU options for the train step (benchmarks/README.md has their measurements). Region-based
# copy insertion lets the optimizer update a donated parameter in place; without it XLA:CPU copies
# every parameter read in the backward pass at the start of the step and holds the copies all step
# long (a second set of parameters). The memory-optimised scheduler orders the step for peak
# memory; its cost in speed was within the measurement's noise.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_copy_insertion_use_region_analysis": True,
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
}


def compiler_options(platform):
    """The options every jitted program of the trainer compiles with for `platform`: the
    platform compiled for (`platform_of(mesh)`), which need not be this machine's."""
    return CPU_COMPILER_OPTIONS if platform == "cpu" else None


def platform_of(mesh):
    """'cpu', 'gpu' or 'tpu': what a program laid out on `mesh` is compiled for. The preflight
    compiles on a CPU for TPU devices, so nothing chosen by platform may ask JAX's default
    backend."""
    return mesh.devices.flat[0].platform


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _backbone_mask(params):
    """True for parameters frozen during `freeze_backbone_steps` (all but head and SE)."""
    trainable = ("head", "se")
    return {
        name: jax.tree_util.tree_map(lambda _, frozen=name not in trainable: frozen, sub)
        for name, sub in params.items()
    }


def make_train_step(
    model,
    tx,
    lr_schedule,
    *,
    num_classes,
    accum_steps=1,
    seed=0,
    label_smoothing=0.0,
    freeze_backbone_steps=0,
    skip_nonfinite=False,
):
    """(state, batch) -> (state, metrics): one optimizer step on a global batch.

    The batch holds `image` and `label`, and optionally `label_distribution` [B, C]: a soft target
    (FER+ vote distributions) that replaces the one-hot label in the loss; label smoothing
    composes with either. Accuracy counts the arg-max against `label`.

    `skip_nonfinite` and the `finite` metric: `apply_gradients`.
    """
    accum = int(accum_steps)
    base_rng = jax.random.PRNGKey(seed + 1)

    def loss_fn(params, images, targets, rng):
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy(logits, targets).mean(), logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        labels = batch["label"]
        if "label_distribution" in batch:
            targets = batch["label_distribution"].astype(jnp.float32)
        else:
            targets = jax.nn.one_hot(labels, num_classes)
        if label_smoothing:
            targets = optax.smooth_labels(targets, label_smoothing)
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
        freeze = None
        if freeze_backbone_steps:
            frozen = state.step < freeze_backbone_steps
            mask = _backbone_mask(state.params)

            def freeze(tree):
                return jax.tree_util.tree_map(
                    lambda x, m: jnp.where(frozen & m, 0.0, x), tree, mask
                )

            grads = freeze(grads)
        new_state, grad_norm, finite = apply_gradients(
            state, grads, tx, loss, skip_nonfinite=skip_nonfinite, mask_updates=freeze
        )
        out = {
            "loss": loss,
            "accuracy": correct / labels.shape[0],
            "grad_norm": grad_norm,
            "learning_rate": lr_schedule(state.step),
            "finite": finite,
        }
        return new_state, out

    return train_step


def apply_gradients(state, grads, tx, loss, *, skip_nonfinite=False, mask_updates=None):
    """(next state, gradient norm, finite): one optimizer update, shared by every task's step.

    `skip_nonfinite`: `tx` is wrapped in `optax.apply_if_finite` (`optim.optimizer`), which drops
    a non-finite update; `finite` is then its verdict on this step. Otherwise the update is the
    plain computation and `finite` says whether loss and gradient norm were; the trainer reads it
    when it logs. `mask_updates` (e.g. a frozen backbone's zeros) applies to the updates.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if mask_updates is not None:
        updates = mask_updates(updates)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    if skip_nonfinite:
        finite = opt_state.last_finite
    else:
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), grad_norm, finite


def _dummy_images(image_size):
    return jnp.zeros((1, image_size, image_size, 3), jnp.float32)


def abstract_state(model, tx, mesh, image_size, param_sharding="replicate", **fsdp):
    """Shapes of the train state and the sharding of every leaf, without computing anything.

    `param_sharding` and `fsdp` (pattern, min_size) go to `sharding.state_shardings`.
    """
    abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0), _dummy_images(image_size))[
        "params"
    ]
    abstract = jax.eval_shape(
        lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
        abstract_params,
    )
    return abstract, sharding.state_shardings(mesh, abstract, param_sharding, **fsdp)


def init_state(model, tx, state_sh, image_size, seed=0, source=None, loader=None):
    """A fresh state placed with `state_sh`; `source` (an official npz or a vit_se export)
    replaces the fresh parameters it holds: `loader(source, fresh host params)`, by default
    `checkpoint.load_pretrained` (a masked autoencoder loads its encoder alone)."""
    platform = platform_of(state_sh.step.mesh)
    params = _init_params(model, image_size, seed, source, platform, loader)
    params = xla_owned(_put(params, state_sh.params), state_sh.params)
    opt_state = jax.jit(tx.init, out_shardings=state_sh.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), state_sh.step)
    release_host_memory()
    return TrainState(step=step, params=params, opt_state=opt_state)


def xla_owned(tree, shardings):
    """The same arrays, in buffers XLA allocated itself.

    On a CPU an array made from host memory (numpy, or an orbax restore) can share that memory, and
    XLA does not donate a buffer it does not own: the first train step would then allocate its
    whole output anew (B/16: +330 MB of peak memory for the parameters alone).
    """
    return jax.jit(lambda t: jax.tree_util.tree_map(jnp.copy, t), out_shardings=shardings)(tree)


def jit_model_init(model, platform):
    """`model.init`, jitted for `platform`; for a CPU with CPU_COMPILER_OPTIONS.

    Initialisation is one independent random draw per parameter, and XLA:CPU's default schedule
    draws them all before it writes any out, planning scratch larger than the parameters
    themselves: a process that initialises B/16 and runs its forward pass peaked there. The
    memory-optimised schedule writes each parameter as it is drawn (next to no scratch); the values
    are the same (benchmarks/README.md has the figures).
    """
    return jax.jit(model.init, compiler_options=compiler_options(platform))


def jit_train_step(step_fn, state_sh, mesh):
    """`step_fn` (from `make_train_step`) jitted with the state donated and its shardings."""
    return jax.jit(
        step_fn,
        in_shardings=(state_sh, sharding.batch_sharding(mesh)),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=compiler_options(platform_of(mesh)),
    )


def release_host_memory():
    """Hands the C heap's free pages back to the OS (glibc; elsewhere nothing happens).

    Initialising the parameters and compiling leave freed staging and compiler memory in glibc's
    arenas, which stay mapped; on a CPU the step's own buffers then come on top of them. For B/16
    that is about 260 MB of peak memory, returned here for a few milliseconds of work.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _init_params(model, image_size, seed, source, platform, loader=None):
    """Fresh parameters, then an official checkpoint or an earlier run's export on top."""
    init = jit_model_init(model, platform)
    params = init(jax.random.PRNGKey(seed), _dummy_images(image_size))["params"]
    params = jax.tree_util.tree_map(np.asarray, params)
    if source:
        params = (loader or ckpt_lib.load_pretrained)(source, params)
    return params


def _put(tree, shardings):
    """Host numpy (identical on every process) -> global arrays with the given shardings."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
        tree,
        shardings,
    )
