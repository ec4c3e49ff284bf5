"""An independent NumPy forward pass of ViT(-SE), written from the equations, for parity tests.

It reads the official flat key names directly (vit_jax's pre-linen names, big_vision's `params/`
names, a SigLIP file's `params/img/` image tower), so it shares no code with vit_se.models or
vit_se.checkpoint. The big_vision parts follow big_vision/models/vit.py: `posemb_sincos_2d`
(MoCo v3), position embeddings added before the class token joins, `MAPHead` (a learned probe
attending over every token, then a residual MLP on its LayerNorm; the pooled vector is row 0),
and flax's defaults, which big_vision uses: LayerNorm epsilon 1e-6, GELU's tanh approximation.
"""

import numpy as np


def layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(x_q, x_kv, p):
    # Kernels (D, H, K); out kernel (H, K, D). Queries from x_q, keys and values from x_kv.
    q = np.einsum("nld,dhk->nlhk", x_q, p["query/kernel"]) + p["query/bias"]
    k = np.einsum("nld,dhk->nlhk", x_kv, p["key/kernel"]) + p["key/bias"]
    v = np.einsum("nld,dhk->nlhk", x_kv, p["value/kernel"]) + p["value/bias"]
    logits = np.einsum("nqhk,nshk->nhqs", q, k) / np.sqrt(q.shape[-1])
    out = np.einsum("nhqs,nshk->nqhk", softmax(logits), v)
    return np.einsum("nqhk,hkd->nqd", out, p["out/kernel"]) + p["out/bias"]


def mlp(x, p):
    y = gelu_tanh(x @ p["Dense_0/kernel"] + p["Dense_0/bias"])
    return y @ p["Dense_1/kernel"] + p["Dense_1/bias"]


def sincos_2d(h, w, width, temperature=10_000.0):
    """big_vision's posemb_sincos_2d: [sin(x w), cos(x w), sin(y w), cos(y w)] per grid cell."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    omega = temperature ** -(np.arange(width // 4) / (width // 4 - 1))
    x = xs.reshape(-1, 1) * omega[None]
    y = ys.reshape(-1, 1) * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def patchify(images, patch):
    n, h, w, c = images.shape
    x = images.reshape(n, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def _sub(g, prefix):
    return {k[len(prefix) :]: v for k, v in g.items() if k.startswith(prefix)}


def forward(weights, images, big_vision=False, use_se=False, head=None):
    """Logits of ViT(-SE) (float64).

    vit_jax: x = concat(cls, patches) + pos (pos has a class row); class-token pooling.
    big_vision: x = patches + pos (the file's, or sincos2d when it stores none), then cls
    prepended for pool 'tok'; pooling by the class token ('tok'), the MAP head ('map', a
    `MAPHead_0` in the file) or the mean of the tokens ('gap', neither). A two-tower file's
    image tower (params/img/) is the model; its text tower is not used.
    `head`: {'kernel', 'bias'} to use instead of the file's (SigLIP image towers have none).
    """
    if big_vision:
        prefix = "params/img/" if any(k.startswith("params/img/") for k in weights) else "params/"
        g = {}
        for k, v in _sub(weights, prefix).items():
            if k.startswith("Transformer/encoderblock/"):  # scan=True: leading depth axis
                for i, layer in enumerate(v):
                    g[k.replace("encoderblock/", f"encoderblock_{i}/")] = layer.astype(np.float64)
            else:
                g[k] = v.astype(np.float64)
        names = ("MultiHeadDotProductAttention_0", "LayerNorm_0", "LayerNorm_1", "MlpBlock_0")
    else:
        g = {k: v.astype(np.float64) for k, v in weights.items()}
        names = ("MultiHeadDotProductAttention_1", "LayerNorm_0", "LayerNorm_2", "MlpBlock_3")
    if head is not None:
        g["head/kernel"] = np.asarray(head["kernel"], np.float64)
        g["head/bias"] = np.asarray(head["bias"], np.float64)
    attn, ln_a, ln_b, mlp_name = names
    kernel = g["embedding/kernel"]
    patch, width = kernel.shape[0], kernel.shape[-1]
    tokens = patchify(images.astype(np.float64), patch) @ kernel.reshape(-1, width)
    tokens = tokens + g["embedding/bias"]
    n = tokens.shape[0]
    grid = (images.shape[1] // patch, images.shape[2] // patch)
    if big_vision:
        pos = g["pos_embedding"] if "pos_embedding" in g else sincos_2d(*grid, width)
        x = tokens + pos
        if "cls" in g:
            x = np.concatenate([np.broadcast_to(g["cls"], (n, 1, width)), x], axis=1)
    else:
        cls = np.broadcast_to(g["cls"], (n, 1, width))
        x = np.concatenate([cls, tokens], axis=1) + g["Transformer/posembed_input/pos_embedding"]
    depth = len({k.split("/")[1] for k in g if k.startswith("Transformer/encoderblock")})
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        y = layer_norm(x, g[b + ln_a + "/scale"], g[b + ln_a + "/bias"])
        x = x + attention(y, y, _sub(g, b + attn + "/"))
        y = layer_norm(x, g[b + ln_b + "/scale"], g[b + ln_b + "/bias"])
        x = x + mlp(y, _sub(g, b + mlp_name + "/"))
    x = layer_norm(x, g["Transformer/encoder_norm/scale"], g["Transformer/encoder_norm/bias"])
    if "MAPHead_0/probe" in g:
        m = _sub(g, "MAPHead_0/")
        probe = np.broadcast_to(m["probe"], (n, 1, width))
        a = attention(probe, x, _sub(m, "MultiHeadDotProductAttention_0/"))
        c = (
            a
            + mlp(
                layer_norm(a, m["LayerNorm_0/scale"], m["LayerNorm_0/bias"]), _sub(m, "MlpBlock_0/")
            )
        )[:, 0]
    elif "cls" in g:
        c = x[:, 0]
    else:
        c = x.mean(axis=1)
    if "pre_logits/kernel" in g:
        c = np.tanh(c @ g["pre_logits/kernel"] + g["pre_logits/bias"])
    if use_se:
        h = np.maximum(c @ g["se/reduce/kernel"] + g["se/reduce/bias"], 0.0)
        c = c * (1.0 / (1.0 + np.exp(-(h @ g["se/expand/kernel"] + g["se/expand/bias"]))))
    return c @ g["head/kernel"] + g["head/bias"]
