"""Masked-autoencoder pretraining (He et al., 2021) of ViT-SE's own backbone.

The encoder is `vit_se.models.VisionTransformer` itself (no SE, no head), run on the visible
patches and the class token only (`keep`): its parameters are named and shaped exactly as a
classifier's backbone (`embedding`, `cls`, `Transformer/posembed_input`, `encoderblock_N`,
`encoder_norm`), so `params['encoder']` is an official-layout ViT that a ViT-SE fine-tune loads
with a fresh SE block and head (`vit_se.mae_checkpoint`). Every speed option of the model
(`impl`, `scan`, `remat_policy`, `dtype`) applies to the encoder unchanged.

As in the paper's reference code (github.com/facebookresearch/mae, models_mae.py):
- masking draws uniform noise per example and patch and keeps the patches of the smallest noise
  (argsort), so every example has exactly `num_visible` visible patches at random places, a
  different set per example and per step (the `mask` rng);
- the light decoder projects the encoder's tokens to its own width, puts a learned mask token at
  every masked place, adds a fixed 2-D sin-cos position embedding (the reference code's
  `get_2d_sincos_pos_embed`, class-token row zero), runs its own transformer blocks (the same
  `Encoder1DBlock` as the encoder) and predicts each patch's pixels;
- the loss is the mean squared error over the masked patches only, against the patch's pixels
  normalised by their own mean and variance when `norm_pix_loss` (the paper's default).

Pixels are the model's inputs, in [-1, 1]: the targets are patches of exactly what the encoder
saw.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_se import model_configs, models
from vit_se.errors import Error

# Variance floor of the per-patch normalisation (the reference code's 1e-6): a flat patch would
# otherwise divide by zero.
NORM_PIX_EPS = 1e-6


class MaeConfigError(Error, ValueError):
    """A masked-autoencoder setting that cannot work (mask ratio, decoder widths)."""


def num_visible(num_patches, mask_ratio, where="config.mae.mask_ratio"):
    """Visible patches per example (`model_configs.num_visible`); a ratio outside (0, 1), or one
    that leaves no visible patch, is a one-line MaeConfigError naming `where`."""
    try:
        return model_configs.num_visible(num_patches, mask_ratio)
    except ValueError as e:
        raise MaeConfigError(f"{where}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Masking:
    """One draw of random masks, in patch indices (0 .. num_patches - 1) per example.

    keep [B, K]: the visible patches, in the encoder's token order; restore [B, N]: where each
    patch sits in the shuffled order (visible first), to put decoder tokens back in place;
    mask [B, N]: 1.0 for masked patches, 0.0 for visible ones.
    """

    keep: jax.Array
    restore: jax.Array
    mask: jax.Array


def random_masking(rng, batch, num_patches, mask_ratio):
    """Per-example random masks: argsort of uniform noise, the smallest `num_visible` kept."""
    visible = num_visible(num_patches, mask_ratio)
    noise = jax.random.uniform(rng, (batch, num_patches))
    shuffle = jnp.argsort(noise, axis=1)
    restore = jnp.argsort(shuffle, axis=1)
    keep = shuffle[:, :visible]
    shuffled_mask = (jnp.arange(num_patches) >= visible).astype(jnp.float32)
    mask = jnp.take_along_axis(jnp.broadcast_to(shuffled_mask, (batch, num_patches)), restore, 1)
    return Masking(keep=keep.astype(jnp.int32), restore=restore.astype(jnp.int32), mask=mask)


def patchify(images, patch):
    """[B, H, W, C] -> [B, N, p*p*C], patches in the order of the encoder's tokens (row-major)."""
    b, h, w, c = images.shape
    gh, gw = h // patch, w // patch
    x = images[:, : gh * patch, : gw * patch].reshape(b, gh, patch, gw, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches, patch, grid, channels=3):
    """The inverse of `patchify`: [B, N, p*p*C] -> [B, gh*p, gw*p, C]."""
    b = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(b, gh, gw, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * patch, gw * patch, channels)


def targets(images, patch, norm_pix_loss=True):
    """The pixels each patch's prediction is compared with: [B, N, p*p*3] (float32)."""
    t = patchify(images.astype(jnp.float32), patch)
    if not norm_pix_loss:
        return t
    mean = jnp.mean(t, axis=-1, keepdims=True)
    var = jnp.var(t, axis=-1, keepdims=True)
    return (t - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def per_example_loss(pred, target, mask):
    """Mean squared error over each example's masked patches only: [B]."""
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    return jnp.sum(per_patch * mask, axis=1) / jnp.sum(mask, axis=1)


def loss(pred, target, mask):
    """The paper's loss: the mean squared error over every masked patch of the batch.

    Every example masks the same number of patches, so this is also the mean of
    `per_example_loss`.
    """
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def sincos_2d(grid_h, grid_w, width):
    """The reference code's fixed 2-D sin-cos position embedding of a grid: [1, gh*gw, width].

    Token (row y, column x): [sin(x w_d), cos(x w_d), sin(y w_d), cos(y w_d)] over
    w_d = 10000 ** -(d / (width / 4)), d = 0 .. width/4 - 1 (models_mae.py's
    get_2d_sincos_pos_embed). A constant, computed in float64 once per trace.
    """
    if width % 4:
        raise MaeConfigError(
            f"config.mae.decoder_width: {width} must be a multiple of 4 (sin-cos embedding)"
        )
    quarter = width // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    y, x = np.mgrid[:grid_h, :grid_w]
    ox = np.einsum("m,d->md", x.ravel().astype(np.float64), omega)
    oy = np.einsum("m,d->md", y.ravel().astype(np.float64), omega)
    pe = np.concatenate([np.sin(ox), np.cos(ox), np.sin(oy), np.cos(oy)], axis=1)
    return pe[None].astype(np.float32)


def _dense(features, name, dtype):
    # The reference code's initialisation of every decoder Linear: xavier uniform, zero bias.
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.zeros,
        name=name,
    )


class Decoder(nn.Module):
    """Encoder tokens (visible patches, class token first when there is one) -> the pixels of
    every patch, [B, N, patch_dim]."""

    grid: tuple[int, int]
    patch_dim: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    has_cls: bool = True
    dtype: Any = jnp.float32
    impl: str = "plain"  # resolved: 'plain' or 'cpu_lean'
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, tokens, restore, *, train=False):
        n = tokens.shape[0]
        num_patches = self.grid[0] * self.grid[1]
        x = _dense(self.width, "embed", self.dtype)(tokens)
        cls, visible = (x[:, :1], x[:, 1:]) if self.has_cls else (x[:, :0], x)
        mask_token = self.param(
            "mask_token", nn.initializers.normal(stddev=0.02), (1, 1, self.width), jnp.float32
        )
        masked = jnp.broadcast_to(
            mask_token.astype(x.dtype), (n, num_patches - visible.shape[1], self.width)
        )
        # Shuffled order (visible first, then masked) back to patch order.
        x = jnp.take_along_axis(jnp.concatenate([visible, masked], 1), restore[..., None], 1)
        x = x + jnp.asarray(sincos_2d(*self.grid, self.width), x.dtype)
        x = jnp.concatenate([cls, x], axis=1)  # the class token's embedding row is zero
        for i in range(self.depth):
            x = models.Encoder1DBlock(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dtype=self.dtype,
                impl=self.impl,
                attention_impl=self.attention_impl,
                name=f"decoderblock_{i}",
            )(x, not train)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="decoder_norm")(x)
        x = _dense(self.patch_dim, "pred", self.dtype)(x)
        return x[:, int(self.has_cls) :].astype(jnp.float32)


class MaskedAutoencoder(nn.Module):
    """images [B, H, W, 3] in [-1, 1] -> (pred [B, N, p*p*3], mask [B, N]).

    `encoder` holds the fields of a `vit_se.model_configs` model config (use_se and the head are
    ignored: the encoder is the backbone). The masks come from the 'mask' rng; `init` may go
    without one (shapes do not depend on it), `apply` may not.
    """

    encoder: Any
    decoder_width: int
    decoder_depth: int
    decoder_heads: int
    decoder_mlp_dim: int
    mask_ratio: float = 0.75
    decoder_attention_impl: str = "xla"  # resolved for the platform, as the encoder's falls back

    @property
    def patch(self):
        size = tuple(self.encoder["patches"]["size"])
        if size[0] != size[1]:
            raise MaeConfigError(f"config.model.patches.size: {size} must be square for MAE")
        return int(size[0])

    @property
    def impl(self):
        """The encoder's implementation, resolved for the platform it was built for."""
        return self.encoder["impl"]

    @property
    def has_cls(self):
        return self.encoder.get("classifier", "token") == "token"

    def grid(self, image_size):
        return image_size // self.patch, image_size // self.patch

    @nn.compact
    def __call__(self, images, *, train=False):
        n, h, w, _ = images.shape
        grid = (h // self.patch, w // self.patch)
        num_patches = grid[0] * grid[1]
        if self.is_initializing() and not self.has_rng("mask"):
            rng = jax.random.PRNGKey(0)
        else:
            rng = self.make_rng("mask")
        masking = random_masking(rng, n, num_patches, self.mask_ratio)
        keep = masking.keep
        if self.has_cls:
            keep = jnp.concatenate([jnp.zeros((n, 1), keep.dtype), keep + 1], axis=1)
        encoder = models.build_model(self.encoder, None, use_se=False, name="encoder")
        tokens = encoder(images, train=train, keep=keep)
        pred = Decoder(
            grid=grid,
            patch_dim=self.patch * self.patch * images.shape[-1],
            width=self.decoder_width,
            depth=self.decoder_depth,
            num_heads=self.decoder_heads,
            mlp_dim=self.decoder_mlp_dim,
            has_cls=self.has_cls,
            dtype=jnp.dtype(self.encoder.get("dtype", "float32")),
            impl=self.encoder["impl"],  # resolved by build_model for its platform
            attention_impl=self.decoder_attention_impl,
            name="decoder",
        )(tokens, masking.restore, train=train)
        return pred, masking.mask


def build_model(
    model_config,
    *,
    mask_ratio=0.75,
    decoder_width,
    decoder_depth,
    decoder_heads,
    decoder_mlp_dim=None,
    image_size=None,
    platform=None,
):
    """The MaskedAutoencoder of a `vit_se.model_configs` config (the encoder's variant).

    The encoder's `impl` is resolved for `platform` (None: this process's backend), the one the
    programs are compiled for. `decoder_mlp_dim` defaults to 4 x `decoder_width` (the paper's
    ratio). With `image_size` the mask ratio and the decoder's widths are checked here, one line
    each, before anything is traced.
    """
    fields = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    fields["impl"] = models.resolve_impl(
        fields.get("impl", "auto"), fields.get("attention_impl", "xla"), backend=platform
    )
    mlp = int(decoder_mlp_dim or 4 * decoder_width)
    for name, value in (
        ("decoder_width", decoder_width),
        ("decoder_depth", decoder_depth),
        ("decoder_heads", decoder_heads),
    ):
        if int(value) < 1:
            raise MaeConfigError(f"config.mae.{name}: {value!r} must be a positive integer")
    if decoder_width % decoder_heads:
        raise MaeConfigError(
            f"config.mae.decoder_heads: {decoder_heads} does not divide decoder_width "
            f"{decoder_width}"
        )
    model = MaskedAutoencoder(
        encoder=_frozen(fields),
        decoder_width=int(decoder_width),
        decoder_depth=int(decoder_depth),
        decoder_heads=int(decoder_heads),
        decoder_mlp_dim=mlp,
        mask_ratio=float(mask_ratio),
        decoder_attention_impl=models.resolve_attention_impl(
            fields.get("attention_impl", "xla"), platform
        ),
    )
    if image_size is not None:
        grid = model.grid(int(image_size))
        num_visible(grid[0] * grid[1], mask_ratio)
        sincos_2d(1, 1, int(decoder_width))
    return model


def _frozen(fields):
    """Nested dicts -> flax FrozenDicts, so the module is hashable (jit caches on it)."""
    from flax.core import freeze

    return freeze(fields)


def encoder_params(params):
    """The backbone's parameters: an official-layout ViT tree without SE or head."""
    return params["encoder"]


def reconstruction(pred, images, mask, patch, norm_pix_loss=True):
    """(masked input, reconstruction), both [B, H, W, 3] in [-1, 1], for figures.

    The masked input shows the masked patches as mid-grey (0). The reconstruction shows the
    visible patches as they were and the prediction at the masked ones; with normalised targets
    the prediction carries no brightness or contrast of its own, so it is given the true patch's
    mean and standard deviation (as MAE's figures are made).
    """
    images = images.astype(jnp.float32)
    b, h, w, c = images.shape
    grid = (h // patch, w // patch)
    true = patchify(images, patch)
    pred = pred.astype(jnp.float32)
    if norm_pix_loss:
        mean = jnp.mean(true, axis=-1, keepdims=True)
        std = jnp.sqrt(jnp.var(true, axis=-1, keepdims=True) + NORM_PIX_EPS)
        pred = pred * std + mean
    m = mask[..., None]
    masked = unpatchify(true * (1.0 - m), patch, grid, c)
    recon = unpatchify(true * (1.0 - m) + jnp.clip(pred, -1.0, 1.0) * m, patch, grid, c)
    return masked, recon
