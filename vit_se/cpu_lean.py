"""The CPU-lean computation of a ViT block: the same parameters and values, less memory and time on
XLA:CPU. Chosen by `config.model.impl = 'cpu_lean'` (and by 'auto' on a CPU); `vit_se.models`
holds the plain computation and picks between the two.

Everything here exists because of how XLA:CPU compiles a train step, not because the maths
differs. Each piece is exact up to float rounding (tests/test_models.py compares every logit and
every gradient with the plain model); benchmarks/README.md has what each one measured.

- Attention runs with the heads as a batch dimension ([B, H, T, D]). Token-major contractions
  ([B, T, H, D], as flax and `jax.nn.dot_product_attention` take them) are surrounded by
  transposes on XLA:CPU, which has no fused attention kernel to hide them in.
- `attend` differentiates softmax(logits) @ values by hand, keeping only the probabilities for
  the backward pass; autodiff through `jax.nn.softmax` also keeps its exponentials.
- The MLP keeps only its pre-activation for the backward pass and recomputes GELU there
  (`jax.checkpoint` of GELU and the second dense layer): two [B, T, mlp_dim] tensors fewer per
  block, for a few element-wise passes.
- `backward_in_order` makes each block's input gradient depend on its weight gradients. Without
  that, XLA:CPU's scheduler runs every weight-gradient matmul after the whole backward pass and
  holds every block's saved activations until then. A data dependence is the only ordering that
  survives: XLA:CPU removes optimisation barriers before it schedules.

On GPUs and TPUs none of this helps: their compilers fuse attention (cuDNN's fused attention on
NVIDIA GPUs) and schedule the backward pass well by themselves, and the custom VJP and the anchor
stand in the way of those fusions. Hence 'auto' uses this module on CPUs only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class DenseParams(nn.Module):
    """An `nn.Dense`'s kernel and bias (same names, shapes and initialisers), for code that
    applies them itself."""

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, in_features):
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
        return kernel, self.param("bias", self.bias_init, (self.features,), jnp.float32)


def _gelu_dense(h, kernel, bias):
    return nn.gelu(h) @ kernel + bias


# Keeps only the pre-activation h for the backward pass; GELU(h) and its derivative are recomputed
# there.
_gelu_dense_remat = jax.checkpoint(_gelu_dense)


class MlpBlock(nn.Module):
    """vit_jax's MlpBlock (Dense_0, GELU, Dense_1; same initialisers) with GELU recomputed in the
    backward pass. With dropout in training it computes as the plain block does."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs, deterministic):
        init = dict(
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0", **init)(inputs)
        kernel, bias = DenseParams(inputs.shape[-1], name="Dense_1", **init)(self.mlp_dim)
        kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
        if deterministic or self.dropout_rate == 0.0:
            return _gelu_dense_remat(x, kernel, bias)
        x = nn.Dropout(rate=self.dropout_rate)(nn.gelu(x), deterministic=deterministic)
        return nn.Dropout(rate=self.dropout_rate)(x @ kernel + bias, deterministic=deterministic)


@jax.custom_vjp
def attend(logits, values):
    """softmax(logits) @ values over [B, H, Q, K] x [B, H, K, D]; the backward pass keeps only the
    probabilities."""
    return _attend_fwd(logits, values)[0]


def _attend_fwd(logits, values):
    probs = jax.nn.softmax(logits)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, values), (probs, values)


def _attend_bwd(residuals, g):
    probs, values = residuals
    d_probs = jnp.einsum("bhqd,bhkd->bhqk", g, values)
    d_values = jnp.einsum("bhqk,bhqd->bhkd", probs, g)
    d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
    return d_logits, d_values


attend.defvjp(_attend_fwd, _attend_bwd)


class SelfAttention(nn.Module):
    """Self-attention with the parameter tree of flax's `MultiHeadDotProductAttention`
    (query/key/value/out, kernels [D, H, D/H] and [H, D/H, D]) and its initialisers, computed
    head-major.

    `first_query_only`: queries from token 0 only, output [B, 1, D]. `sow_weights` sows the
    softmax probabilities as flax's module does (`intermediates/attention_weights`) and changes
    nothing else: the output still comes from `attend` (XLA merges the two softmaxes).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x, *, deterministic, sow_weights=False, first_query_only=False):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} does not divide the width {width}")
        head_dim = width // self.num_heads
        dense = functools.partial(
            nn.DenseGeneral,
            features=(self.num_heads, head_dim),
            dtype=self.dtype,
            kernel_init=self.kernel_init,
        )
        # [B, T, H, d] <-> [B, H, T, d]
        heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)
        q = heads_first(dense(name="query")(x[:, :1] if first_query_only else x))
        k = heads_first(dense(name="key")(x))
        v = heads_first(dense(name="value")(x))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q / jnp.sqrt(head_dim).astype(q.dtype), k)
        if sow_weights:
            self.sow("intermediates", "attention_weights", jax.nn.softmax(logits))
        if not deterministic and self.dropout_rate > 0.0:
            probs = jax.nn.softmax(logits)
            keep = jax.random.bernoulli(
                self.make_rng("dropout"), 1.0 - self.dropout_rate, probs.shape
            )
            probs = jnp.where(keep, probs / (1.0 - self.dropout_rate), 0.0).astype(probs.dtype)
            out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
        else:
            out = attend(logits, v)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            name="out",
        )(heads_first(out))


def backward_in_order(fn, block, x, *args):
    """`fn(block, x, *args)` (a training-mode block), whose backward pass releases the input
    gradient only after the block's weight gradients exist.

    The order is a data dependence: the input gradient gets `0 * w` added, w an element of each
    weight gradient (so a non-finite weight gradient also reaches the input gradient; it spoils
    the update anyway). `args` are arrays the block reads (a scanned layer's drop-path rate);
    Python values belong in `fn`'s closure.
    """

    def forward(module, x, *args):
        return nn.vjp(fn, module, x, *args)

    def backward(vjp_fn, g):
        d_params, d_x, *d_args = vjp_fn(g)
        anchor = sum(jnp.ravel(d)[0] for d in jax.tree_util.tree_leaves(d_params))
        return (d_params, d_x + (0.0 * anchor).astype(d_x.dtype), *d_args)

    return nn.custom_vjp(fn, forward_fn=forward, backward_fn=backward)(block, x, *args)
