"""The jitted, sharded evaluation step and exact evaluation over a split.

Sits beside the train step, below everything that evaluates (the trainer, `vit_se.evaluate`,
k-fold, the experiment grids), as big_vision's evaluators sit below its trainer. Free of
TensorFlow: batches arrive as global arrays from whatever feeds them.

Exactness: the input pipeline pads the last batch with masked examples, the step sums a
confusion matrix weighted by the mask, and `evaluate` checks that the matrix counts every example
of the split exactly once, so a metric is never computed on a silently shorter split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_se import metrics, sharding


def make_eval_step(model, num_classes):
    """(params, batch) -> summed loss and confusion matrix of the batch's unmasked examples."""

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


def jit_eval_step(model, num_classes, params_sharding, mesh):
    """The eval step compiled for parameters laid out as `params_sharding` on `mesh`."""
    return jax.jit(
        make_eval_step(model, num_classes),
        in_shardings=(params_sharding, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


def to_host(tree):
    """Replicated global arrays -> numpy, valid on every process (multi-host included)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def evaluate(eval_step, params, batches, num_classes, num_examples):
    """Metrics of one split (see `vit_se.metrics`), with its integer confusion matrix.

    `batches`: global batches {'image', 'label', 'mask'}; `num_examples`: the split's size, which
    the confusion matrix must add up to.
    """
    confusion = np.zeros((num_classes, num_classes))
    loss_sum = 0.0
    for batch in batches:
        out = to_host(eval_step(params, batch))
        confusion += out["confusion"]
        loss_sum += float(out["loss_sum"])
    result = metrics.from_confusion(confusion, loss_sum)
    if result["num_examples"] != num_examples:
        raise RuntimeError(
            f"evaluation counted {result['num_examples']} examples, expected {num_examples}"
        )
    result["confusion"] = confusion.astype(int).tolist()
    return result
