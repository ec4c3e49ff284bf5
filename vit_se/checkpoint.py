"""Official ViT `.npz` checkpoints in, vit_se parameter trees out (and back).

The families users hold, all detected from the keys, so a user only ever passes a path:
- vit_jax files: flat `/`-joined keys, pre-linen module numbers, a class-token row in the position
  embedding, `pre_logits` in the raw i21k files;
- big_vision `vit.py` files: `params/` prefix, linen names, a top-level position embedding without
  a class row, optionally scan-stacked blocks; pooled by class token (`cls`), by the mean of the
  tokens ('gap') or by attention (`MAPHead_0`); with `posemb='sincos2d'` the position embedding is
  computed, so the file has none;
- big_vision two-tower (image-text) files, SigLIP and SigLIP 2: the image tower, a `vit.py` model
  with MAP pooling, under `params/img/`, beside the text tower `params/txt/` and the scalars
  `params/t`, `params/b`. Only the image tower is read; the text tower's arrays are not even
  loaded (half of a SigLIP file). The image tower of the released SigLIP files has no `head` (its
  pooled vector is the joint embedding); where one has (`params/img/head`, a projection into the
  image-text space, as in LiT), it is dropped and the classifier starts afresh.

Anything that does not fit is reported in one error naming every key, because a silently skipped
weight looks like a bad hyper-parameter for days; a file whose pooling or position embedding is
not the model's is reported in one line naming both.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np
import scipy.ndimage
from absl import logging
from etils import epath

from vit_se import workdir
from vit_se.errors import Error

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
POS = "Transformer/posembed_input/pos_embedding"
# The image tower of a two-tower file, and the subtree of its other tower (never loaded).
IMAGE_TOWER = "img/"
TEXT_TOWER = "params/txt/"
# What a file's pooling is recognised by, for messages.
_POOLING_EVIDENCE = {
    "token": "class token 'cls'",
    "map": "MAPHead_0",
    "gap": "neither 'cls' nor MAPHead_0",
}


class CheckpointError(Error, ValueError):
    """The file is not a usable ViT checkpoint for the configured model."""


class Unread:
    """Shape and dtype of an array left unread in the file (the text tower of a two-tower file)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    @property
    def size(self):
        return int(np.prod(self.shape))


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _header(zip_file, key):
    """The shape and dtype of one .npy member, read from its header alone."""
    name = key + ".npy" if key + ".npy" in zip_file.namelist() else key
    with zip_file.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    return Unread(shape, dtype)


def load_npz(path):
    """The flat {key: array} of a local or gs:// .npz file, or a one-line error saying what it is.

    Arrays are read one by one from the open file (etils.epath), not from a copy of the whole file
    in memory; a two-tower file's text tower is not read at all (`Unread` stand-ins keep its
    shapes for `inspect`).
    """
    try:
        f = epath.Path(path).open("rb")
    except Exception as e:  # FileNotFoundError, PermissionError, gs:// NotFound and friends
        raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(e)})") from None
    with f:
        try:
            head = f.read(8)
            f.seek(0)
        except Exception as e:  # a directory, an unreadable object
            raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(e)})") from None
        if not head.startswith(b"PK"):
            what = "the file is empty" if not head else f"the file starts with {head!r}"
            raise CheckpointError(f"{path}: not an .npz checkpoint ({what}; expected a zip)")
        try:
            with np.load(f, allow_pickle=False) as z:
                return {k: _header(z.zip, k) if k.startswith(TEXT_TOWER) else z[k] for k in z.files}
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
    """Maps either family's image model onto vit_se's flat linen keys (vit_jax linen names).

    For big_vision, `flat` is the image model's own keys, `params/` (and a two-tower file's `img/`)
    already removed by `read_layout`.
    """
    if fmt == "big_vision":
        flat = _unstack_scan(dict(flat))
        if "pos_embedding" in flat:
            pe = flat.pop("pos_embedding")
            if "cls" in flat and _is_square(pe.shape[1]):
                # big_vision adds position embeddings before prepending the class token; a zero
                # class row makes vit_jax's add-after-prepend compute the same thing. (Files of
                # big_vision's first vit.py have the class row already: vit_jax's order.)
                pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
            flat[POS] = pe
        return flat
    out = {}
    for k, v in flat.items():
        parts = k.split("/")
        out["/".join(_PRE_LINEN.get(p, p) for p in parts)] = v
    return _unstack_scan(out)  # a scanned tree saved without save_npz


@dataclasses.dataclass
class Layout:
    """What a file holds, in vit_se's terms."""

    fmt: str  # 'vit_jax' or 'big_vision'
    tree: dict  # the image model's arrays under vit_se's flat linen keys, blocks unrolled
    tower: str  # where the image model lies: 'params/img/' in a two-tower file, else 'whole file'
    set_aside: list  # what of the file is not read into the model, e.g. 'params/txt/ (...)'
    pooling: str | None  # 'token', 'gap' or 'map'; None: a class row without a class token
    posemb: str  # 'learn' or 'sincos2d' (no position embedding in the file)
    num_params: int  # of the image model, as stored


def _is_square(n):
    return n >= 1 and int(round(n**0.5)) ** 2 == n


def _count(arrays):
    return int(sum(v.size for v in arrays))


def _image_model(flat, path):
    """(the image model's big_vision keys without `params/`, its tower, what is set aside)."""
    flat = {k[len("params/") :]: v for k, v in flat.items()}
    tops = sorted({k.split("/")[0] for k in flat})
    if "img" not in tops and "txt" not in tops:
        return flat, "whole file", []
    if "img" not in tops:
        raise CheckpointError(
            f"{path}: a two-tower (image-text) file without an image tower: it holds "
            f"{', '.join('params/' + t for t in tops)} but no params/img/, the image model "
            "vit_se fine-tunes"
        )
    image = {k[len(IMAGE_TOWER) :]: v for k, v in flat.items() if k.startswith(IMAGE_TOWER)}
    set_aside = []
    for top in tops:
        if top == "img":
            continue
        keys = [k for k in flat if k.split("/")[0] == top]
        if keys == [top]:  # a scalar such as the temperature t or the bias b
            set_aside.append(f"params/{top}")
        else:
            arrays = [flat[k] for k in keys]
            set_aside.append(f"params/{top}/ ({len(keys)} arrays, {_count(arrays):,} parameters)")
    return image, "params/img/", set_aside


def _check_vit_py(path, image):
    """One line for image models vit.py cannot run: NaFlex towers, text towers."""
    kernel, pe = image.get("embedding/kernel"), image.get("pos_embedding")
    if (kernel is not None and len(kernel.shape) == 2) or (
        pe is not None and len(pe.shape) == 3 and pe.shape[0] != 1
    ):
        shapes = ", ".join(
            f"{name} {tuple(v.shape)}"
            for name, v in (("embedding/kernel", kernel), ("pos_embedding", pe))
            if v is not None
        )
        raise CheckpointError(
            f"{path}: a NaFlex image tower ({shapes}: patches embedded by a Dense layer, a 2-D "
            "position grid resized per image), which needs big_vision's naflex_vit.py, not the "
            "vit.py model vit_se is: use a fixed-resolution file such as siglip2_b16_224.npz"
        )
    if kernel is None and any(k.startswith(("Embed_0/", "Encoder_0/")) for k in image):
        raise CheckpointError(
            f"{path}: a text tower (Embed_0/embedding, Encoder_0/...), not an image model; "
            "vit_se needs a ViT's embedding/kernel (a SigLIP file's params/img/)"
        )


def read_layout(flat, path="checkpoint"):
    """The `Layout` of a file's flat arrays (either family, a two-tower file's image tower)."""
    fmt = detect_format(flat, path)
    tower, set_aside = "whole file", []
    if fmt == "big_vision":
        flat, tower, set_aside = _image_model(flat, path)
        _check_vit_py(path, flat)
        if tower != "whole file" and "head/kernel" in flat:
            head = tuple(flat["head/kernel"].shape)
            flat = {k: v for k, v in flat.items() if not k.startswith("head/")}
            logging.info(
                "%s: not loading params/img/head %s, the image tower's projection into the joint "
                "image-text embedding: the classifier starts afresh",
                path,
                head,
            )
            set_aside.append(f"params/img/head {head} (into the image-text embedding)")
        if set_aside:
            logging.info(
                "%s: a two-tower (image-text) file; reading its image tower params/img/, not %s",
                path,
                ", ".join(set_aside),
            )
    num_params = _count(flat.values())
    tree = to_vit_se_keys(flat, fmt)
    if "embedding/kernel" not in tree:
        raise CheckpointError(f"{path}: checkpoint has no 'embedding/kernel'; not a ViT")
    if _has_map(tree):
        pooling = "map"
    elif "cls" in tree:
        pooling = "token"
    elif POS in tree and _is_square(tree[POS].shape[1] - 1) and not _is_square(tree[POS].shape[1]):
        pooling = None  # a vit_jax class row with no class token: reported key by key
    else:
        pooling = "gap"
    posemb = "learn" if POS in tree else "sincos2d"
    return Layout(fmt, tree, tower, set_aside, pooling, posemb, num_params)


def _depth(flat):
    """Number of blocks of a flat tree in the unrolled layout."""
    return len({int(m.group(1)) for k in flat if (m := _BLOCK.match(k))})


def describe(flat, path="checkpoint"):
    """Variant facts of a checkpoint given its flat arrays (either family, a two-tower file's
    image tower)."""
    layout = read_layout(flat, path)
    tree = layout.tree
    emb = tree["embedding/kernel"]
    patch, width = emb.shape[0], emb.shape[-1]
    info = {
        "format": layout.fmt,
        "tower": layout.tower,
        "not_read": ", ".join(layout.set_aside) or "nothing",
        "width": int(width),
        "depth": _depth(tree),
        "patch": int(patch),
    }
    q = tree.get("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    info["heads"] = int(q.shape[1]) if q is not None else None
    mlp = tree.get("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel")
    info["mlp_dim"] = int(mlp.shape[1]) if mlp is not None else None
    info["classifier"] = layout.pooling or "token (class row, but no 'cls')"
    info["posemb"] = layout.posemb
    if POS in tree:
        tokens = tree[POS].shape[1] - int("cls" in tree or layout.pooling is None)
        grid = int(round(tokens**0.5))
        info["grid"] = (grid, grid)
        info["image_size"] = grid * int(patch)
    else:  # computed for whatever size the model is configured with
        info["grid"] = None
        info["image_size"] = None
    info["representation_size"] = (
        int(tree["pre_logits/kernel"].shape[1]) if "pre_logits/kernel" in tree else None
    )
    info["head_classes"] = int(tree["head/kernel"].shape[1]) if "head/kernel" in tree else None
    info["head_is_zero"] = bool("head/kernel" in tree and not np.any(tree["head/kernel"]))
    info["num_params"] = layout.num_params
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
    layout = read_layout(flat_ckpt, path)
    ckpt, fmt = layout.tree, layout.fmt
    expected = flatten(init_params)
    scanned = is_scanned(expected)
    expected = _unstack_scan(expected)
    _check_variant(path, ckpt, expected)
    _check_pooling_and_posemb(path, layout, expected)

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
        if key == POS and _shape(value) != _shape(ref) and value.shape[2] == ref.shape[2]:
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


def _dims(tree):
    kernel = tree["embedding/kernel"]
    return kernel.shape[-1], _depth(tree), kernel.shape[0]


def _check_variant(path, ckpt, expected):
    """One short line when width, depth or patch differ, before any per-key listing."""
    if "embedding/kernel" not in ckpt or "embedding/kernel" not in expected:
        return
    got, want = _dims(ckpt), _dims(expected)
    if got != want:
        q = ckpt.get("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
        mlp = ckpt.get("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel")
        variant = _variant_name(
            {
                "width": got[0],
                "depth": got[1],
                "patch": got[2],
                "heads": q.shape[1] if q is not None else None,
                "mlp_dim": mlp.shape[1] if mlp is not None else None,
            }
        )
        raise CheckpointError(
            f"{path}: checkpoint is a ViT {variant} (width {got[0]}, depth {got[1]}, "
            f"patch {got[2]}); the config expects width {want[0]}, depth {want[1]}, patch {want[2]}"
        )


def _check_pooling_and_posemb(path, layout, expected):
    """One line naming the file's and the model's pooling and position embedding where they
    differ: loading across them would leave a head or an embedding untrained, or unused."""
    pooling = "map" if _has_map(expected) else "token" if "cls" in expected else "gap"
    posemb = "learn" if POS in expected else "sincos2d"
    parts = []
    if layout.pooling is not None and layout.pooling != pooling:
        parts.append(
            f"the file pools by {layout.pooling!r} ({_POOLING_EVIDENCE[layout.pooling]}), the "
            f"model by {pooling!r} (set config.model.classifier={layout.pooling!r})"
        )
    if layout.posemb != posemb:
        have = f"pos_embedding {_shape(layout.tree[POS])}" if POS in layout.tree else "none stored"
        parts.append(
            f"the file's position embedding is {layout.posemb!r} ({have}), the model's "
            f"{posemb!r} (set config.model.posemb={layout.posemb!r})"
        )
    if parts:
        raise CheckpointError(f"{path}: " + "; ".join(parts))


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
    shown = dict(info)
    if shown["image_size"] is None:
        shown["grid"] = shown["image_size"] = "not stored (sincos2d: computed for any size)"
    for key in (
        "format",
        "tower",
        "not_read",
        "variant",
        "width",
        "depth",
        "heads",
        "mlp_dim",
        "patch",
        "classifier",
        "posemb",
        "grid",
        "image_size",
        "representation_size",
        "head_classes",
        "head_is_zero",
        "num_params",
    ):
        lines.append(f"  {key:20s} {shown[key]}")
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
            print(format_description(path, describe(load_npz(path), path=path)))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(inspect_main())
