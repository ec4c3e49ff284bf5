"""The masked-autoencoder train and eval steps, jitted and sharded as the classifier's are.

Only the loss differs from the classifier's step: the state is `vit_se.train_step.TrainState`,
built, placed and jitted by `train_step` (`abstract_state`, `init_state`, `jit_train_step`) with
the same mesh, batch sharding and FSDP rule, and the optimizer and schedule are `vit_se.optim`'s
(`vit_se.train_setup` picks MAE's values). So the trainer's loop, checkpoints, resume and
preemption handle a pretraining run unchanged.

Randomness is a pure function of (seed, step): the masks and dropout of step s come from
fold_in(PRNGKey(seed + 1), s), so a resumed run draws the masks an uninterrupted one would.
Evaluation masks are fixed (fold_in(PRNGKey(seed + 2), batch index)): the held-out loss of two
evaluations differs only by the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vit_se import eval_step as eval_lib
from vit_se import mae, mae_checkpoint, sharding
from vit_se import train_step as train_lib


def scaled_learning_rate(base_learning_rate, batch_size):
    """He et al.'s linear scaling rule: base x global batch / 256."""
    return float(base_learning_rate) * int(batch_size) / 256.0


def make_train_step(model, tx, lr_schedule, *, norm_pix_loss=True, seed=0, skip_nonfinite=False):
    """(state, batch) -> (state, metrics): one optimizer step on a global batch {'image'}.

    Metrics: loss (masked patches), grad_norm, learning_rate, finite (`skip_nonfinite` and
    `finite`: `train_step.apply_gradients`, as for the classifier).
    """
    base_rng = jax.random.PRNGKey(seed + 1)
    patch = model.patch

    def loss_fn(params, images, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        pred, mask = model.apply(
            {"params": params},
            images,
            train=True,
            rngs={"mask": mask_rng, "dropout": dropout_rng},
        )
        return mae.loss(pred, mae.targets(images, patch, norm_pix_loss), mask)

    grad_fn = jax.value_and_grad(loss_fn)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        loss, grads = grad_fn(state.params, batch["image"], rng)
        new_state, grad_norm, finite = train_lib.apply_gradients(
            state, grads, tx, loss, skip_nonfinite=skip_nonfinite
        )
        out = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": lr_schedule(state.step),
            "finite": finite,
        }
        return new_state, out

    return train_step


def load_encoder_into(source, params):
    """`train_step.init_state`'s loader for a masked autoencoder: the checkpoint at `source`
    (vit_jax, big_vision, a vit_se export or an earlier encoder.npz) replaces the fresh encoder;
    the decoder stays as drawn."""
    return {**params, "encoder": mae_checkpoint.load_encoder(source, params["encoder"])}


# ----------------------------------------------------------------------------------------------
# Evaluation: the reconstruction loss of a held-out split.


def make_eval_step(model, *, norm_pix_loss=True):
    """(params, batch, rng) -> the summed per-example loss of the unmasked examples and their
    count; the batch holds `image` and `mask` (0 for the padding of a last batch)."""
    patch = model.patch

    def step(params, batch, rng):
        images = batch["image"]
        pred, mask = model.apply({"params": params}, images, rngs={"mask": rng})
        per_example = mae.per_example_loss(pred, mae.targets(images, patch, norm_pix_loss), mask)
        weight = batch["mask"].astype(jnp.float32)
        return {"loss_sum": jnp.sum(per_example * weight), "count": jnp.sum(weight)}

    return step


def jit_eval_step(model, params_sharding, mesh, *, norm_pix_loss=True):
    return jax.jit(
        make_eval_step(model, norm_pix_loss=norm_pix_loss),
        in_shardings=(params_sharding, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


def eval_rng(seed, batch_index):
    """The fixed masks of evaluation batch `batch_index`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed + 2), batch_index)


def evaluate(step, params, batches, num_examples, seed=0):
    """{'loss', 'num_examples'}: the mean masked-patch loss over a split, each example once."""
    loss_sum, count = 0.0, 0.0
    for i, batch in enumerate(batches):
        out = eval_lib.to_host(step(params, batch, eval_rng(seed, i)))
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
    if int(round(count)) != int(num_examples):
        raise RuntimeError(f"evaluation counted {count:g} examples, expected {num_examples}")
    return {"loss": loss_sum / max(count, 1.0), "num_examples": int(num_examples)}


def make_evaluator(model, eval_data, params_sharding, mesh, *, norm_pix_loss=True, seed=0):
    """params -> {'val': {'loss', 'num_examples'}} over `eval_data` (an
    `input_pipeline.EvalData`, e.g. from `vit_se.unlabelled.eval_dataset`)."""
    step = jit_eval_step(model, params_sharding, mesh, norm_pix_loss=norm_pix_loss)
    batch_sh = sharding.batch_sharding(mesh)

    def evaluator(params):
        batches = eval_data.global_batches(batch_sh)
        return {"val": evaluate(step, params, batches, eval_data.num_examples, seed)}

    return evaluator


def jit_reconstruct(model, params_sharding, mesh, *, norm_pix_loss=True):
    """(params, images, rng) -> (masked input, reconstruction), replicated, for figures
    (`vit_se.figures.reconstruction_figure`)."""

    def reconstruct(params, images, rng):
        pred, mask = model.apply({"params": params}, images, rngs={"mask": rng})
        return mae.reconstruction(pred, images, mask, model.patch, norm_pix_loss)

    return jax.jit(
        reconstruct,
        in_shardings=(params_sharding, sharding.replicated(mesh), sharding.replicated(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
