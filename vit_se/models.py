"""ViT with a Squeeze-and-Excitation block on the class token (Aouayeb et al., 2021).

The parameter tree matches google-research/vision_transformer's linen `VisionTransformer` name for
name and shape, so official checkpoints load without renaming beyond what vit_jax itself does.
Every submodule whose path appears in a checkpoint is named explicitly: automatic names shift when
a module is added, and a shifted name is a silently unloaded weight.

The SE block sits on the pooled representation right before the head. The input is already a
vector, so there is no squeeze (pooling) step, only the excitation: c * sigmoid(W2 relu(W1 c)).
"""

from __future__ import annotations

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


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs, deterministic):
        dense = dict(
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        x = nn.Dense(self.mlp_dim, name="Dense_0", **dense)(inputs)
        x = nn.gelu(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = nn.Dense(inputs.shape[-1], name="Dense_1", **dense)(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block, as in vit_jax."""

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    sow_attention: bool = False

    @nn.compact
    def __call__(self, inputs, deterministic):
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(inputs)
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            broadcast_dropout=False,
            dropout_rate=self.attention_dropout_rate,
            deterministic=deterministic,
            name="MultiHeadDotProductAttention_0",
        )(x, x, sow_weights=self.sow_attention)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = DropPath(self.drop_path_rate)(x, deterministic) + inputs

        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
        y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name="MlpBlock_0")(
            y, deterministic
        )
        return x + DropPath(self.drop_path_rate)(y, deterministic)


class Encoder(nn.Module):
    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    dtype: Dtype = jnp.float32
    sow_attention: bool = False

    @nn.compact
    def __call__(self, x, *, train):
        x = AddPositionEmbs(name="posembed_input")(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
        for i in range(self.num_layers):
            # Linearly increasing drop rate with depth (Huang et al., 2016; DeiT).
            rate = self.stochastic_depth * i / max(self.num_layers - 1, 1)
            x = Encoder1DBlock(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=rate,
                dtype=self.dtype,
                sow_attention=self.sow_attention,
                name=f"encoderblock_{i}",
            )(x, deterministic=not train)
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
