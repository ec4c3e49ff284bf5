"""Official ViT `.npz` checkpoints in, vit_se parameter trees out (and back).

Two families exist and users hold both: vit_jax files (flat `/`-joined keys, pre-linen module
numbers, a class-token row in the position embedding, `pre_logits` in the raw i21k files) and
big_vision files (`params/` prefix, linen names, a top-level position embedding without a class
row, optionally scan-stacked blocks). The format is detected from the keys, so a user only ever
passes a path. Anything that does not fit is reported in one error naming every key, because a
silently skipped weight looks like a bad hyper-parameter for days.
"""

from __future__ import annotations

import io
import os
import re
import sys

import numpy as np
import scipy.ndimage
from absl import logging

from vit_se import workdir

# Parameters a fine-tuning run creates afresh when the checkpoint lacks them or when the number of
# classes differs; everything else must be in the file.
FRESH_OK = ("head", "se", "pre_logits")

_PRE_LINEN = {
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/(.*)$")
# A scanned model's blocks (big_vision's scan=True layout, vit_se's `scan` field): one subtree whose
# every array has a leading depth axis.
SCANNED = "Transformer/encoderblock/"


class CheckpointError(ValueError):
    """The file is not a usable ViT checkpoint for the configured model."""


def _open(path):
    """Reads a local or gs:// file; tf.io.gfile only when the path needs it (TF import is slow)."""
    if "://" in os.fspath(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def load_npz(path):
    """Returns the flat {key: array} of an .npz file, or a one-line error saying what it is."""
    try:
        data = _open(path)
    except (OSError, FileNotFoundError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from None
    except Exception as e:  # tf.errors.NotFoundError and friends for gs:// paths
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__})") from None
    if not data.startswith(b"PK"):
        what = "the file is empty" if not data else f"the file starts with {data[:8]!r}"
        raise CheckpointError(f"{path}: not an .npz checkpoint ({what}; expected a zip)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({e})") from None


def detect_format(flat, path="checkpoint"):
    """'vit_jax' or 'big_vision', from the key set alone."""
    keys = list(flat)
    if keys and all(k.startswith("params/") for k in keys):
        return "big_vision"
    if any(k.startswith("Transformer/") for k in keys) and "embedding/kernel" in flat:
        return "vit_jax"
    sample = ", ".join(sorted(keys)[:4]) or "no arrays"
    raise CheckpointError(
        f"{path}: not a ViT checkpoint (keys: {sample}...); expected vit_jax keys such as "
        f"'Transformer/encoder_norm/scale' or big_vision keys prefixed 'params/'"
    )


def _layer(value, i):
    """Layer i of a stacked array, or of its ShapeDtypeStruct (an abstract init tree)."""
    if hasattr(value, "__getitem__"):
        return value[i]
    return type(value)(tuple(value.shape[1:]), value.dtype)


def _unstack_scan(flat):
    """Transformer/encoderblock/... with a leading depth axis -> Transformer/encoderblock_i/...;
    flat trees without a scanned subtree come back as they are."""
    out = {}
    for k, v in flat.items():
        if k.startswith(SCANNED):
            rest = k[len(SCANNED) :]
            for i in range(v.shape[0]):
                out[f"Transformer/encoderblock_{i}/{rest}"] = _layer(v, i)
        else:
            out[k] = v
    return out


def _stack_scan(flat, stack):
    """The inverse of `_unstack_scan`: every Transformer/encoderblock_i/X, i = 0..depth-1, becomes
    Transformer/encoderblock/X = stack([...]) (np.stack or jnp.stack)."""
    out, layers = {}, {}
    for k, v in flat.items():
        m = _BLOCK.match(k)
        if m:
            layers.setdefault(m.group(2), {})[int(m.group(1))] = v
        else:
            out[k] = v
    for rest, by_index in layers.items():
        out[SCANNED + rest] = stack([by_index[i] for i in range(len(by_index))])
    return out


def is_scanned(params):
    """True for a parameter tree (nested or flat) in the scanned layout."""
    return any(k.startswith(SCANNED) for k in (params if _is_flat(params) else flatten(params)))


def _is_flat(tree):
    return all(not hasattr(v, "items") for v in tree.values())


def unstack_blocks(params):
    """A nested parameter tree in the scanned layout -> the unrolled (official) layout; any other
    tree unchanged. Works on numpy and JAX arrays, also inside `jax.jit`."""
    if not is_scanned(params):
        return params
    return unflatten(_unstack_scan(flatten(params)))


def stack_blocks(params, stack=np.stack):
    """A nested parameter tree in the unrolled layout -> the scanned layout (`stack`: np.stack, or
    jnp.stack inside `jax.jit`)."""
    return unflatten(_stack_scan(flatten(params), stack))


def to_vit_se_keys(flat, fmt):
    """Maps either family onto vit_se's flat linen keys (vit_jax linen names)."""
    if fmt == "big_vision":
        flat = {k[len("params/") :]: v for k, v in flat.items()}
        flat = _unstack_scan(flat)
        if "pos_embedding" in flat:
            pe = flat.pop("pos_embedding")
            if "cls" in flat:
                # big_vision adds position embeddings before prepending the class token; a zero
                # class row makes vit_jax's add-after-prepend compute the same thing.
                pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
            flat["Transformer/posembed_input/pos_embedding"] = pe
        return flat
    out = {}
    for k, v in flat.items():
        parts = k.split("/")
        out["/".join(_PRE_LINEN.get(p, p) for p in parts)] = v
    return _unstack_scan(out)  # a scanned tree saved without save_npz


def _depth(flat):
    """Number of blocks of a flat tree in the unrolled layout."""
    return len({int(m.group(1)) for k in flat if (m := _BLOCK.match(k))})


def describe(flat, fmt=None):
    """Variant facts of a checkpoint given its flat arrays (either family)."""
    fmt = fmt or detect_format(flat)
    tree = to_vit_se_keys(flat, fmt)
    emb = tree.get("embedding/kernel")
    if emb is None:
        raise CheckpointError("checkpoint has no 'embedding/kernel'; not a ViT")
    patch, width = emb.shape[0], emb.shape[-1]
    info = {"format": fmt, "width": int(width), "depth": _depth(tree), "patch": int(patch)}
    q = tree.get("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    info["heads"] = int(q.shape[1]) if q is not None else None
    mlp = tree.get("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel")
    info["mlp_dim"] = int(mlp.shape[1]) if mlp is not None else None
    pe = tree.get("Transformer/posembed_input/pos_embedding")
    has_cls = "cls" in tree
    tokens = pe.shape[1] - int(has_cls) if pe is not None else 0
    grid = int(round(tokens**0.5))
    info["classifier"] = "token" if has_cls else ("map" if _has_map(tree) else "gap")
    info["grid"] = (grid, grid)
    info["image_size"] = grid * int(patch)
    info["representation_size"] = (
        int(tree["pre_logits/kernel"].shape[1]) if "pre_logits/kernel" in tree else None
    )
    info["head_classes"] = int(tree["head/kernel"].shape[1]) if "head/kernel" in tree else None
    info["head_is_zero"] = bool("head/kernel" in tree and not np.any(tree["head/kernel"]))
    info["num_params"] = int(sum(v.size for v in flat.values()))
    info["variant"] = _variant_name(info)
    return info


def _has_map(tree):
    return any(k.startswith("MAPHead_0/") for k in tree)


def _variant_name(info):
    from vit_se.model_configs import variant_of_dims

    dims = (info["width"], info["depth"], info["heads"], info["mlp_dim"], info["patch"])
    return variant_of_dims(*dims)


def resize_posemb(posemb, new_tokens, has_cls):
    """Bilinear resize of the position-embedding grid (vit_jax's rule); the class row is kept."""
    if posemb.shape[1] == new_tokens:
        return posemb
    cls_row, grid = (posemb[:, :1], posemb[0, 1:]) if has_cls else (posemb[:, :0], posemb[0])
    gs_old = int(round(len(grid) ** 0.5))
    gs_new = int(round((new_tokens - int(has_cls)) ** 0.5))
    if gs_old * gs_old != len(grid) or gs_new * gs_new != new_tokens - int(has_cls):
        raise CheckpointError(
            f"position embedding of {posemb.shape[1]} tokens cannot be resized to {new_tokens}: "
            "grids must be square"
        )
    logging.info("Resizing position embedding grid %dx%d -> %dx%d", gs_old, gs_old, gs_new, gs_new)
    grid = grid.reshape(gs_old, gs_old, -1)
    zoom = (gs_new / gs_old, gs_new / gs_old, 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=1).reshape(1, gs_new * gs_new, -1)
    return np.concatenate([cls_row, grid.astype(posemb.dtype)], axis=1)


def flatten(tree, prefix=""):
    """Nested dict -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat):
    tree = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _shape(x):
    return tuple(x.shape)


def load_pretrained(path, init_params):
    """Loads an official checkpoint into the structure of `init_params`.

    Either family, with or without scan-stacked blocks, loads into either layout of the model:
    blocks are matched one by one in the unrolled layout and stacked at the end when `init_params`
    is scanned, so every error names the official per-block key.

    Args:
      path: local or gs:// path of a vit_jax or big_vision .npz.
      init_params: the model's freshly initialised params (arrays or ShapeDtypeStructs); supplies
        the expected tree and the values of parameters created afresh (head, SE, pre_logits).

    Returns:
      A nested dict of numpy arrays with exactly the structure of `init_params`.
    """
    return params_from_flat(load_npz(path), init_params, path)


def params_from_flat(flat_ckpt, init_params, path="checkpoint"):
    """`load_pretrained` on arrays already in memory (either family's flat keys)."""
    fmt = detect_format(flat_ckpt, path)
    ckpt = to_vit_se_keys(flat_ckpt, fmt)
    expected = flatten(init_params)
    scanned = is_scanned(expected)
    expected = _unstack_scan(expected)
    _check_variant(path, ckpt, expected)
    if _has_map(ckpt):
        raise CheckpointError(
            f"{path}: big_vision checkpoint with MAP pooling (MAPHead_0); vit_se models pool by "
            "class token or 'gap': use a checkpoint trained with pool_type 'tok' or 'gap'"
        )

    out, missing, unexpected, wrong = {}, [], [], []
    for key, ref in expected.items():
        fresh_ok = key.split("/")[0] in FRESH_OK
        if key not in ckpt:
            if fresh_ok:
                out[key] = ref
                continue
            missing.append(f"{key} {_shape(ref)}")
            continue
        value = ckpt[key]
        if (
            key == "Transformer/posembed_input/pos_embedding"
            and _shape(value) != _shape(ref)
            and value.shape[2] == ref.shape[2]
        ):
            value = resize_posemb(value, ref.shape[1], has_cls="cls" in expected)
        if _shape(value) != _shape(ref):
            if fresh_ok:  # e.g. a 21843- or 1000-class head replaced by a 7-class one
                logging.info("Not loading %s: shape %s, model has %s", key, value.shape, ref.shape)
                out[key] = ref
                continue
            wrong.append(f"{key} checkpoint {_shape(value)} vs model {_shape(ref)}")
            continue
        out[key] = np.asarray(value, dtype=np.dtype(ref.dtype))
    for key in sorted(set(ckpt) - set(expected)):
        if key.split("/")[0] == "pre_logits":
            logging.info("Dropping %s: the model has no representation layer", key)
            continue
        unexpected.append(f"{key} {_shape(ckpt[key])}")
    if missing or unexpected or wrong:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if items:
                parts.append(f"{label}: " + "; ".join(sorted(items)))
        raise CheckpointError(f"{path} ({fmt}) does not fit the model: " + " | ".join(parts))
    fresh = sorted({k.split("/")[0] for k in expected if out[k] is expected[k]})
    logging.info("Loaded %s (%s); freshly initialised: %s", path, fmt, fresh or "nothing")
    return unflatten(_stack_scan(out, np.stack) if scanned else out)


def _check_variant(path, ckpt, expected):
    """One short line when width or depth differ, before any per-key listing."""
    if "embedding/kernel" not in ckpt or "embedding/kernel" not in expected:
        return
    got = (ckpt["embedding/kernel"].shape[-1], _depth(ckpt), ckpt["embedding/kernel"].shape[0])
    want = (
        expected["embedding/kernel"].shape[-1],
        _depth(expected),
        expected["embedding/kernel"].shape[0],
    )
    if got != want:
        info = describe(ckpt, "vit_jax")
        raise CheckpointError(
            f"{path}: checkpoint is a ViT {info['variant']} (width {got[0]}, depth {got[1]}, "
            f"patch {got[2]}); the config expects width {want[0]}, depth {want[1]}, patch {want[2]}"
        )


def save_npz(params, path):
    """Writes params as a vit_jax-style flat .npz (linen names), atomically.

    A scanned tree is written unstacked (encoderblock_0, encoderblock_1, ...), so every file this
    writes has the official layout and loads into any tool and into either layout of the model.
    """
    flat = _unstack_scan({k: np.asarray(v) for k, v in flatten(params).items()})
    with workdir.atomic_open(path) as f:
        np.savez(f, **flat)


def format_description(path, info):
    lines = [f"{path}"]
    for key in (
        "format",
        "variant",
        "width",
        "depth",
        "heads",
        "mlp_dim",
        "patch",
        "grid",
        "image_size",
        "classifier",
        "representation_size",
        "head_classes",
        "head_is_zero",
        "num_params",
    ):
        lines.append(f"  {key:20s} {info[key]}")
    return "\n".join(lines)


def inspect_main(argv=None):
    """`vit-se-inspect PATH...` / `python -m vit_se.checkpoint PATH...`: print each variant."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m vit_se.checkpoint CHECKPOINT.npz [...]")
        return 0 if argv else 2
    status = 0
    for path in argv:
        try:
            print(format_description(path, describe(load_npz(path))))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(inspect_main())
