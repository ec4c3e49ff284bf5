"""An independent NumPy forward pass of ViT(-SE), written from the equations, for parity tests.

It reads the official flat key names directly (vit_jax's pre-linen names, or big_vision's
`params/` names), so it shares no code with vit_se.models or vit_se.checkpoint.
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


def attention(x, p):
    # Kernels (D, H, K); out kernel (H, K, D).
    q = np.einsum("nld,dhk->nlhk", x, p["query/kernel"]) + p["query/bias"]
    k = np.einsum("nld,dhk->nlhk", x, p["key/kernel"]) + p["key/bias"]
    v = np.einsum("nld,dhk->nlhk", x, p["value/kernel"]) + p["value/bias"]
    logits = np.einsum("nqhk,nshk->nhqs", q, k) / np.sqrt(q.shape[-1])
    out = np.einsum("nhqs,nshk->nqhk", softmax(logits), v)
    return np.einsum("nqhk,hkd->nqd", out, p["out/kernel"]) + p["out/bias"]


def patchify(images, patch):
    n, h, w, c = images.shape
    x = images.reshape(n, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def forward(weights, images, big_vision=False, use_se=False):
    """Logits of ViT(-SE) with the 'token' classifier.

    vit_jax: x = concat(cls, patches) + pos (pos has a class row).
    big_vision: x = concat(cls, patches + pos) (pos has no class row).
    """
    g = {}
    if big_vision:
        for k, v in weights.items():
            k = k[len("params/") :]
            if k.startswith("Transformer/encoderblock/"):  # scan=True: leading depth axis
                for i, layer in enumerate(v):
                    g[k.replace("encoderblock/", f"encoderblock_{i}/")] = layer.astype(np.float64)
            else:
                g[k] = v.astype(np.float64)
        names = ("MultiHeadDotProductAttention_0", "LayerNorm_0", "LayerNorm_1", "MlpBlock_0")
    else:
        g = {k: v.astype(np.float64) for k, v in weights.items()}
        names = ("MultiHeadDotProductAttention_1", "LayerNorm_0", "LayerNorm_2", "MlpBlock_3")
    attn, ln_a, ln_b, mlp = names
    kernel = g["embedding/kernel"]
    patch = kernel.shape[0]
    tokens = patchify(images.astype(np.float64), patch) @ kernel.reshape(-1, kernel.shape[-1])
    tokens = tokens + g["embedding/bias"]
    n = tokens.shape[0]
    cls = np.broadcast_to(g["cls"], (n, 1, tokens.shape[-1]))
    if big_vision:
        x = np.concatenate([cls, tokens + g["pos_embedding"]], axis=1)
    else:
        x = np.concatenate([cls, tokens], axis=1) + g["Transformer/posembed_input/pos_embedding"]
    depth = len({k.split("/")[1] for k in g if k.startswith("Transformer/encoderblock")})
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        y = layer_norm(x, g[b + ln_a + "/scale"], g[b + ln_a + "/bias"])
        p = {k[len(b + attn) + 1 :]: v for k, v in g.items() if k.startswith(b + attn + "/")}
        x = x + attention(y, p)
        y = layer_norm(x, g[b + ln_b + "/scale"], g[b + ln_b + "/bias"])
        y = gelu_tanh(y @ g[b + mlp + "/Dense_0/kernel"] + g[b + mlp + "/Dense_0/bias"])
        x = x + y @ g[b + mlp + "/Dense_1/kernel"] + g[b + mlp + "/Dense_1/bias"]
    x = layer_norm(x, g["Transformer/encoder_norm/scale"], g["Transformer/encoder_norm/bias"])
    c = x[:, 0]
    if "pre_logits/kernel" in g:
        c = np.tanh(c @ g["pre_logits/kernel"] + g["pre_logits/bias"])
    if use_se:
        h = np.maximum(c @ g["se/reduce/kernel"] + g["se/reduce/bias"], 0.0)
        c = c * (1.0 / (1.0 + np.exp(-(h @ g["se/expand/kernel"] + g["se/expand/bias"]))))
    return c @ g["head/kernel"] + g["head/bias"]
