"""How far apart two float32 computations of the same value may be: one rule for every test.

    atol = C * EPS32 * scale * sqrt(n)

- EPS32 = 2**-23, float32's machine epsilon (twice the unit roundoff u: every float32 operation
  rounds with a relative error of at most u).
- scale: the largest |value| compared (`assert_close` takes it from the reference), or a known
  bound on it: 1 for probabilities and softmax rows. Where the last sum cancels (its terms are
  much larger than its result, e.g. weights all shifted by a constant), the bound is on the terms:
  `terms_scale` gives max sum|x_i w_ij| of a dense layer.
- n: how many float32 terms are summed into one value, along the longest chain of sums behind it.
  A single reduction of n terms has n; a network has the lengths of its successive reductions
  added (`vit_sums` for ViT-SE, `vit_grad_sums` for its gradients), because the rounding errors
  of successive sums are independent and add in quadrature.
- C = 8, stated once here.

Why sqrt(n): a sum of n float32 terms, in any order, blocking or FMA use, has an error of at most
lambda * sqrt(n) * u * sum|terms| except with probability 2 exp(-lambda^2 / 2), treating the
roundings as independent and mean-zero (Higham & Mary, "A new approach to probabilistic rounding
error analysis", SIAM J. Sci. Comput. 41(5), 2019). Which order a machine uses depends on its
matmul kernels, chosen at run time from the CPU (AVX2, AVX-512, AMX, oneDNN's blocking), so a
tolerance tuned on one machine is no bound on another. C collects the constants: lambda = 4 on
the unit roundoff (2 on EPS32), a factor 2 for two evaluations that both round (the bound is
conservative against a float64 reference), and a factor 2 for the few ulps that exp, tanh, erf
and rsqrt add and for sum|terms| exceeding the largest result (normalised networks keep their
terms and results at one scale).

An example: tiny/4 at 16 px (width 32, 2 blocks, 17 tokens) sums n = 826 terms from pixels to
logits; at logits of magnitude 6 the rule allows 8 * 1.19e-7 * 6 * 28.7 = 1.6e-4, while an
implementation that drops a residual or a softmax correction moves logits by 1e-2 or more. The
same comparison differed by 2.3e-6 on an AVX-512/AMX Xeon, over the previous atol of 1e-6.

Values computed in float64 (numpy geometry, float64 references of float64 code) use the same rule
with eps=EPS64. In bfloat16 compute, XLA accumulates each dot product in float32 and rounds its
output to bfloat16, so there the bfloat16 roundings dominate: eps=EPS_BF16 and n the number of
rounded outputs along the path (`vit_roundings`).

Exact results stay exact: resumed runs, integer outputs, copies and reloads use
`np.testing.assert_array_equal`, never this rule.

Set VIT_SE_TOLERANCE_LOG=FILE to append every comparison's largest difference and tolerance to
FILE (one JSON line each: test, call site, max_diff, atol): the figures a tolerance review needs.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from vit_se import export

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
EPS64 = float(np.finfo(np.float64).eps)  # 2**-52
EPS_BF16 = 2.0**-7  # bfloat16: 8 significand bits
C = 8.0


def atol(scale, n, c=C, eps=EPS32):
    """The rule: c * eps * scale * sqrt(n)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return c * eps * float(scale) * math.sqrt(n)


def scale_of(*arrays):
    """The largest |value| over the arrays (float64), at least the smallest normal float32."""
    return max(
        [float(np.finfo(np.float32).tiny)]
        + [float(np.max(np.abs(np.asarray(a, np.float64)))) for a in arrays if np.size(a)]
    )


def terms_scale(inputs, kernel):
    """max over rows and outputs of sum_i |x_i w_ij|: the size of a dense layer's terms."""
    x = np.abs(np.asarray(inputs, np.float64)).reshape(-1, np.shape(kernel)[0])
    return float(np.max(x @ np.abs(np.asarray(kernel, np.float64))))


def assert_close(actual, desired, n=None, scale=None, c=C, eps=EPS32, tol=None, err_msg=""):
    """|actual - desired| <= atol(scale, n) everywhere; scale defaults to max |desired|. A
    tolerance already derived from the rule (a sum of several) is passed as tol instead."""
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    if tol is None:
        tol = atol(scale_of(desired) if scale is None else scale, n, c, eps)
    _log(actual, desired, tol)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=tol, err_msg=err_msg)


def approx(expected, n, scale=None, c=C, eps=EPS32):
    """pytest.approx with the rule's absolute tolerance, for scalars and sequences."""
    import pytest

    tol = atol(scale_of(expected) if scale is None else scale, n, c, eps)
    return pytest.approx(expected, rel=0, abs=tol)


def _log(actual, desired, tol):
    path = os.environ.get("VIT_SE_TOLERANCE_LOG")
    if not path or actual.shape != np.broadcast_shapes(actual.shape, desired.shape):
        return
    frame = sys._getframe(2)
    diff = float(np.max(np.abs(actual - desired))) if actual.size else 0.0
    row = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
        "where": f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}",
        "max_diff": diff,
        "atol": tol,
    }
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------------------------
# n for ViT-SE.


def _field(obj, name):
    """A field of a flax VisionTransformer, a ConfigDict or a mapping."""
    try:
        return obj[name]
    except (TypeError, KeyError):
        return getattr(obj, name)


def vit_sums(model, image_size):
    """The number of float32 terms summed from pixels to logits in `model` (a VisionTransformer
    or its model config): the count the export's own parity check uses (`export.summed_terms`)."""
    return export.summed_terms(model, image_size)


def vit_roundings(model):
    """The number of rounded op outputs from pixels to logits: the patch embedding and position
    embedding, per block LayerNorm, q, k, v, attention logits, softmax, weighted sum, output
    projection, residual, LayerNorm, MLP in, GELU, MLP out, residual; then the final LayerNorm,
    pre-logits, the SE block's four steps and the head."""
    depth = _field(_field(model, "transformer"), "num_layers")
    head = 2 + (1 if _field(model, "representation_size") else 0)
    if _field(model, "use_se"):
        head += 4
    return 2 + 14 * depth + head


def vit_grad_sums(model, image_size, batch):
    """n for parameter gradients: the forward sums, the backward pass's (the same contractions
    transposed), and the sum over the batch and its tokens that every weight gradient is."""
    tokens = (image_size // _field(_field(model, "patches"), "size")[0]) ** 2 + 1
    return 2 * vit_sums(model, image_size) + batch * tokens


def momentum_sgd_factor(steps, momentum):
    """How many gradients' worth of error k steps of momentum SGD put into the parameters: step t
    applies sum_{s<=t} momentum**(t-s) gradients, so the total is
    sum_{t=1..k} (1 - momentum**t) / (1 - momentum). Multiply by the learning rate and the
    gradient tolerance for the parameters' tolerance."""
    return sum((1 - momentum**t) / (1 - momentum) for t in range(1, steps + 1))
