"""Key names and shapes of the official ViT .npz files, written from their published layout.

Kept apart from vit_se on purpose: the tests check that vit_se loads what Google publishes, so the
expected keys must not be derived from the code under test. Sources: the published files and the
code that reads them, vit_jax's `gs://vit_models/...` checkpoints (pre-linen block names, loaded by
`vit_jax/checkpoint.py` of google-research/vision_transformer) and big_vision's `params/...` files
(`big_vision/models/vit.py`: linen names, `pos_embedding` without a class-token row, optionally
blocks stacked by `scan`).
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


def big_vision_shapes(width, depth, heads, mlp, patch, image=224, head=1000, scan=False):
    """The flat key -> shape map of a big_vision .npz ('tok' pooling)."""
    grid = image // patch
    k = width // heads
    s = {
        "params/cls": (1, 1, width),
        "params/embedding/kernel": (patch, patch, 3, width),
        "params/embedding/bias": (width,),
        "params/pos_embedding": (1, grid * grid, width),
        "params/Transformer/encoder_norm/scale": (width,),
        "params/Transformer/encoder_norm/bias": (width,),
    }
    block = {
        "LayerNorm_0/scale": (width,),
        "LayerNorm_0/bias": (width,),
        "LayerNorm_1/scale": (width,),
        "LayerNorm_1/bias": (width,),
        "MlpBlock_0/Dense_0/kernel": (width, mlp),
        "MlpBlock_0/Dense_0/bias": (mlp,),
        "MlpBlock_0/Dense_1/kernel": (mlp, width),
        "MlpBlock_0/Dense_1/bias": (width,),
        "MultiHeadDotProductAttention_0/out/kernel": (heads, k, width),
        "MultiHeadDotProductAttention_0/out/bias": (width,),
    }
    for name in ("query", "key", "value"):
        block[f"MultiHeadDotProductAttention_0/{name}/kernel"] = (width, heads, k)
        block[f"MultiHeadDotProductAttention_0/{name}/bias"] = (heads, k)
    for key, shape in block.items():
        if scan:
            s["params/Transformer/encoderblock/" + key] = (depth, *shape)
        else:
            for i in range(depth):
                s[f"params/Transformer/encoderblock_{i}/" + key] = shape
    if head:
        s["params/head/kernel"] = (width, head)
        s["params/head/bias"] = (head,)
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
