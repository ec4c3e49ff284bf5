"""ViT with a Squeeze-and-Excitation block on the class token (Aouayeb et al., 2021).

The parameter tree matches google-research/vision_transformer's linen `VisionTransformer` name for
name and shape, so official checkpoints load without renaming beyond what vit_jax itself does.
Every submodule whose path appears in a checkpoint is named explicitly: automatic names shift when
a module is added, and a shifted name is a silently unloaded weight.

The SE block sits on the pooled representation right before the head. The input is already a
vector, so there is no squeeze (pooling) step, only the excitation: c * sigmoid(W2 relu(W1 c)).
What is pooled is `classifier`'s choice: the class token ('token', vit_jax), the mean of the tokens
('gap'), or big_vision's multi-head attention pooling ('map', `MAPHead_0`, the pooling of every
SigLIP image tower); SE acts on that vector the same way in all three. `posemb` is 'learn' (a
parameter) or 'sincos2d' (big_vision's computed 2-D sin-cos embedding, no parameter).

How the model computes is chosen by fields that never change what it computes (each is exact up to
float rounding, tests/test_models.py and tests/test_scan_remat.py):
- `impl`: 'plain' is vit_jax's computation (flax attention through `jax.nn.dot_product_attention`,
  a Dense/GELU MLP, ordinary autodiff); 'cpu_lean' is `vit_se.cpu_lean`'s, which XLA:CPU runs
  faster and in less memory; 'auto' takes 'cpu_lean' on a CPU and 'plain' everywhere else.
- `attention_impl`: 'xla' or 'cudnn' (cuDNN's fused attention, NVIDIA GPUs), passed to
  `jax.nn.dot_product_attention` by the plain implementation.
- `last_block_token_only`: with a class-token classifier only the class token leaves the last
  block, so that block computes its queries, attention output and MLP for token 0 alone (7% of
  B/16's FLOPs; every other token's last-block output is thrown away by the head anyway).
- `scan`: the blocks as one `nn.scan` over a stacked parameter tree (big_vision's layout: one
  `Transformer/encoderblock` with a leading depth axis), one compiled block instead of `depth`;
  `vit_se.checkpoint` loads and saves the official unstacked layout either way.
- `remat_policy`: what each block keeps for the backward pass ('none', 'full', 'save_dots');
  L/16 and H/14 trade recomputation for memory at large batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vit_se import choices, cpu_lean

Dtype = Any

IMPLS = choices.IMPLS
ATTENTION_IMPLS = choices.ATTENTION_IMPLS
# name (choices.REMAT_POLICIES) -> jax.checkpoint policy of each block (big_vision's
# remat_policy, with shorter names):
# 'full' keeps only a block's input and recomputes the whole block in the backward pass;
# 'save_dots' keeps the outputs of the dense projections (matmuls without batch dimensions:
# q/k/v/out and the MLP's) and recomputes attention's two batched matmuls, softmax, GELU and
# LayerNorm, whose [B, H, T, T] and [B, T, mlp_dim] tensors are most of the memory.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
CLASSIFIERS = choices.CLASSIFIERS
POSEMBS = choices.POSEMBS
assert tuple(REMAT_POLICIES) == choices.REMAT_POLICIES


def _check_choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"model.{field} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}"
        )


def resolve_impl(impl, attention_impl="xla", backend=None):
    """'plain' or 'cpu_lean' for the `impl` field on `backend` (default: JAX's default backend).

    'auto' is the CPU path on a CPU, where XLA has no fused attention to lose, and the plain one
    elsewhere. cuDNN attention is the plain implementation's, so asking for it with 'cpu_lean' is
    a contradiction, reported rather than ignored.
    """
    _check_choice("impl", impl, IMPLS)
    _check_choice("attention_impl", attention_impl, ATTENTION_IMPLS)
    if impl == "auto":
        backend = backend or jax.default_backend()
        return "cpu_lean" if backend == "cpu" else "plain"
    if impl == "cpu_lean" and attention_impl == "cudnn":
        raise ValueError(
            "model.attention_impl 'cudnn' needs model.impl 'plain' or 'auto': 'cpu_lean' "
            "computes attention itself"
        )
    return impl


def resolve_attention_impl(attention_impl, backend=None):
    """cuDNN attention where the backend (default: JAX's) is a GPU; 'xla' elsewhere, so that a
    model trained with cuDNN attention still evaluates on a CPU (the values are the same)."""
    if attention_impl != "cudnn":
        return attention_impl
    backend = backend or jax.default_backend()
    if backend != "gpu":
        logging.warning(
            "model.attention_impl 'cudnn' needs an NVIDIA GPU; the backend is %r: using 'xla'",
            backend,
        )
        return "xla"
    return attention_impl


def posemb_sincos_2d(h, w, width, temperature=10_000.0):
    """big_vision's 'sincos2d' position embedding of an h x w grid (MoCo v3): [1, h*w, width].

    Per token at row y, column x: [sin(x w_d), cos(x w_d), sin(y w_d), cos(y w_d)] over
    w_d = temperature ** -(d / (width/4 - 1)), d = 0 .. width/4 - 1. A constant of the grid, so it
    is computed in float64 with NumPy once per trace (exact to float32 on every backend, whose
    float32 sines differ) and never stored in a checkpoint.
    """
    if width % 4 or width < 8:
        raise ValueError(
            f"posemb 'sincos2d' needs a width that is a multiple of 4 (>= 8), got {width}"
        )
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y = np.einsum("m,d->md", y.ravel().astype(np.float64), omega)
    x = np.einsum("m,d->md", x.ravel().astype(np.float64), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)


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
    """Stochastic depth: drops a whole residual branch per example.

    `rate` is a Python float, or an array when a scanned layer gets its own rate.
    """

    @nn.compact
    def __call__(self, x, rate, deterministic):
        if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
            return x
        keep = 1.0 - rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, mask_shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)


class MlpBlock(nn.Module):
    """vit_jax's MlpBlock: Dense, GELU (tanh approximation), dropout, Dense, dropout."""

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
        x = nn.Dropout(rate=self.dropout_rate)(nn.gelu(x), deterministic=deterministic)
        x = nn.Dense(inputs.shape[-1], dtype=self.dtype, name="Dense_1", **init)(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class MAPHead(nn.Module):
    """big_vision's multi-head attention pooling (`MAPHead` in big_vision/models/vit.py).

    A learned `probe` [1, 1, D] is the one query of a `MultiHeadDotProductAttention_0` over every
    token (the same kernel shapes as a block's attention), then `x + MlpBlock_0(LayerNorm_0(x))`;
    the pooled vector is that single row. No dropout, as in big_vision. Both implementations
    compute it with flax's own modules: one query row has no [B, H, T, T] scores or [B, T, mlp]
    activations, which are what `vit_se.cpu_lean` and fused attention kernels save.
    """

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    sow_attention: bool = False

    @nn.compact
    def __call__(self, x):
        n, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32)
        probe = jnp.tile(probe.astype(x.dtype), (n, 1, 1))
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            name="MultiHeadDotProductAttention_0",
        )(probe, x, deterministic=True, sow_weights=self.sow_attention)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
        x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="MlpBlock_0")(y, deterministic=True)
        return x[:, 0]


def _dot_product_attention(query, key, value, implementation):
    """`jax.nn.dot_product_attention` on [B, T, H, D]; cuDNN takes 16-bit inputs only, so with
    float32 compute its core runs in bfloat16 (and its output is cast back)."""
    if implementation == "cudnn" and query.dtype not in (jnp.bfloat16, jnp.float16):
        dtype = query.dtype
        query, key, value = (t.astype(jnp.bfloat16) for t in (query, key, value))
        out = jax.nn.dot_product_attention(query, key, value, implementation="cudnn")
        return out.astype(dtype)
    return jax.nn.dot_product_attention(query, key, value, implementation=implementation)


def attention_fn(implementation):
    """An `attention_fn` for flax's `MultiHeadDotProductAttention` computing through
    `jax.nn.dot_product_attention(implementation=...)`.

    Attention dropout in training needs the probabilities themselves, which a fused kernel never
    materialises: that case computes as flax's own `dot_product_attention` does. When flax asks
    for the weights to be sown (it passes `module`), they are computed beside the output, which
    still comes from the same kernel.
    """

    def attend(
        query,
        key,
        value,
        dropout_rng=None,
        dropout_rate=0.0,
        broadcast_dropout=False,
        deterministic=True,
        dtype=None,
        module=None,
    ):
        if module is not None:
            nn.dot_product_attention_weights(query, key, dtype=dtype, module=module)
        if not deterministic and dropout_rate > 0.0:
            return nn.dot_product_attention(
                query,
                key,
                value,
                dropout_rng=dropout_rng,
                dropout_rate=dropout_rate,
                broadcast_dropout=broadcast_dropout,
                deterministic=False,
                dtype=dtype,
            )
        return _dot_product_attention(query, key, value, implementation)

    return attend


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block, as in vit_jax.

    `impl` is resolved ('plain' or 'cpu_lean'). `token_only`: only token 0's output is computed
    (and returned, [B, 1, D]). The drop-path rate is a call argument so that a scanned block can
    take a different one per layer.
    """

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    impl: str = "plain"
    attention_impl: str = "xla"
    sow_attention: bool = False
    token_only: bool = False

    @nn.compact
    def __call__(self, inputs, deterministic, drop_path_rate=0.0):
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(inputs)
        if self.impl == "cpu_lean":
            x = cpu_lean.SelfAttention(
                num_heads=self.num_heads,
                dtype=self.dtype,
                dropout_rate=self.attention_dropout_rate,
                name="MultiHeadDotProductAttention_0",
            )(
                x,
                deterministic=deterministic,
                sow_weights=self.sow_attention,
                first_query_only=self.token_only,
            )
        else:
            x = nn.MultiHeadDotProductAttention(
                num_heads=self.num_heads,
                dtype=self.dtype,
                kernel_init=nn.initializers.xavier_uniform(),
                broadcast_dropout=False,
                dropout_rate=self.attention_dropout_rate,
                attention_fn=attention_fn(self.attention_impl),
                name="MultiHeadDotProductAttention_0",
            )(
                x[:, :1] if self.token_only else x,
                x,
                deterministic=deterministic,
                sow_weights=self.sow_attention,
            )
        if self.token_only:
            inputs = inputs[:, :1]
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = DropPath()(x, drop_path_rate, deterministic) + inputs

        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
        mlp = cpu_lean.MlpBlock if self.impl == "cpu_lean" else MlpBlock
        y = mlp(self.mlp_dim, self.dropout_rate, self.dtype, name="MlpBlock_0")(y, deterministic)
        return x + DropPath()(y, drop_path_rate, deterministic)


class Encoder(nn.Module):
    """Learned position embeddings (`posemb='learn'`; sincos2d ones are added before the class
    token joins, by `VisionTransformer`), `num_layers` blocks (unrolled or scanned), final
    LayerNorm."""

    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    dtype: Dtype = jnp.float32
    impl: str = "plain"  # resolved: 'plain' or 'cpu_lean'
    attention_impl: str = "xla"
    sow_attention: bool = False
    last_block_token_only: bool = False  # the last block computes token 0 only ([B, 1, D])
    scan: bool = False
    remat_policy: str = "none"
    posemb: str = "learn"

    def _drop_path_rate(self, i):
        # Linearly increasing with depth (Huang et al., 2016; DeiT).
        return self.stochastic_depth * i / max(self.num_layers - 1, 1)

    def _block_class(self, static_rate):
        if self.remat_policy == "none":
            return Encoder1DBlock
        # Arguments by position, self = 0: 2 is `deterministic`, 3 the drop-path rate when it is
        # a Python float. Inside a scan XLA cannot merge the recomputation back into the forward
        # pass, so CSE need not be prevented there (big_vision does the same).
        return nn.remat(
            Encoder1DBlock,
            policy=REMAT_POLICIES[self.remat_policy],
            prevent_cse=not self.scan,
            static_argnums=(2, 3) if static_rate else (2,),
        )

    def _apply_block(self, block, x, train, rate):
        if train and self.impl == "cpu_lean":
            if isinstance(rate, (int, float)):
                return cpu_lean.backward_in_order(lambda m, x: m(x, False, rate), block, x)
            return cpu_lean.backward_in_order(lambda m, x, r: m(x, False, r), block, x, rate)
        return block(x, not train, rate)

    @nn.compact
    def __call__(self, x, *, train, keep=None):
        if self.posemb == "learn":
            x = AddPositionEmbs(name="posembed_input")(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
        if keep is not None:
            # Only these tokens go on, each with its own position embedding: [N, K] indices into
            # the sequence (a masked autoencoder's visible patches, vit_se.mae).
            x = jnp.take_along_axis(x, keep[..., None], axis=1)
        block_fields = dict(
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            impl=self.impl,
            attention_impl=self.attention_impl,
            sow_attention=self.sow_attention,
        )
        if self.scan:
            # One block's parameters with a leading depth axis; every layer has the same shapes,
            # so the last one computes every token (last_block_token_only does not apply).
            if self.stochastic_depth:
                rates = jnp.asarray([self._drop_path_rate(i) for i in range(self.num_layers)])
                rate_axis = 0
            else:
                rates, rate_axis = 0.0, nn.broadcast
            block = self._block_class(static_rate=not self.stochastic_depth)(
                **block_fields, name="encoderblock"
            )

            def body(module, x, rate):
                return self._apply_block(module, x, train, rate), None

            x, _ = nn.scan(
                body,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=rate_axis,
                length=self.num_layers,
            )(block, x, rates)
        else:
            block_class = self._block_class(static_rate=True)
            for i in range(self.num_layers):
                last = i == self.num_layers - 1
                block = block_class(
                    **block_fields,
                    token_only=self.last_block_token_only and last,
                    name=f"encoderblock_{i}",
                )
                x = self._apply_block(block, x, train, self._drop_path_rate(i))
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
    """ViT-SE. With `use_se=False` it is vit_jax's VisionTransformer, parameter for parameter
    (with `scan=True`, big_vision's stacked layout of the same parameters).

    Speed options (see the module docstring; none changes a value beyond float rounding):
    impl, attention_impl, last_block_token_only, scan, remat_policy. `sow_attention` only sows:
    each block's `MultiHeadDotProductAttention_0/attention_weights` goes into 'intermediates'
    (the last block's are [N, heads, 1, T] when it computes the class token only), and with
    `classifier='map'` the probe's, `MAPHead_0/MultiHeadDotProductAttention_0/attention_weights`
    [N, heads, 1, T].
    """

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
    impl: str = "auto"
    attention_impl: str = "xla"
    last_block_token_only: bool = True
    scan: bool = False
    remat_policy: str = "none"
    posemb: str = "learn"

    def __post_init__(self):
        _check_choice("classifier", self.classifier, CLASSIFIERS)
        _check_choice("posemb", self.posemb, POSEMBS)
        _check_choice("impl", self.impl, IMPLS)
        _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("remat_policy", self.remat_policy, tuple(REMAT_POLICIES))
        super().__post_init__()

    def _attention_impl(self):
        return resolve_attention_impl(self.attention_impl)

    @nn.compact
    def __call__(self, inputs, *, train=False, keep=None):
        """Logits [N, num_classes] (or the pooled representation without a head).

        `keep` [N, K] (token indices into the class token and patches): the encoder runs on those
        tokens alone and its output tokens [N, K, D] are returned, not pooled (`vit_se.mae`).
        """
        impl = resolve_impl(self.impl, self.attention_impl)
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
        if self.posemb == "sincos2d":
            # big_vision's order: the patches get their embedding before the class token joins,
            # so the class token has none.
            x = x + jnp.asarray(posemb_sincos_2d(h, w, c), dtype)
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
            impl=impl,
            attention_impl=self._attention_impl(),
            sow_attention=self.sow_attention,
            last_block_token_only=(
                self.last_block_token_only and self.classifier == "token" and keep is None
            ),
            scan=self.scan,
            remat_policy=self.remat_policy,
            posemb=self.posemb,
            name="Transformer",
        )(x, train=train, keep=keep)
        if keep is not None:
            return x
        if self.classifier == "token":
            x = x[:, 0]
        elif self.classifier == "gap":
            x = jnp.mean(x, axis=1)
        else:
            x = MAPHead(
                num_heads=t["num_heads"],
                mlp_dim=t["mlp_dim"],
                dtype=dtype,
                sow_attention=self.sow_attention,
                name="MAPHead_0",
            )(x)

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
