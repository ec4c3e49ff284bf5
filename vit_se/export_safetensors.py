"""A trained ViT-SE as a PyTorch/timm state dict in safetensors, written without torch.

Keys and layouts are timm's `VisionTransformer` (`vit_base_patch16_224` for B/16 at 224):

    patch_embed.proj.weight [D, 3, P, P]  patch_embed.proj.bias [D]   (conv, OIHW)
    cls_token [1, 1, D] (token classifier)  pos_embed [1, T, D]
    blocks.N.norm1.{weight,bias}   blocks.N.attn.qkv.weight [3D, D] (q, k, v stacked, heads in
    order within each)  blocks.N.attn.qkv.bias [3D]  blocks.N.attn.proj.{weight [D, D], bias}
    blocks.N.norm2.{weight,bias}   blocks.N.mlp.fc1.{weight [M, D], bias}  mlp.fc2 [D, M]
    norm.{weight,bias}   head.{weight [C, D'], bias [C]}
plus vit_se's own parts under their own names: `se.reduce.{weight [D/r, D'], bias}`,
`se.expand.{weight [D', D/r], bias}` (the excitation on the pooled token) and, for models with
`representation_size`, `pre_logits.fc.{weight, bias}` (a tanh layer; D' is its width, else D).
Linear weights are [out, in] (the transpose of flax's kernels). The file's metadata holds
`timm_kwargs` (JSON for `timm.models.vision_transformer.VisionTransformer`), `class_names`
(JSON), `timm_model` (the timm name when the variant has one), `input` (the value convention)
and `format` (FORMAT).

Differences to mind, which TIMM_LOADER (the README's snippet) takes care of: vit_jax and flax use
the tanh approximation of GELU, timm's default is exact erf (logits then differ by about 1e-3), so
the loader passes `act_layer=partial(nn.GELU, approximate='tanh')`; the input is NCHW in PyTorch
(vit_se and the other exports take NHWC), RGB in [-1, 1] (timm's `mean=std=0.5`); timm has no SE,
so the loader wraps the timm model and applies pre_logits and SE before the head.

The export is checked without torch by `numpy_logits`, a NumPy forward pass that reads the file
in timm's layout (fused qkv, [out, in] weights, OIHW convolution); with torch and timm installed
(the `peer` extra) `timm_logits` runs TIMM_LOADER itself.
"""

from __future__ import annotations

import json
import math

import numpy as np

from vit_se import checkpoint, model_configs
from vit_se.errors import Error

FORMAT = "vit_se-timm-1"
LN_EPSILON = 1e-6
_TIMM_SIZES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}

TIMM_LOADER = '''\
import functools, json

import timm, torch
from safetensors import safe_open
from safetensors.torch import load_file


class ViTSE(torch.nn.Module):
    """timm's ViT, then vit_se's pre_logits (tanh) and SE on the pooled token, then the head."""

    def __init__(self, vit, extra):
        super().__init__()
        self.vit = vit

        def linear(name):
            if name + ".weight" not in extra:
                return None
            w, b = extra[name + ".weight"], extra[name + ".bias"]
            layer = torch.nn.Linear(w.shape[1], w.shape[0])
            layer.load_state_dict({"weight": w, "bias": b})
            return layer

        self.pre_logits = linear("pre_logits.fc")
        self.se_reduce, self.se_expand = linear("se.reduce"), linear("se.expand")
        self.head = linear("head")

    def forward(self, images):  # float32 [N, 3, S, S], RGB in [-1, 1]
        x = self.vit.forward_head(self.vit.forward_features(images), pre_logits=True)
        if self.pre_logits is not None:
            x = torch.tanh(self.pre_logits(x))
        if self.se_reduce is not None:
            x = x * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x))))
        return self.head(x)


def load_vit_se(path):
    """(model, class_names) from a vit_se model.safetensors."""
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    state = load_file(path)
    extra = {k: state.pop(k) for k in list(state) if k.startswith(("se.", "pre_logits.", "head."))}
    kwargs = dict(json.loads(meta["timm_kwargs"]), num_classes=0)  # ViTSE holds the head
    gelu_tanh = functools.partial(torch.nn.GELU, approximate="tanh")  # flax's GELU, not erf
    vit = timm.models.vision_transformer.VisionTransformer(**kwargs, act_layer=gelu_tanh)
    vit.load_state_dict(state)
    return ViTSE(vit, extra).eval(), json.loads(meta["class_names"])
'''


class SafetensorsExportError(Error, RuntimeError):
    """safetensors is missing, or the model has a part timm's layout cannot hold."""


def _safetensors():
    try:
        from safetensors import numpy as st_numpy
    except ImportError as e:
        raise SafetensorsExportError(
            f"safetensors export needs the safetensors package: pip install 'vit_se[export]' ({e})"
        ) from None
    return st_numpy


def _f32(x):
    return np.ascontiguousarray(np.asarray(x, np.float32))


def timm_kwargs(model_config, image_size, num_classes):
    """`VisionTransformer` keyword arguments of a vit_se model config (a dict)."""
    cfg = dict(model_config)
    t = dict(cfg["transformer"])
    width = int(cfg["hidden_size"])
    patch = tuple(cfg["patches"]["size"])
    if patch[0] != patch[1]:
        raise SafetensorsExportError(f"timm's ViT needs a square patch, got {patch}")
    token = cfg.get("classifier", "token") == "token"
    return {
        "img_size": int(image_size),
        "patch_size": int(patch[0]),
        "num_classes": int(num_classes),
        "global_pool": "token" if token else "avg",
        "class_token": token,
        "fc_norm": False,  # vit_jax applies encoder_norm to every token, then pools
        "embed_dim": width,
        "depth": int(t["num_layers"]),
        "num_heads": int(t["num_heads"]),
        "mlp_ratio": int(t["mlp_dim"]) / width,
        "qkv_bias": True,
    }


def timm_model_name(model_config, image_size):
    """e.g. 'vit_base_patch16_224' for B/16 at 224; None for widths timm has no name for."""
    variant = model_configs.variant_name(model_config)
    size = _TIMM_SIZES.get(variant.split("/")[0])
    if size is None:
        return None
    return f"vit_{size}_patch{variant.split('/')[1]}_{int(image_size)}"


def state_dict(params, model_config):
    """{timm key: float32 array} of a parameter tree (scanned or not)."""
    cfg = dict(model_config)
    p = checkpoint.unstack_blocks(params)
    heads = int(dict(cfg["transformer"])["num_heads"])
    out = {
        "patch_embed.proj.weight": _f32(np.asarray(p["embedding"]["kernel"]).transpose(3, 2, 0, 1)),
        "patch_embed.proj.bias": _f32(p["embedding"]["bias"]),
    }
    if "cls" in p:
        out["cls_token"] = _f32(p["cls"])
    tr = p["Transformer"]
    out["pos_embed"] = _f32(tr["posembed_input"]["pos_embedding"])
    depth = int(dict(cfg["transformer"])["num_layers"])
    for i in range(depth):
        b = tr[f"encoderblock_{i}"]
        a = b["MultiHeadDotProductAttention_0"]
        pre = f"blocks.{i}."
        width = np.asarray(a["query"]["kernel"]).shape[0]
        if np.asarray(a["query"]["kernel"]).shape[1] != heads:
            raise SafetensorsExportError(f"block {i}: expected {heads} heads in the query kernel")
        qkv_w = [np.asarray(a[n]["kernel"]).reshape(width, -1).T for n in ("query", "key", "value")]
        qkv_b = [np.asarray(a[n]["bias"]).reshape(-1) for n in ("query", "key", "value")]
        out[pre + "norm1.weight"] = _f32(b["LayerNorm_0"]["scale"])
        out[pre + "norm1.bias"] = _f32(b["LayerNorm_0"]["bias"])
        out[pre + "attn.qkv.weight"] = _f32(np.concatenate(qkv_w, axis=0))
        out[pre + "attn.qkv.bias"] = _f32(np.concatenate(qkv_b))
        out[pre + "attn.proj.weight"] = _f32(np.asarray(a["out"]["kernel"]).reshape(-1, width).T)
        out[pre + "attn.proj.bias"] = _f32(a["out"]["bias"])
        out[pre + "norm2.weight"] = _f32(b["LayerNorm_1"]["scale"])
        out[pre + "norm2.bias"] = _f32(b["LayerNorm_1"]["bias"])
        for timm_name, flax_name in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            dense = b["MlpBlock_0"][flax_name]
            out[pre + f"mlp.{timm_name}.weight"] = _f32(np.asarray(dense["kernel"]).T)
            out[pre + f"mlp.{timm_name}.bias"] = _f32(dense["bias"])
    out["norm.weight"] = _f32(tr["encoder_norm"]["scale"])
    out["norm.bias"] = _f32(tr["encoder_norm"]["bias"])
    linears = [("head", p["head"])]
    if "pre_logits" in p:
        linears.append(("pre_logits.fc", p["pre_logits"]))
    if "se" in p:
        linears += [("se.reduce", p["se"]["reduce"]), ("se.expand", p["se"]["expand"])]
    for name, dense in linears:
        out[f"{name}.weight"] = _f32(np.asarray(dense["kernel"]).T)
        out[f"{name}.bias"] = _f32(dense["bias"])
    return out


def metadata(model_config, image_size, class_names):
    return {
        "format": FORMAT,
        "timm_kwargs": json.dumps(timm_kwargs(model_config, image_size, len(class_names))),
        "timm_model": timm_model_name(model_config, image_size) or "",
        "class_names": json.dumps(list(class_names)),
        "input": "float32 [N, 3, S, S] (NCHW), RGB, values in [-1, 1] (x / 127.5 - 1)",
        "activation": "gelu_tanh",
    }


def to_bytes(params, model_config, image_size, class_names):
    """The safetensors file's bytes."""
    st = _safetensors()
    return st.save(
        state_dict(params, model_config), metadata(model_config, image_size, class_names)
    )


def load(path):
    """(state dict of numpy arrays, metadata dict) of a written file."""
    st = _safetensors()
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        meta = f.metadata()
    return st.load_file(path), meta


# ------------------------------------------------------------------------------ checks


def _layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPSILON) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def numpy_logits(state, meta, images):
    """Logits of a state dict read in timm's layout, in NumPy (float32), on NHWC images."""
    kw = json.loads(meta["timm_kwargs"])
    s = {k: np.asarray(v, np.float32) for k, v in state.items()}
    x = np.asarray(images, np.float32)
    n, size = x.shape[0], x.shape[1]
    p = kw["patch_size"]
    g = size // p
    w = s["patch_embed.proj.weight"]  # [D, 3, P, P]
    d = w.shape[0]
    patches = x.reshape(n, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(n, g * g, -1)
    x = patches @ w.reshape(d, -1).T + s["patch_embed.proj.bias"]
    if kw["class_token"]:
        x = np.concatenate([np.broadcast_to(s["cls_token"], (n, 1, d)), x], axis=1)
    x = x + s["pos_embed"]
    heads = kw["num_heads"]
    hd = d // heads
    for i in range(kw["depth"]):
        pre = f"blocks.{i}."
        y = _layer_norm(x, s[pre + "norm1.weight"], s[pre + "norm1.bias"])
        qkv = y @ s[pre + "attn.qkv.weight"].T + s[pre + "attn.qkv.bias"]
        qkv = qkv.reshape(n, -1, 3, heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
        a = _softmax(q @ k.transpose(0, 1, 3, 2)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(n, -1, d)
        x = x + a @ s[pre + "attn.proj.weight"].T + s[pre + "attn.proj.bias"]
        y = _layer_norm(x, s[pre + "norm2.weight"], s[pre + "norm2.bias"])
        y = _gelu_tanh(y @ s[pre + "mlp.fc1.weight"].T + s[pre + "mlp.fc1.bias"])
        x = x + y @ s[pre + "mlp.fc2.weight"].T + s[pre + "mlp.fc2.bias"]
    x = _layer_norm(x, s["norm.weight"], s["norm.bias"])
    x = x[:, 0] if kw["global_pool"] == "token" else x.mean(axis=1)
    if "pre_logits.fc.weight" in s:
        x = np.tanh(x @ s["pre_logits.fc.weight"].T + s["pre_logits.fc.bias"])
    if "se.reduce.weight" in s:
        r = np.maximum(x @ s["se.reduce.weight"].T + s["se.reduce.bias"], 0)
        x = x * (1 / (1 + np.exp(-(r @ s["se.expand.weight"].T + s["se.expand.bias"]))))
    return x @ s["head.weight"].T + s["head.bias"]


def timm_available():
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def timm_logits(path, images):
    """Logits of TIMM_LOADER's model on NHWC images (needs torch and timm)."""
    import torch

    namespace = {}
    exec(compile(TIMM_LOADER, "TIMM_LOADER", "exec"), namespace)  # the README's snippet itself
    model, _ = namespace["load_vit_se"](path)
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return model(x).numpy()
