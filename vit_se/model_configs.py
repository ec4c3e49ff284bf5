"""Named ViT variants with the official widths, as ml_collections configs (vit_jax style).

The widths are vit_jax's (Ti, S, B, L, H) and big_vision's `decode_variant` (M, So400m, g-opt:
big_vision/models/vit.py), at the patch sizes their published checkpoints use (SigLIP and SigLIP 2
ship So400m/14, So400m/16 and g-opt/16; M has no SigLIP file, /16 is big_vision's usual patch).

A model config holds exactly the fields of `models.VisionTransformer` (plus `name`), so a trainer
config can embed one as `config.model` and override any field from the command line
(`--config.model.scan=True`). `variant_name` tells which named variant a config's widths are.
"""

import math
import re

import ml_collections

# name: (hidden, layers, heads, mlp, patch)
VARIANTS = {
    "Ti/16": (192, 12, 3, 768, 16),
    "S/16": (384, 12, 6, 1536, 16),
    "B/16": (768, 12, 12, 3072, 16),
    "B/32": (768, 12, 12, 3072, 32),
    "L/16": (1024, 24, 16, 4096, 16),
    "L/32": (1024, 24, 16, 4096, 32),
    "H/14": (1280, 32, 16, 5120, 14),
    "M/16": (512, 12, 8, 2048, 16),
    "So400m/14": (1152, 27, 16, 4304, 14),
    "So400m/16": (1152, 27, 16, 4304, 16),
    "g-opt/16": (1536, 40, 16, 6144, 16),
    # For unit tests and the CPU demo only; not an official width.
    "tiny/8": (64, 2, 2, 128, 8),
    "tiny/4": (32, 2, 2, 64, 4),
    # From scratch on two CPU cores at 48 px (configs' recipe=cpu); not an official width.
    "cpu/6": (64, 6, 4, 256, 6),
}

# Masked-autoencoder decoders (width, blocks, heads) by encoder variant: He et al.'s 512 x 8
# blocks with 16 heads from B up, scaled down with the encoder below it so that the decoder
# stays light (`mae_decoder` derives one for other widths).
MAE_DECODERS = {
    "Ti/16": (128, 4, 4),
    "S/16": (256, 4, 8),
    "M/16": (256, 4, 8),
    "tiny/8": (32, 2, 2),
    "tiny/4": (16, 1, 2),
    "cpu/6": (32, 2, 4),
}


def _normalise(name):
    """Accepts 'B/16', 'ViT-B/16', 'ViT-B_16', 'b16', 'so400m14' and 'g-opt16'."""
    n = name.removeprefix("ViT-").removeprefix("vit-").replace("_", "/")
    if "/" not in n and (m := re.fullmatch(r"([A-Za-z][A-Za-z0-9-]*?)(\d+)", n)):
        n = f"{m.group(1)}/{m.group(2)}"
    for known in VARIANTS:
        if known.lower() == n.lower():
            return known
    raise ValueError(f"unknown model name {name!r}; expected one of {', '.join(VARIANTS)}")


def get_config(name="B/16", *, use_se=True, se_reduction=4, representation_size=None):
    """Returns the model config of a named variant."""
    key = _normalise(name)
    hidden, layers, heads, mlp, patch = VARIANTS[key]
    config = ml_collections.ConfigDict()
    config.name = key  # the variant's name; set from the widths when a run starts ('custom')
    config.patches = ml_collections.ConfigDict({"size": (patch, patch)})  # patch side in pixels
    config.hidden_size = hidden  # the width of every token
    config.transformer = ml_collections.ConfigDict(
        {
            "num_layers": layers,  # encoder blocks
            "mlp_dim": mlp,  # hidden width of each block's MLP
            "num_heads": heads,  # attention heads (must divide hidden_size)
            "dropout_rate": 0.0,  # dropout after the MLP's layers and the patch embedding
            "attention_dropout_rate": 0.0,  # dropout on the attention weights
            "stochastic_depth": 0.0,  # drop-path rate of the last block (linear from 0)
        }
    )
    # pre_logits (Dense + tanh) of this width before SE and head (raw i21k files have 768); a
    # placeholder, so `--config.model.representation_size=768` can set it.
    config.representation_size = ml_collections.config_dict.placeholder(int)
    config.representation_size = representation_size
    # pooling before SE and head: 'token' (class token), 'gap' or 'map' (big_vision's MAPHead_0,
    # as SigLIP's image tower)
    config.classifier = "token"
    config.posemb = "learn"  # 'learn' (a parameter) or 'sincos2d' (computed, as big_vision's)
    config.use_se = use_se  # the excitation block on the pooled vector (False: plain ViT)
    config.se_reduction = se_reduction  # r: SE's hidden width is width / r (paper 4, code 2)
    # Compute dtype of activations; parameters stay float32.
    config.dtype = "float32"
    config.sow_attention = False  # sow every block's attention weights into 'intermediates'
    # How the model computes, never what (vit_se.models' docstring; README "The model").
    config.impl = "auto"  # 'auto' (cpu_lean on a CPU, plain elsewhere), 'plain', 'cpu_lean'
    config.attention_impl = "xla"  # 'xla' or 'cudnn' (NVIDIA GPUs), the plain impl's attention
    config.last_block_token_only = True  # class-token classifier: last block computes token 0
    config.scan = False  # nn.scan over blocks; parameters stacked as big_vision's scan=True
    config.remat_policy = "none"  # 'none', 'full' (recompute each block), 'save_dots'
    return config


def mae_decoder(model_config):
    """(width, blocks, heads) of the MAE decoder for an encoder config: MAE_DECODERS, He et al.'s
    512 x 8 x 16 for the wide variants, else half the encoder's width (a multiple of 4, at most
    512), a third of its depth (1 to 8) and the most of its heads that divide that width."""
    name = variant_name(model_config)
    if name in MAE_DECODERS:
        return MAE_DECODERS[name]
    hidden = int(model_config.hidden_size)
    if hidden >= 768:
        return (512, 8, 16)
    width = max(4, min(512, hidden // 2) // 4 * 4)
    depth = min(8, max(1, int(model_config.transformer.num_layers) // 3))
    heads = max(h for h in range(1, int(model_config.transformer.num_heads) + 1) if width % h == 0)
    return (width, depth, heads)


def num_visible(num_patches, mask_ratio):
    """Patches an MAE encoder sees: floor(num_patches x (1 - mask_ratio)), as the paper's code.

    Pure Python, so configs are checked before JAX loads. Raises ValueError (no field named) for
    a ratio outside (0, 1) or one that leaves no visible patch.
    """
    ratio = float(mask_ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{mask_ratio!r} must lie strictly between 0 and 1")
    # 1e-9: 1 - 0.9 is 0.09999999999999998, which must not floor 100 patches to 9 visible.
    visible = int(math.floor(num_patches * (1.0 - ratio) + 1e-9))
    if visible < 1:
        raise ValueError(
            f"{ratio} leaves no visible patch of {num_patches}; at most "
            f"{1.0 - 1.0 / num_patches:.4f} at this image and patch size"
        )
    return visible


def variant_of_dims(hidden, layers, heads, mlp, patch):
    """The VARIANTS name with exactly these widths, else 'custom'."""
    for name, dims in VARIANTS.items():
        if dims == (hidden, layers, heads, mlp, patch):
            return name
    return "custom"


def variant_name(model_config):
    """The VARIANTS key whose (hidden_size, num_layers, num_heads, mlp_dim, patch) equal the
    config's, else 'custom' (a non-square patch is always custom)."""
    t = model_config["transformer"]
    size = tuple(model_config["patches"]["size"])
    if len(size) != 2 or size[0] != size[1]:
        return "custom"
    dims = (model_config["hidden_size"], t["num_layers"], t["num_heads"], t["mlp_dim"], size[0])
    return variant_of_dims(*(int(d) for d in dims))
