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

One table (`_layout`) says how each timm tensor is made from flax leaves, so writing
(`state_dict`) and reading back (`to_params`) cannot disagree, and the check is exact: every
tensor of the written file is mapped back onto the flax parameter tree and must equal the model's
float32 parameters bit for bit (`check`). The computation is checked by timm itself when torch
and timm import (the `peer` extra): `vit_se.timm_vit_se`, the README's loader, runs the file
(`outputs`, `logits`). What that loader takes care of: vit_jax and flax use the tanh
approximation of GELU, timm's default is exact erf, so it passes
`act_layer=partial(nn.GELU, approximate='tanh')`; the input is NCHW in PyTorch (vit_se and the
other exports take NHWC), RGB in [-1, 1] (timm's `mean=std=0.5`); timm has no SE, so it wraps the
timm model and applies pre_logits and SE before the head.
"""

from __future__ import annotations

import importlib
import json
from typing import NamedTuple

import numpy as np

from vit_se import checkpoint, model_configs
from vit_se.errors import Error

FORMAT = "vit_se-timm-1"
_TIMM_SIZES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}
# Optional parts: flax name -> the timm key that is there when the part is.
_OPTIONAL = {"cls": "cls_token", "pre_logits": "pre_logits.fc.weight", "se": "se.reduce.weight"}


class SafetensorsExportError(Error, RuntimeError):
    """safetensors is missing, the model has a part timm's layout cannot hold, or a file read
    back does not hold the model's parameters."""


def _st_numpy():
    """safetensors.numpy, or one line saying how to install it."""
    try:
        return importlib.import_module("safetensors.numpy")
    except ImportError as e:
        message = f"the safetensors export needs safetensors: pip install 'vit_se[export]' ({e})"
        raise SafetensorsExportError(message) from None


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


class _Row(NamedTuple):
    """One timm tensor: the flax leaves stacked along its first axis, and how each is laid out.

    kind: 'copy' (the same array), 'flat' (a flax [heads, head_dim] bias as one vector), 'conv'
    (HWIO -> OIHW) or 'kernel' (a flax kernel [in..., out...] with `n_in` input axes -> timm's
    [out, in]). `shape`: the flax leaf's shape where timm's does not say it (attention's heads).
    """

    timm: str
    flax: tuple
    kind: str = "copy"
    shape: tuple | None = None
    n_in: int = 1


def _layout(d, heads, depth, has):
    """The rows of a model of width d, in the order they are written; `has(part)`: whether an
    _OPTIONAL part is there."""
    split = (heads, d // heads)

    def norm(timm, flax):
        return [_Row(f"{timm}.weight", (f"{flax}/scale",)), _Row(f"{timm}.bias", (f"{flax}/bias",))]

    def dense(timm, flax):
        weight = _Row(f"{timm}.weight", (f"{flax}/kernel",), "kernel")
        return [weight, _Row(f"{timm}.bias", (f"{flax}/bias",))]

    rows = [
        _Row("patch_embed.proj.weight", ("embedding/kernel",), "conv"),
        _Row("patch_embed.proj.bias", ("embedding/bias",)),
    ]
    if has("cls"):
        rows.append(_Row("cls_token", ("cls",)))
    rows.append(_Row("pos_embed", ("Transformer/posembed_input/pos_embedding",)))
    for i in range(depth):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        a = f"{b}MultiHeadDotProductAttention_0/"
        qkv = [a + n for n in ("query", "key", "value")]
        rows += norm(t + "norm1", b + "LayerNorm_0")
        rows += [
            _Row(t + "attn.qkv.weight", tuple(p + "/kernel" for p in qkv), "kernel", (d, *split)),
            _Row(t + "attn.qkv.bias", tuple(p + "/bias" for p in qkv), "flat", split),
            _Row(t + "attn.proj.weight", (a + "out/kernel",), "kernel", (*split, d), n_in=2),
            _Row(t + "attn.proj.bias", (a + "out/bias",)),
        ]
        rows += norm(t + "norm2", b + "LayerNorm_1")
        rows += dense(t + "mlp.fc1", b + "MlpBlock_0/Dense_0")
        rows += dense(t + "mlp.fc2", b + "MlpBlock_0/Dense_1")
    rows += norm("norm", "Transformer/encoder_norm") + dense("head", "head")
    if has("pre_logits"):
        rows += dense("pre_logits.fc", "pre_logits")
    if has("se"):
        rows += dense("se.reduce", "se/reduce") + dense("se.expand", "se/expand")
    return rows


def _to_timm(row, leaf):
    x = np.asarray(leaf, np.float32)
    if row.shape is not None and x.shape != row.shape:
        raise SafetensorsExportError(
            f"{row.timm}: expected flax shape {row.shape} (timm's layout), got {x.shape}"
        )
    if row.kind == "conv":
        return x.transpose(3, 2, 0, 1)
    if row.kind == "kernel":
        return x.reshape(int(np.prod(x.shape[: row.n_in])), -1).T
    if row.kind == "flat":
        return x.reshape(-1)
    return x


def _to_flax(row, tensor):
    if row.kind == "conv":
        return tensor.transpose(2, 3, 1, 0)
    if row.kind == "kernel":
        return tensor.T.reshape(row.shape or tensor.T.shape)
    if row.kind == "flat":
        return tensor.reshape(row.shape)
    return tensor


def state_dict(params, model_config):
    """{timm key: float32 array} of a parameter tree (scanned or not)."""
    flat = checkpoint.flatten(checkpoint.unstack_blocks(params))
    cfg = dict(model_config)
    t = dict(cfg["transformer"])
    has = {k.split("/")[0] for k in flat}.__contains__
    rows = _layout(int(cfg["hidden_size"]), int(t["num_heads"]), int(t["num_layers"]), has)
    placed = {p for r in rows for p in r.flax}
    if placed != set(flat):
        raise SafetensorsExportError(
            f"timm's layout has no place for {sorted(set(flat) - placed)} and needs "
            f"{sorted(placed - set(flat))}"
        )
    return {
        r.timm: np.ascontiguousarray(np.concatenate([_to_timm(r, flat[p]) for p in r.flax]))
        for r in rows
    }


def to_params(state, meta):
    """The flax parameter tree (unrolled blocks, float32) of a state dict read back."""
    has = {part: key in state for part, key in _OPTIONAL.items()}
    kw = json.loads(meta["timm_kwargs"])
    rows = _layout(kw["embed_dim"], kw["num_heads"], kw["depth"], has.get)
    unknown = set(state) - {r.timm for r in rows}
    if unknown:
        raise SafetensorsExportError(f"tensors outside timm's layout: {sorted(unknown)}")
    flat = {}
    for r in rows:
        if r.timm not in state:
            raise SafetensorsExportError(f"{r.timm} is missing")
        parts = np.split(np.asarray(state[r.timm]), len(r.flax))
        flat.update((p, _to_flax(r, x)) for p, x in zip(r.flax, parts, strict=True))
    return checkpoint.unflatten(flat)


def metadata(model_config, image_size, class_names):
    return {
        "format": FORMAT,
        "timm_kwargs": json.dumps(timm_kwargs(model_config, image_size, len(class_names))),
        "timm_model": timm_model_name(model_config, image_size) or "",
        "class_names": json.dumps(list(class_names)),
        "input": "float32 [N, 3, S, S] (NCHW), RGB, values in [-1, 1] (x / 127.5 - 1)",
        "activation": "gelu_tanh",
    }


def write(trained, path):
    """Writes `model.safetensors` for the trained model; returns the report's facts about it."""
    cfg, size, names = trained.info.model, trained.image_size, trained.class_names
    state = state_dict(trained.params, cfg)
    _st_numpy().save_file(state, path, metadata(cfg, size, names))
    return {"format": FORMAT, "timm_model": timm_model_name(cfg, size)}


def load(path):
    """(state dict of numpy arrays, metadata dict) of a written file."""
    from safetensors import safe_open

    st = _st_numpy()
    with safe_open(path, "np") as f:
        meta = f.metadata()
    return st.load_file(path), meta


def check(trained, path):
    """Every tensor of the file, mapped back onto the flax tree, is the model's parameter bit for
    bit (as float32), and the class names are the model's; returns the report's facts."""
    state, meta = load(path)
    if json.loads(meta["class_names"]) != trained.class_names:
        raise SafetensorsExportError(
            f"{path}: class names {meta['class_names']} != {trained.class_names}"
        )
    got = checkpoint.flatten(to_params(state, meta))
    want = checkpoint.flatten(checkpoint.unstack_blocks(trained.params))
    if set(got) != set(want):
        raise SafetensorsExportError(
            f"{path}: parameters {sorted(set(got) ^ set(want))} are not in both the file and "
            "the model"
        )
    for key, value in want.items():
        value = np.ascontiguousarray(np.asarray(value, np.float32))
        back = np.ascontiguousarray(got[key])
        if back.shape != value.shape or back.tobytes() != value.tobytes():
            raise SafetensorsExportError(
                f"{path}: {key} read back is not the model's parameter bit for bit"
            )
    return {"tensors_bit_equal": len(state), "runtime": _timm_runtime()}


def _timm_runtime():
    """What `outputs` runs the file with (timm's and torch's versions); None when they do not
    import."""
    try:
        import timm
        import torch
    except Exception:  # not installed, or a torchvision built for another torch fails to load
        return None
    return f"timm {timm.__version__}, torch {torch.__version__} (CPU)"


def outputs(path, batches):
    """[{'logits'}] of the file under timm (the README's loader), one per batch of NHWC images;
    [{}, ...] when torch or timm does not import."""
    if _timm_runtime() is None:
        return [{} for _ in batches]
    import torch

    from vit_se import timm_vit_se

    model, _ = timm_vit_se.load_vit_se(path)
    results = []
    for x in batches:
        nchw = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2))
        with torch.no_grad():
            results.append({"logits": model(torch.from_numpy(nchw)).numpy()})
    return results


def logits(path, images):
    """Logits of the safetensors file under timm on float32 NHWC images (needs torch and timm)."""
    if _timm_runtime() is None:
        raise SafetensorsExportError(
            "running a safetensors export needs torch and timm: pip install 'vit_se[peer]'"
        )
    return outputs(path, [images])[0]["logits"]
