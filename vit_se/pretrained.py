"""The published checkpoints a FER run starts from, by name: the config argument `init=`.

  python -m vit_se.main --config=configs/raf_db.py:init=siglip2_b16_224 --workdir=$W/raf_siglip2 \
      --config.manual_dir=$RAF

Every dataset config takes `init=NAME` (a name of `INITS`). It sets the model (variant, pooling,
position embedding, pre_logits), the file's own image size and `config.pretrained_path` (its
`gs://` path; on a machine that cannot read `gs://`, copy the file and override
`--config.pretrained_path=/local/copy.npz`). `use_se`, `se_reduction` and how the model computes
(impl, scan, remat, dtype) stay the dataset config's and the command line's.

Each family is a function below whose docstring gives its command, its files and the input it
expects. Preprocessing is the same for all of them: RGB scaled to [-1, 1] (vit_jax's
`x / 127.5 - 1`, big_vision's `value_range(-1, 1)`, also for SigLIP and SigLIP 2), which is what
vit_se feeds every model. No family needs a normalisation of its own, so `export.json` carries
none and predict and export need nothing per family.
"""

from __future__ import annotations

import dataclasses

from vit_se import model_configs


@dataclasses.dataclass(frozen=True)
class Init:
    """One published file and the vit_se model that loads it."""

    family: str  # a function of this module, whose docstring describes the family
    variant: str  # a model_configs.VARIANTS name
    image_size: int
    path: str
    classifier: str = "token"
    posemb: str = "learn"
    representation_size: int | None = None


def vit_jax(variant, path):
    """vit_jax's ImageNet-21k ViTs (Dosovitskiy et al. 2021), fine-tuned on ImageNet-1k or not:
    class token, learned position embedding; the paper's starting point is `vit_b16_i1k_224`.

      python -m vit_se.main --config=configs/raf_db.py:init=vit_b16_i1k_224 --workdir=$W/raf_db \
          --config.manual_dir=$RAF

    Files: gs://vit_models/imagenet21k+imagenet2012/ViT-{B_16,L_16}-224.npz (i21k -> i1k) and
    gs://vit_models/imagenet21k/ViT-{B_16,L_16}.npz (i21k; their pre_logits are dropped, as
    vit_jax drops them for fine-tuning). Input: RGB in [-1, 1], 224 px.
    """
    return Init("vit_jax", variant, 224, path)


def big_vision_plain(epochs):
    """big_vision's "Better plain ViT baselines for ImageNet-1k" S/16 (Beyer et al. 2022): global
    average pooling ('gap'), the computed 'sincos2d' position embedding (no pos_embedding in the
    file) and a 384-wide tanh pre_logits layer, kept (SE then acts on its output).

      python -m vit_se.main --config=configs/raf_db.py:init=bv_s16_i1k_300ep --workdir=$W/raf_s16 \
          --config.manual_dir=$RAF

    Files: gs://big_vision/vit_s16_i1k_{90,150,300}ep.npz. Input: RGB in [-1, 1]
    (big_vision's `value_range(-1, 1)`), 224 px.
    """
    path = f"gs://big_vision/vit_s16_i1k_{epochs}ep.npz"
    return Init("big_vision_plain", "S/16", 224, path, "gap", "sincos2d", 384)


def siglip(variant, resolution, file):
    """SigLIP image towers (Zhai et al. 2023): big_vision ViTs pooled by attention ('map',
    MAPHead_0), learned position embeddings, in two-tower files whose text tower, temperature and
    bias vit_se does not read. The towers have no head: their pooled vector is the image-text
    embedding, and the FER classifier starts afresh on it.

      python -m vit_se.main --config=configs/raf_db.py:init=siglip_b16_224 --workdir=$W/raf_siglip \
          --config.manual_dir=$RAF

    Files: gs://big_vision/siglip/webli_en_{b16_224_63724782,b16_256_60500360,b16_384_68578854,
    b16_512_68580893,l16_256_60552751,l16_384_63634585,so400m_224_57633886,
    so400m_384_58765454}.npz and the multilingual webli_i18n_b16_256_66117334.npz,
    webli_i18n_so400m_16_256_78061115.npz. Input: RGB in [-1, 1] (`value_range(-1, 1)`, as
    vit_se), at the file's resolution; So400m/14 at 384 px is set to 378 px, the 27 x 14 pixels
    its patch convolution reads of a 384 px image (SigLIP drops the last 6).
    """
    patch = model_configs.VARIANTS[variant][-1]
    path = f"gs://big_vision/siglip/{file}.npz"
    return Init("siglip", variant, resolution // patch * patch, path, "map")


def siglip2(size, resolution):
    """SigLIP 2 image towers (Tschannen et al. 2025): as SigLIP ('map' pooling, learned position
    embeddings, no head, the text tower unread) with scan-stacked blocks, which load into either
    layout of the model. NaFlex files (`*_naflex.npz`) need another ViT and are refused.

      python -m vit_se.main --config=configs/raf_db.py:init=siglip2_b16_224 --workdir=$W/raf_sl2 \
          --config.manual_dir=$RAF

    Files: gs://big_vision/siglip2/siglip2_{b16_224,b16_256,b16_384,b16_512,b32_256,l16_256,
    l16_384,l16_512,so400m14_224,so400m14_384,so400m16_256,so400m16_384,so400m16_512,
    g-opt16_256,g-opt16_384}.npz. Input: RGB in [-1, 1] (`value_range(-1, 1)`, as vit_se) at the
    file's resolution (So400m/14 at 384: 378 px, as for SigLIP).
    """
    variant = model_configs.get_config(size).name
    patch = model_configs.VARIANTS[variant][-1]
    path = f"gs://big_vision/siglip2/siglip2_{size}_{resolution}.npz"
    return Init("siglip2", variant, resolution // patch * patch, path, "map")


FAMILIES = {f.__name__: f for f in (vit_jax, big_vision_plain, siglip, siglip2)}

INITS = {
    "vit_b16_i1k_224": vit_jax("B/16", "gs://vit_models/imagenet21k+imagenet2012/ViT-B_16-224.npz"),
    "vit_l16_i1k_224": vit_jax("L/16", "gs://vit_models/imagenet21k+imagenet2012/ViT-L_16-224.npz"),
    "vit_b16_i21k": vit_jax("B/16", "gs://vit_models/imagenet21k/ViT-B_16.npz"),
    "vit_l16_i21k": vit_jax("L/16", "gs://vit_models/imagenet21k/ViT-L_16.npz"),
    **{f"bv_s16_i1k_{e}ep": big_vision_plain(e) for e in (90, 150, 300)},
    "siglip_b16_224": siglip("B/16", 224, "webli_en_b16_224_63724782"),
    "siglip_b16_256": siglip("B/16", 256, "webli_en_b16_256_60500360"),
    "siglip_b16_384": siglip("B/16", 384, "webli_en_b16_384_68578854"),
    "siglip_b16_512": siglip("B/16", 512, "webli_en_b16_512_68580893"),
    "siglip_l16_256": siglip("L/16", 256, "webli_en_l16_256_60552751"),
    "siglip_l16_384": siglip("L/16", 384, "webli_en_l16_384_63634585"),
    "siglip_so400m14_224": siglip("So400m/14", 224, "webli_en_so400m_224_57633886"),
    "siglip_so400m14_384": siglip("So400m/14", 384, "webli_en_so400m_384_58765454"),
    "siglip_b16_256_i18n": siglip("B/16", 256, "webli_i18n_b16_256_66117334"),
    "siglip_so400m16_256_i18n": siglip("So400m/16", 256, "webli_i18n_so400m_16_256_78061115"),
    **{
        f"siglip2_{size}_{res}": siglip2(size, res)
        for size, resolutions in (
            ("b16", (224, 256, 384, 512)),
            ("b32", (256,)),
            ("l16", (256, 384, 512)),
            ("so400m14", (224, 384)),
            ("so400m16", (256, 384, 512)),
            ("g-opt16", (256, 384)),
        )
        for res in resolutions
    },
}

# How the model computes, never what: kept from the config `apply` is given.
_KEPT = ("dtype", "sow_attention", "impl", "attention_impl", "last_block_token_only", "scan")
_KEPT += ("remat_policy",)


def apply(config, name):
    """`config` set to start from the published file `name` (INITS); '' leaves it unchanged."""
    if not name:
        return config
    if name not in INITS:
        families = "; ".join(
            f"{f}: {', '.join(n for n, i in INITS.items() if i.family == f)}" for f in FAMILIES
        )
        raise ValueError(f"config argument init={name!r}: unknown; expected one of {families}")
    init = INITS[name]
    old = config.model
    model = model_configs.get_config(
        init.variant,
        use_se=old.use_se,
        se_reduction=old.se_reduction,
        representation_size=init.representation_size,
    )
    model.classifier, model.posemb = init.classifier, init.posemb
    for field in _KEPT:
        model[field] = old[field]
    for field in ("dropout_rate", "attention_dropout_rate", "stochastic_depth"):
        model.transformer[field] = old.transformer[field]
    config.model = model
    config.image_size = init.image_size
    config.pretrained_path = init.path
    return config
