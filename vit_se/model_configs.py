"""Named ViT variants with the official widths, as ml_collections configs (vit_jax style).

The widths are vit_jax's (Ti, S, B, L, H) and big_vision's `decode_variant` (M, So400m, g-opt:
big_vision/models/vit.py), at the patch sizes their published checkpoints use (SigLIP and SigLIP 2
ship So400m/14, So400m/16 and g-opt/16; M has no SigLIP file, /16 is big_vision's usual patch).

A model config holds exactly the fields of `models.VisionTransformer` (plus `name`), so a trainer
config can embed one as `config.model` and override any field from the command line
(`--config.model.scan=True`). `variant_name` tells which named variant a config's widths are.
"""

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
    config.name = key
    config.patches = ml_collections.ConfigDict({"size": (patch, patch)})
    config.hidden_size = hidden
    config.transformer = ml_collections.ConfigDict(
        {
            "num_layers": layers,
            "mlp_dim": mlp,
            "num_heads": heads,
            "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
            "stochastic_depth": 0.0,
        }
    )
    # A placeholder, so `--config.model.representation_size=768` (raw i21k files) can set it.
    config.representation_size = ml_collections.config_dict.placeholder(int)
    config.representation_size = representation_size
    config.classifier = "token"  # 'token', 'gap' or 'map' (big_vision's MAPHead_0: SigLIP)
    config.posemb = "learn"  # 'learn' (a parameter) or 'sincos2d' (computed, big_vision)
    config.use_se = use_se
    config.se_reduction = se_reduction
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
