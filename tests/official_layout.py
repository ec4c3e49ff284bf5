"""Key names and shapes of the official ViT .npz files, written from their published layout.

Kept apart from vit_se on purpose: the tests check that vit_se loads what Google publishes, so the
expected keys must not be derived from the code under test. Sources: vit_jax's published files
(`gs://vit_models/...`), and big_vision's model code, whose module names are the file's keys:
`big_vision/models/vit.py` (`_Model`: embedding, pos_embedding added before the class token,
cls for pool 'tok', `MAPHead` for 'map', pre_logits for rep_size, head; `Encoder` with
encoderblock_N or, scanned, one encoderblock; 'sincos2d' position embeddings are computed, not
stored), `big_vision/models/proj/image_text/two_towers.py` (SigLIP: image model 'img', text model
'txt', temperature 't', bias 'b'), `.../text_transformer.py` (Embed_0, pos_embedding, Encoder_0,
head) and `.../naflex_vit.py` (a Dense patch embedding and a 2-D position grid).
"""

import numpy as np


def vit_jax_shapes(
    width, depth, heads, mlp, patch, image=224, head=1000, pre_logits=None, channels=3
):
    """The flat key -> shape map of a vit_jax .npz (pre-linen block names)."""
    grid = image // patch
    k = width // heads
    s = {
        "cls": (1, 1, width),
        "embedding/kernel": (patch, patch, channels, width),
        "embedding/bias": (width,),
        "Transformer/posembed_input/pos_embedding": (1, grid * grid + 1, width),
        "Transformer/encoder_norm/scale": (width,),
        "Transformer/encoder_norm/bias": (width,),
    }
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            s[b + ln + "/scale"] = (width,)
            s[b + ln + "/bias"] = (width,)
        a = b + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            s[a + name + "/kernel"] = (width, heads, k)
            s[a + name + "/bias"] = (heads, k)
        s[a + "out/kernel"] = (heads, k, width)
        s[a + "out/bias"] = (width,)
        s[b + "MlpBlock_3/Dense_0/kernel"] = (width, mlp)
        s[b + "MlpBlock_3/Dense_0/bias"] = (mlp,)
        s[b + "MlpBlock_3/Dense_1/kernel"] = (mlp, width)
        s[b + "MlpBlock_3/Dense_1/bias"] = (width,)
    rep = width
    if pre_logits:
        s["pre_logits/kernel"] = (width, pre_logits)
        s["pre_logits/bias"] = (pre_logits,)
        rep = pre_logits
    if head:
        s["head/kernel"] = (rep, head)
        s["head/bias"] = (head,)
    return s


def _block_shapes(width, heads, mlp):
    """One encoder block of big_vision's vit.py (linen names)."""
    block = {
        "LayerNorm_0/scale": (width,),
        "LayerNorm_0/bias": (width,),
        "LayerNorm_1/scale": (width,),
        "LayerNorm_1/bias": (width,),
        "MlpBlock_0/Dense_0/kernel": (width, mlp),
        "MlpBlock_0/Dense_0/bias": (mlp,),
        "MlpBlock_0/Dense_1/kernel": (mlp, width),
        "MlpBlock_0/Dense_1/bias": (width,),
    }
    block.update(_attention_shapes(width, heads, "MultiHeadDotProductAttention_0/"))
    return block


def _attention_shapes(width, heads, prefix):
    """flax's MultiHeadDotProductAttention: q/k/v kernels (D, H, D/H), out (H, D/H, D)."""
    k = width // heads
    s = {prefix + "out/kernel": (heads, k, width), prefix + "out/bias": (width,)}
    for name in ("query", "key", "value"):
        s[f"{prefix}{name}/kernel"] = (width, heads, k)
        s[f"{prefix}{name}/bias"] = (heads, k)
    return s


def _encoder_shapes(prefix, width, depth, heads, mlp, scan):
    s = {prefix + "encoder_norm/scale": (width,), prefix + "encoder_norm/bias": (width,)}
    for key, shape in _block_shapes(width, heads, mlp).items():
        if scan:
            s[prefix + "encoderblock/" + key] = (depth, *shape)
        else:
            for i in range(depth):
                s[f"{prefix}encoderblock_{i}/" + key] = shape
    return s


def big_vision_shapes(
    width,
    depth,
    heads,
    mlp,
    patch,
    image=224,
    head=1000,
    scan=False,
    pool="tok",
    posemb="learn",
    rep_size=None,
    prefix="params/",
):
    """The flat key -> shape map of a big_vision vit.py .npz.

    pool: 'tok' (a class token `cls`), 'gap' (none) or 'map' (`MAPHead_0`: probe, attention,
    LayerNorm_0, MlpBlock_0 of the model's mlp_dim). posemb 'sincos2d' stores no pos_embedding.
    rep_size adds pre_logits; head=None is a model without a head (num_classes=None). The grid
    is image // patch, as the VALID convolution of the patch embedding makes it.
    """
    grid = image // patch
    s = {
        prefix + "embedding/kernel": (patch, patch, 3, width),
        prefix + "embedding/bias": (width,),
    }
    if posemb == "learn":
        s[prefix + "pos_embedding"] = (1, grid * grid, width)
    if pool == "tok":
        s[prefix + "cls"] = (1, 1, width)
    s.update(_encoder_shapes(prefix + "Transformer/", width, depth, heads, mlp, scan))
    if pool == "map":
        m = prefix + "MAPHead_0/"
        s[m + "probe"] = (1, 1, width)
        s.update(_attention_shapes(width, heads, m + "MultiHeadDotProductAttention_0/"))
        s[m + "LayerNorm_0/scale"] = (width,)
        s[m + "LayerNorm_0/bias"] = (width,)
        s[m + "MlpBlock_0/Dense_0/kernel"] = (width, mlp)
        s[m + "MlpBlock_0/Dense_0/bias"] = (mlp,)
        s[m + "MlpBlock_0/Dense_1/kernel"] = (mlp, width)
        s[m + "MlpBlock_0/Dense_1/bias"] = (width,)
    rep = width
    if rep_size:
        s[prefix + "pre_logits/kernel"] = (width, rep_size)
        s[prefix + "pre_logits/bias"] = (rep_size,)
        rep = rep_size
    if head:
        s[prefix + "head/kernel"] = (rep, head)
        s[prefix + "head/bias"] = (head,)
    return s


def two_tower_shapes(
    width,
    depth,
    heads,
    mlp,
    patch,
    image=224,
    scan=False,
    text=(768, 12, 12, 3072),
    vocab=32_000,
    seq_len=64,
    embed_dim=None,
    image_head=None,
):
    """A SigLIP / SigLIP 2 file (two_towers.Model with bias_init): the image tower, a vit.py model
    with pool 'map' and no head (SigLIP's out_dim is (None, D): its pooled vector is the joint
    embedding), under params/img/; the text tower (text_transformer, width/depth/heads/mlp
    `text`, its head projecting to `embed_dim`) under params/txt/; the temperature params/t and
    bias params/b. SigLIP 2 files are scanned in both towers (its colab's scan=True);
    image_head adds params/img/head to the joint space, as LiT-style files have.
    """
    s = big_vision_shapes(
        width,
        depth,
        heads,
        mlp,
        patch,
        image,
        head=image_head,
        scan=scan,
        pool="map",
        prefix="params/img/",
    )
    tw, td, th, tm = text
    t = "params/txt/"
    s[t + "Embed_0/embedding"] = (vocab, tw)
    s[t + "pos_embedding"] = (1, seq_len, tw)
    s.update(_encoder_shapes(t + "Encoder_0/", tw, td, th, tm, scan))
    s[t + "head/kernel"] = (tw, embed_dim or width)
    s[t + "head/bias"] = (embed_dim or width,)
    s["params/t"] = (1,)
    s["params/b"] = (1,)
    return s


def naflex_shapes(width, depth, heads, mlp, patch, nposemb=16, text=(768, 12, 12, 3072)):
    """A SigLIP 2 NaFlex file: naflex_vit.py's image tower embeds flattened patches with a Dense
    layer (embedding/kernel (patch*patch*3, D)) and stores a 2-D position grid
    (nposemb, nposemb, D)."""
    s = two_tower_shapes(width, depth, heads, mlp, patch, scan=True, text=text)
    s["params/img/embedding/kernel"] = (patch * patch * 3, width)
    s["params/img/pos_embedding"] = (nposemb, nposemb, width)
    return s


def random_arrays(shapes, seed=0, scale=0.2):
    """Random float32 values for a shape map; LayerNorm scales near 1 to keep activations sane."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        v = rng.normal(0.0, scale, shape).astype(np.float32)
        if key.endswith("/scale"):
            v = v + 1.0
        out[key] = v
    return out


def zero_views(shapes):
    """Zero-byte stand-ins (broadcast views) so full-size layouts cost no memory."""
    zero = np.zeros((), np.float32)
    return {k: np.broadcast_to(zero, shape) for k, shape in shapes.items()}


def vit_jax_to_big_vision(flat, scan=False):
    """The same weights as a big_vision file: linen names, params/, pos without class row."""
    rename = {
        "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
        "LayerNorm_2": "LayerNorm_1",
        "MlpBlock_3": "MlpBlock_0",
    }
    out = {}
    blocks = {}
    for key, v in flat.items():
        key = "/".join(rename.get(p, p) for p in key.split("/"))
        if key == "Transformer/posembed_input/pos_embedding":
            out["params/pos_embedding"] = v[:, 1:]
        elif scan and key.startswith("Transformer/encoderblock_"):
            _, blk, rest = key.split("/", 2)
            blocks.setdefault(rest, {})[int(blk.split("_")[1])] = v
        else:
            out["params/" + key] = v
    for rest, per_layer in blocks.items():
        out["params/Transformer/encoderblock/" + rest] = np.stack(
            [per_layer[i] for i in sorted(per_layer)]
        )
    return out
