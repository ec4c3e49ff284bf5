"""Shared by the tests that compare two ways of computing the same model (implementations, scan,
remat): perturbed parameters, a loss with informative gradients, and the comparisons."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import tolerances


def perturbed(params, scale=0.1, seed=2):
    """Non-zero head and non-trivial weights, so that every gradient is informative.

    One NumPy draw sliced over the leaves: drawing each leaf with jax.random compiled a sampler
    per parameter shape, seconds per model on 2 cores.
    """
    leaves, tree = jax.tree_util.tree_flatten(params)
    noise = np.random.default_rng(seed).standard_normal(sum(p.size for p in leaves))
    noisy, start = [], 0
    for p in leaves:
        chunk = noise[start : start + p.size].reshape(p.shape)
        noisy.append(jnp.asarray(np.asarray(p) + scale * chunk, dtype=p.dtype))
        start += p.size
    return jax.tree_util.tree_unflatten(tree, noisy)


def grads_and_logits(model, params, x, mutable=False):
    def loss(p):
        kwargs = {"mutable": ["intermediates"]} if mutable else {}
        out = model.apply({"params": p}, x, train=True, **kwargs)
        logits = out[0] if mutable else out
        return jnp.sum(jnp.sin(logits)), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return grads, logits


# Two ways of computing the same model sum in other orders (head-major vs token-major contractions,
# a hand-written softmax VJP, recomputed GELU, scanned blocks): they agree to float32 rounding,
# bounded by the rule in tests/tolerances.py with n the model's summed reduction lengths. A wrong
# term (a dropped residual, a missing softmax correction) moves logits and gradients by 1e-2 of
# their scale or more, far outside it.


def assert_same_logits(logits, ref_logits, model, x, err_msg=""):
    """Logits of `model` on images x [N, S, S, 3] computed two ways."""
    tolerances.assert_close(
        logits, ref_logits, tolerances.vit_sums(model, x.shape[1]), err_msg=err_msg
    )


def assert_same_grads(grads, ref_grads, model, x):
    """Every parameter gradient of a loss of `model` on x, against the reference's, at the scale
    of the largest reference gradient (weight gradients are sums over the batch: their size is
    not their own rounding scale)."""
    flat, ref = flax.traverse_util.flatten_dict(grads), flax.traverse_util.flatten_dict(ref_grads)
    assert flat.keys() == ref.keys()
    scale = max(float(np.max(np.abs(g))) for g in ref.values())
    assert scale > 0.01  # the comparison is not between two zero trees
    n = tolerances.vit_grad_sums(model, x.shape[1], x.shape[0])
    for key, g in flat.items():
        tolerances.assert_close(g, ref[key], n, scale=scale, err_msg="/".join(key))
