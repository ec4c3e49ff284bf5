"""Shared by the tests that compare two ways of computing the same model (implementations, scan,
remat): perturbed parameters, a loss with informative gradients, and the tolerances."""

import flax
import jax
import jax.numpy as jnp
import numpy as np


def perturbed(params, scale=0.1, seed=2):
    """Non-zero head and non-trivial weights, so that every gradient is informative."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, noisy)


def grads_and_logits(model, params, x, mutable=False):
    def loss(p):
        kwargs = {"mutable": ["intermediates"]} if mutable else {}
        out = model.apply({"params": p}, x, train=True, **kwargs)
        logits = out[0] if mutable else out
        return jnp.sum(jnp.sin(logits)), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return grads, logits


# float32 sums in another order (head-major vs token-major contractions, a hand-written softmax
# VJP, recomputed GELU) differ by a few ulps: measured 2e-7 on the logits and 7e-7 on the largest
# gradient entry (largest gradient ~1). A wrong term (a dropped residual, a missing softmax
# correction) moves them by 1e-2 or more.
LOGIT_ATOL = 1e-5
GRAD_RTOL_OF_MAX = 1e-5


def assert_same_grads(grads, ref_grads):
    flat, ref = flax.traverse_util.flatten_dict(grads), flax.traverse_util.flatten_dict(ref_grads)
    assert flat.keys() == ref.keys()
    scale = max(float(np.max(np.abs(g))) for g in ref.values())
    assert scale > 0.01  # the comparison is not between two zero trees
    for key, g in flat.items():
        np.testing.assert_allclose(
            g, ref[key], atol=GRAD_RTOL_OF_MAX * scale, err_msg="/".join(key)
        )
