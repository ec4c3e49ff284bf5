"""What the model looks at: class-token attention, attention rollout, Grad-CAM and SE weights.

Everything is computed in JAX by the model's own code (`vit_se.models`), never a copy of it:

- attention weights come from `sow_attention=True` (each block's `MultiHeadDotProductAttention_0`
  sows `attention_weights` [N, heads, T, T] into the 'intermediates' collection);
- the analysis runs a copy of the model with every token through every block
  (`last_block_token_only=False`) and the blocks unrolled (`scan=False`, `remat_policy='none'`),
  so maps and Grad-CAM targets exist per block; a scanned model's parameters are unstacked for
  it inside the jitted function (`checkpoint.unstack_blocks`). The values are the model's own:
  those options change how it computes, never what;
- the SE excitation is the `intermediates/se/excitation` the SE block sows;
- Grad-CAM differentiates the class logit with respect to a block's tokens through
  `flax.linen.intercept_methods`: an interceptor adds a zero perturbation to the chosen tokens on
  their way through the unchanged model, and `jax.grad` with respect to that perturbation is the
  gradient with respect to the tokens.

Inputs are model inputs as evaluation prepares them: float32 [N, S, S, 3] in [-1, 1], from
`vit_se.inference.preprocess`. Outputs are numpy arrays; `g` is the patch grid side (S / patch).

Grad-CAM tokens. `layer=l` takes the tokens block l reads, normalised: the output of its first
LayerNorm (`LayerNorm_0`), which is the input of its attention. That is the target
pytorch-grad-cam recommends for ViTs (`blocks[-1].norm1`). The *output* of the last block would be
useless with a class-token classifier: `encoder_norm` is per token and the head reads token 0 only,
so the gradient with respect to every patch token of the last block's output is exactly zero.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_se import checkpoint

HEAD_FUSIONS = ("mean", "max", "min")
DEFAULT_BATCH_SIZE = 16


# ----------------------------------------------------------------------------------------------
# Pure functions of attention weights (no model).


def fuse_heads(weights, head_fusion="mean"):
    """[..., heads, T, T] -> [..., T, T] by the mean, max or min over heads."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(
            f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}"
        )
    return getattr(jnp, head_fusion)(jnp.asarray(weights), axis=-3)


def rollout_matrix(weights, head_fusion="mean"):
    """Attention rollout (Abnar & Zuidema, 2020) from per-layer attention weights.

    weights: a sequence over layers of [N, heads, T, T] arrays (or one [layers, N, heads, T, T]
    array), rows summing to 1. Per layer the heads are fused, the identity is added for the
    residual connection and rows are renormalised; the layers are multiplied from the first:
    R = A_L' ... A_2' A_1'. Returns R [N, T, T]; every row sums to 1.
    """
    joint = None
    for w in weights:
        a = fuse_heads(w, head_fusion)
        a = a + jnp.eye(a.shape[-1], dtype=a.dtype)
        a = a / jnp.sum(a, axis=-1, keepdims=True)
        joint = a if joint is None else jnp.matmul(a, joint)
    if joint is None:
        raise ValueError("attention rollout needs at least one layer of attention weights")
    return joint


def _to_grid(patch_values, grid):
    """[..., g*g] over patch tokens (row-major, as the patch embedding flattens) -> [..., g, g]."""
    return jnp.reshape(patch_values, patch_values.shape[:-1] + (grid, grid))


# ----------------------------------------------------------------------------------------------
# Model-bound computations, jitted once per loaded model.


def _grid(model, image_size):
    patch = tuple(model.patches["size"])
    if image_size % patch[0] or image_size % patch[1] or patch[0] != patch[1]:
        raise ValueError(f"image size {image_size} is not a whole number of {patch} patches")
    return image_size // patch[0]


def _has_cls(model):
    return model.classifier == "token"


def _require_cls(model, what):
    if not _has_cls(model):
        raise ValueError(
            f"{what} reads the class token's attention row; this model pools with "
            f"classifier={model.classifier!r} and has no class token"
        )


def _attention_list(intermediates, num_layers):
    enc = intermediates["Transformer"]
    return [
        enc[f"encoderblock_{i}"]["MultiHeadDotProductAttention_0"]["attention_weights"][0]
        for i in range(num_layers)
    ]


def _num_layers(model):
    return int(model.transformer["num_layers"])


def _layer_index(model, layer):
    n = _num_layers(model)
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} out of range for a model with {n} blocks")
    return layer % n


class _Fns:
    """The jitted analysis functions of one model (closures over it; params are arguments).

    Two compiled programs cover the API: `summary` (one forward pass: logits, class-token maps,
    rollout, SE) and `full` (forward + backward: the same plus Grad-CAM and its ingredients).
    """

    def __init__(self, model):
        self.model = model.clone(
            sow_attention=True, last_block_token_only=False, scan=False, remat_policy="none"
        )
        self.layers = _num_layers(model)
        self._cache = {}

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = jax.jit(make())
        return self._cache[key]

    def _apply(self, params, x):
        """-> (logits, [layers of N,heads,T,T], excitation or None)."""
        params = checkpoint.unstack_blocks(params)
        logits, state = self.model.apply({"params": params}, x, mutable=["intermediates"])
        inter = state["intermediates"]
        exc = inter["se"]["excitation"][0] if "se" in inter else None
        return logits, _attention_list(inter, self.layers), exc

    def _attention_outputs(self, weights, grid, head_fusion):
        if not _has_cls(self.model):
            return None, None
        stacked = jnp.stack(weights, axis=1)  # N, L, H, T, T
        maps = _to_grid(stacked[..., 0, 1:], grid)
        roll = _to_grid(rollout_matrix(weights, head_fusion)[:, 0, 1:], grid)
        return maps, roll

    def weights(self):
        """params, x -> [N, layers, heads, T, T]."""
        return self._cached("weights", lambda: lambda p, x: jnp.stack(self._apply(p, x)[1], axis=1))

    def summary(self, grid, head_fusion):
        """params, x -> dict(logits, attention [N,L,H,g,g], rollout [N,g,g], se)."""

        def make():
            def fn(params, x):
                logits, weights, exc = self._apply(params, x)
                maps, roll = self._attention_outputs(weights, grid, head_fusion)
                return dict(logits=logits, attention=maps, rollout=roll, se=exc)

            return fn

        return self._cached(("summary", grid, head_fusion), make)

    def full(self, grid, layer, head_fusion):
        """params, x, class_index [N] (-1: predicted) -> summary's dict plus Grad-CAM:

        tokens [N, T, D] (block `layer`'s LayerNorm_0 output), gradients (of each image's class
        logit with respect to them; images do not interact in evaluation mode), grad_cam_class
        [N] and grad_cam [N, g, g].
        """
        target = ("Transformer", f"encoderblock_{layer}", "LayerNorm_0")
        first_patch = 1 if _has_cls(self.model) else 0
        num_tokens = grid * grid + first_patch

        def make():
            def fn(params, x, class_index):
                delta0 = jnp.zeros((x.shape[0], num_tokens, self.model.hidden_size), jnp.float32)

                def score(delta):
                    seen = {}

                    def interceptor(next_fun, args, kwargs, context):
                        out = next_fun(*args, **kwargs)
                        if context.method_name == "__call__" and context.module.path == target:
                            out = out + delta.astype(out.dtype)
                            seen["tokens"] = out
                        return out

                    with nn.intercept_methods(interceptor):
                        logits, weights, exc = self._apply(params, x)
                    if "tokens" not in seen:
                        raise RuntimeError(f"no module at {'/'.join(target)} to take tokens from")
                    cls = jnp.where(class_index < 0, jnp.argmax(logits, axis=-1), class_index)
                    picked = jnp.take_along_axis(logits, cls[:, None], axis=-1)
                    return jnp.sum(picked), (seen["tokens"], cls, logits, weights, exc)

                grads, (acts, cls, logits, weights, exc) = jax.grad(score, has_aux=True)(delta0)
                acts, grads = acts.astype(jnp.float32), grads.astype(jnp.float32)
                w = jnp.mean(grads[:, first_patch:], axis=1, keepdims=True)  # per channel
                cam = nn.relu(jnp.sum(w * acts[:, first_patch:], axis=-1))  # N, g*g
                maps, roll = self._attention_outputs(weights, grid, head_fusion)
                return dict(
                    logits=logits,
                    attention=maps,
                    rollout=roll,
                    se=exc,
                    tokens=acts,
                    gradients=grads,
                    grad_cam_class=cls,
                    grad_cam=_to_grid(cam, grid),
                )

            return fn

        return self._cached(("full", grid, layer, head_fusion), make)


_FNS = weakref.WeakKeyDictionary()


def _fns(trained):
    fns = _FNS.get(trained)
    if fns is None:
        fns = _FNS[trained] = _Fns(trained.model)
    return fns


def _as_batch(images, trained):
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[None]
    s = trained.image_size
    if x.ndim != 4 or x.shape[1:] != (s, s, 3):
        raise ValueError(
            f"expected preprocessed images [N, {s}, {s}, 3] (see vit_se.inference.preprocess), "
            f"got shape {x.shape}"
        )
    return x


def _batched(fn, x, batch_size, *extra):
    """Runs fn over x in batches (the last one padded, so each shape compiles once)."""
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = [a[start : start + batch_size] for a in (x, *extra)]
        n = len(chunk[0])
        if n < batch_size and len(x) > batch_size:
            chunk = [np.concatenate([a, np.repeat(a[-1:], batch_size - n, axis=0)]) for a in chunk]
        out = jax.device_get(fn(*chunk))
        outs.append(jax.tree_util.tree_map(lambda a, n=n: np.asarray(a)[:n], out))
    if not outs:
        raise ValueError("no images given")
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *outs)


def _summary(trained, images, head_fusion, batch_size):
    x = _as_batch(images, trained)
    fn = _fns(trained).summary(_grid(trained.model, trained.image_size), head_fusion)
    return _batched(lambda b: fn(trained.params, b), x, batch_size)


def _full(trained, images, class_index, layer, head_fusion, batch_size, drop=()):
    x = _as_batch(images, trained)
    fn = _fns(trained).full(
        _grid(trained.model, trained.image_size), _layer_index(trained.model, layer), head_fusion
    )
    idx = _class_indices(trained, class_index, len(x))

    def run(b, i):
        out = fn(trained.params, b, i)
        return {k: v for k, v in out.items() if k not in drop}

    return _batched(run, x, batch_size, idx)


def _class_indices(trained, class_index, n):
    if class_index is None:
        return np.full((n,), -1, np.int32)
    if isinstance(class_index, str):
        names = trained.class_names
        if class_index not in names:
            raise ValueError(f"unknown class {class_index!r}; classes are {', '.join(names)}")
        class_index = names.index(class_index)
    idx = np.broadcast_to(np.asarray(class_index, np.int32), (n,)).copy()
    c = len(trained.class_names)
    if np.any((idx < 0) | (idx >= c)):
        raise ValueError(f"class index {class_index} out of range for {c} classes")
    return idx


# ----------------------------------------------------------------------------------------------
# Public API: numpy in, numpy out.


class Analysis(NamedTuple):
    """Everything for a set of images, from one forward and backward pass per batch."""

    logits: np.ndarray  # N, C
    probabilities: np.ndarray  # N, C
    attention: np.ndarray  # N, layers, heads, g, g (class-token row over patches)
    rollout: np.ndarray  # N, g, g
    grad_cam: np.ndarray  # N, g, g
    grad_cam_class: np.ndarray  # N, the class each Grad-CAM explains
    se: np.ndarray | None  # N, width; None without an SE block


def analyze(
    trained,
    images,
    class_index=None,
    layer=-1,
    head_fusion="mean",
    batch_size=DEFAULT_BATCH_SIZE,
):
    """All maps and weights at once; see the single-purpose functions for their meaning."""
    _require_cls(trained.model, "attention analysis")
    out = _full(
        trained, images, class_index, layer, head_fusion, batch_size, ("tokens", "gradients")
    )
    probs = np.asarray(jax.nn.softmax(out["logits"], axis=-1))
    return Analysis(
        out["logits"],
        probs,
        out["attention"],
        out["rollout"],
        out["grad_cam"],
        out["grad_cam_class"],
        out["se"],
    )


def attention_maps(trained, images, batch_size=DEFAULT_BATCH_SIZE):
    """Class-token attention over the patches, per layer and head: [N, layers, heads, g, g].

    Row 0 (the class token's query) of each block's softmax attention, without the class token's
    attention to itself; the values of one map sum to 1 minus that self-attention.
    """
    return analyze_attention(trained, images, batch_size=batch_size)[0]


def attention_rollout(trained, images, head_fusion="mean", batch_size=DEFAULT_BATCH_SIZE):
    """Attention rollout (Abnar & Zuidema, 2020), class-token row over the patches: [N, g, g].

    See `rollout_matrix` for the rule; `head_fusion` is 'mean', 'max' or 'min'. The values are
    the class token's row of the full rollout without its own entry, so they sum to less than 1.
    """
    return analyze_attention(trained, images, head_fusion, batch_size)[1]


def analyze_attention(trained, images, head_fusion="mean", batch_size=DEFAULT_BATCH_SIZE):
    """(attention_maps, attention_rollout) from one forward pass."""
    _require_cls(trained.model, "attention analysis")
    out = _summary(trained, images, head_fusion, batch_size)
    return out["attention"], out["rollout"]


def attention_weights(trained, images, batch_size=DEFAULT_BATCH_SIZE):
    """Raw softmax attention of every block: [N, layers, heads, T, T] (T counts the cls token)."""
    x = _as_batch(images, trained)
    fn = _fns(trained).weights()
    return _batched(lambda b: fn(trained.params, b), x, batch_size)


def grad_cam(trained, images, class_index=None, layer=-1, batch_size=DEFAULT_BATCH_SIZE):
    """Grad-CAM on the patch tokens: [N, g, g], >= 0, unnormalised.

    class_index: None for each image's predicted class, an int or class name for all, or one per
    image. layer: the block whose normalised input tokens are used (default the last; see the
    module docstring). Channel weights are the gradient of the class logit averaged over the patch
    tokens; cam = relu(sum_c w_c A_c) per patch token.
    """
    out = _full(trained, images, class_index, layer, "mean", batch_size, ("tokens", "gradients"))
    return out["grad_cam"]


def token_gradients(trained, images, class_index=None, layer=-1, batch_size=DEFAULT_BATCH_SIZE):
    """What Grad-CAM is made of: (tokens, gradients, classes), tokens and gradients [N, T, D].

    tokens are block `layer`'s normalised input (LayerNorm_0 output), all T tokens including the
    class token when there is one; gradients are those of each image's class logit.
    """
    out = _full(trained, images, class_index, layer, "mean", batch_size)
    return out["tokens"], out["gradients"], out["grad_cam_class"]


def se_weights(trained, images, batch_size=DEFAULT_BATCH_SIZE):
    """The SE block's excitation sigmoid(W2 relu(W1 c)) per image: [N, width]."""
    if not trained.model.use_se:
        raise ValueError("this model has no SE block (use_se=False)")
    return _summary(trained, images, "mean", batch_size)["se"]


class SEByClass(NamedTuple):
    means: np.ndarray  # C, width; NaN rows for classes no image was predicted as
    counts: np.ndarray  # C
    class_names: list


def mean_by_class(weights, predictions, num_classes):
    """Mean of weights [N, D] per predicted class -> (means [C, D] with NaN rows, counts [C])."""
    weights = np.asarray(weights, np.float64)
    predictions = np.asarray(predictions)
    counts = np.bincount(predictions, minlength=num_classes)[:num_classes]
    means = np.full((num_classes, weights.shape[-1]), np.nan)
    for c in np.flatnonzero(counts):
        means[c] = weights[predictions == c].mean(axis=0)
    return means, counts


def se_weights_by_class(trained, images, batch_size=DEFAULT_BATCH_SIZE):
    """Mean SE excitation per *predicted* class over the images: SEByClass(means, counts, names)."""
    if not trained.model.use_se:
        raise ValueError("this model has no SE block (use_se=False)")
    out = _summary(trained, images, "mean", batch_size)
    predictions = np.argmax(out["logits"], axis=-1)
    means, counts = mean_by_class(out["se"], predictions, len(trained.class_names))
    return SEByClass(means, counts, trained.class_names)
