"""ViT with a Squeeze-and-Excitation block on the class token (Aouayeb et al., 2021).

The parameter tree matches google-research/vision_transformer's linen `VisionTransformer` name for
name and shape, so official checkpoints load without renaming beyond what vit_jax itself does.
Every submodule whose path appears in a checkpoint is named explicitly: automatic names shift when
a module is added, and a shifted name is a silently unloaded weight.

The SE block sits on the pooled representation right before the head. The input is already a
vector, so there is no squeeze (pooling) step, only the excitation: c * sigmoid(W2 relu(W1 c)).

Three things differ from vit_jax in how (not what) the model computes, all measured on CPU by
benchmarks/train_speed.py and each exact up to float rounding:
- attention runs with the heads as a batch dimension ([B, H, T, D]); flax's module contracts in
  token-major layout, which XLA:CPU surrounds with transposes (B/16 inference 4.2 -> 5.2 images/s);
- with a class-token classifier only the class token leaves the last block, so that block computes
  its queries, attention output and MLP for token 0 alone (7% of B/16's FLOPs; every other token's
  last-block output is thrown away by the head anyway);
- in training, the backward pass keeps less: the MLP's activation is recomputed from its input, the
  attention keeps only its probabilities, and each block finishes its weight gradients before it
  hands its input gradient on (without that, XLA:CPU defers every weight-gradient matmul to the
  end of the backward pass and holds all blocks' activations until then). B/16 at batch 8: the
  step's scratch memory 2.0 -> 0.9 GB.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class AddPositionEmbs(nn.Module):
    """Learned position embeddings; row 0 belongs to the class token when there is one."""

    posemb_init: Callable = nn.initializers.normal(stddev=0.02)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs):
        shape = (1, inputs.shape[1], inputs.shape[2])
        pe = self.param("pos_embedding", self.posemb_init, shape, self.param_dtype)
        return inputs + pe.astype(inputs.dtype)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per example."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, mask_shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


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
# there (two [B, T, mlp_dim] tensors fewer per block, for a few element-wise passes).
_gelu_dense_remat = jax.checkpoint(_gelu_dense)


class MlpBlock(nn.Module):
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
def _attend(logits, values):
    """softmax(logits) @ values over [B, H, Q, K] x [B, H, K, D]; the backward pass keeps only the
    probabilities (autodiff through jax.nn.softmax also keeps its exponentials)."""
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


_attend.defvjp(_attend_fwd, _attend_bwd)


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with the parameter tree of flax's `MultiHeadDotProductAttention`
    (query/key/value/out, kernels [D, H, D/H] and [H, D/H, D]) and the same initialisers, so
    vit_jax checkpoints load unchanged; computed head-major (see the module docstring).

    `first_query_only`: queries from token 0 only, output [B, 1, D].
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
        dropout = not deterministic and self.dropout_rate > 0.0
        if sow_weights or dropout:
            probs = jax.nn.softmax(logits)
            if sow_weights:
                self.sow("intermediates", "attention_weights", probs)
            if dropout:
                keep = jax.random.bernoulli(
                    self.make_rng("dropout"), 1.0 - self.dropout_rate, probs.shape
                )
                probs = jnp.where(keep, probs / (1.0 - self.dropout_rate), 0.0).astype(probs.dtype)
            out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
        else:
            out = _attend(logits, v)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            name="out",
        )(heads_first(out))


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block, as in vit_jax."""

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    sow_attention: bool = False
    first_token_only: bool = False  # only token 0's output is computed (and returned, [B, 1, D])

    @nn.compact
    def __call__(self, inputs, deterministic):
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(inputs)
        x = MultiHeadSelfAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            dropout_rate=self.attention_dropout_rate,
            name="MultiHeadDotProductAttention_0",
        )(
            x,
            deterministic=deterministic,
            sow_weights=self.sow_attention,
            first_query_only=self.first_token_only,
        )
        if self.first_token_only:
            inputs = inputs[:, :1]
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = DropPath(self.drop_path_rate)(x, deterministic) + inputs

        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
        y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name="MlpBlock_0")(
            y, deterministic
        )
        return x + DropPath(self.drop_path_rate)(y, deterministic)


def _backward_in_order(block, x):
    """`block(x)` in training, whose backward pass releases the input gradient only after the
    block's weight gradients exist.

    XLA:CPU's scheduler otherwise runs every weight-gradient matmul after the whole backward pass,
    keeping each block's saved activations (and output gradients) alive until then. The order is a
    data dependence: the input gradient gets `0 * w` added, w an element of each weight gradient
    (so a non-finite weight gradient also reaches the input gradient; it spoils the update anyway).
    """

    def apply(module, x):
        return module(x, False)  # not deterministic: training

    def forward(module, x):
        return nn.vjp(apply, module, x)

    def backward(vjp_fn, g):
        d_params, d_x = vjp_fn(g)
        anchor = sum(jnp.ravel(d)[0] for d in jax.tree_util.tree_leaves(d_params))
        return d_params, d_x + (0.0 * anchor).astype(d_x.dtype)

    return nn.custom_vjp(apply, forward_fn=forward, backward_fn=backward)(block, x)


class Encoder(nn.Module):
    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    dtype: Dtype = jnp.float32
    sow_attention: bool = False
    first_token_only: bool = False  # the last block computes token 0 only (output [B, 1, D])

    @nn.compact
    def __call__(self, x, *, train):
        x = AddPositionEmbs(name="posembed_input")(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
        for i in range(self.num_layers):
            # Linearly increasing drop rate with depth (Huang et al., 2016; DeiT).
            rate = self.stochastic_depth * i / max(self.num_layers - 1, 1)
            block = Encoder1DBlock(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=rate,
                dtype=self.dtype,
                sow_attention=self.sow_attention,
                first_token_only=self.first_token_only and i == self.num_layers - 1,
                name=f"encoderblock_{i}",
            )
            if train and not self.sow_attention:
                x = _backward_in_order(block, x)
            else:
                x = block(x, deterministic=not train)
        return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)


class SqueezeExcitation(nn.Module):
    """Excitation on a feature vector: x * sigmoid(W2 relu(W1 x)), W1 to width // reduction."""

    reduction: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        if width % self.reduction:
            raise ValueError(f"se_reduction {self.reduction} does not divide the width {width}")
        w = nn.Dense(width // self.reduction, dtype=self.dtype, name="reduce")(x)
        w = nn.sigmoid(nn.Dense(width, dtype=self.dtype, name="expand")(nn.relu(w)))
        self.sow("intermediates", "excitation", w)
        return x * w


class VisionTransformer(nn.Module):
    """ViT-SE. With `use_se=False` it is vit_jax's VisionTransformer, parameter for parameter."""

    num_classes: int | None
    patches: Any
    transformer: Any
    hidden_size: int
    representation_size: int | None = None
    classifier: str = "token"
    use_se: bool = True
    se_reduction: int = 4
    dtype: Dtype = jnp.float32
    sow_attention: bool = False

    @nn.compact
    def __call__(self, inputs, *, train=False):
        if self.classifier not in ("token", "gap"):
            raise ValueError(f"classifier must be 'token' or 'gap', got {self.classifier!r}")
        dtype = jnp.dtype(self.dtype)
        x = inputs.astype(dtype)
        x = nn.Conv(
            self.hidden_size,
            kernel_size=tuple(self.patches["size"]),
            strides=tuple(self.patches["size"]),
            padding="VALID",
            dtype=dtype,
            name="embedding",
        )(x)
        n, h, w, c = x.shape
        x = jnp.reshape(x, (n, h * w, c))
        if self.classifier == "token":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
            x = jnp.concatenate([jnp.tile(cls.astype(dtype), (n, 1, 1)), x], axis=1)

        t = dict(self.transformer)
        x = Encoder(
            num_layers=t["num_layers"],
            mlp_dim=t["mlp_dim"],
            num_heads=t["num_heads"],
            dropout_rate=t.get("dropout_rate", 0.0),
            attention_dropout_rate=t.get("attention_dropout_rate", 0.0),
            stochastic_depth=t.get("stochastic_depth", 0.0),
            dtype=dtype,
            sow_attention=self.sow_attention,
            # Attention maps of every token are what sow_attention is for; keep them whole.
            first_token_only=self.classifier == "token" and not self.sow_attention,
            name="Transformer",
        )(x, train=train)
        x = x[:, 0] if self.classifier == "token" else jnp.mean(x, axis=1)

        if self.representation_size:
            x = nn.tanh(nn.Dense(self.representation_size, dtype=dtype, name="pre_logits")(x))
        if self.use_se:
            x = SqueezeExcitation(self.se_reduction, dtype=dtype, name="se")(x)
        self.sow("intermediates", "pre_logits", x)
        if self.num_classes:
            x = nn.Dense(
                self.num_classes,
                dtype=dtype,
                kernel_init=nn.initializers.zeros,
                name="head",
            )(x)
        return x.astype(jnp.float32)


def build_model(model_config, num_classes, **overrides):
    """Instantiates the model from a config made by `vit_se.model_configs`."""
    kwargs = {k: v for k, v in dict(model_config).items() if k != "name"}
    kwargs.update(overrides)
    return VisionTransformer(num_classes=num_classes, **kwargs)
