"""Drawn cartoon faces whose brows, eyes and mouth depend on the expression.

The real databases cannot be shipped, yet the demo and the tests must run every builder on files
in the original layouts and must be able to learn something: these faces carry class evidence a
small ViT picks up within a few hundred steps, while position, scale, skin tone, lighting and
noise vary so that memorising pixels does not suffice.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from vit_se.datasets.labels import CLASS_NAMES_WITH_CONTEMPT

# Per expression: (brow tilt, brow lift, eye openness, mouth curve, mouth open, mouth width).
# Tilt > 0 lowers the inner ends (anger); curve > 0 is a smile.
_SHAPES = {
    "angry": (0.9, -0.05, 0.7, -0.25, 0.0, 0.8),
    "disgust": (0.4, -0.08, 0.45, -0.45, 0.15, 0.6),
    "fear": (-0.6, 0.12, 1.3, -0.1, 0.45, 0.7),
    "happy": (0.0, 0.0, 0.8, 0.8, 0.2, 1.1),
    "sad": (-0.9, 0.0, 0.6, -0.8, 0.0, 0.8),
    "surprise": (0.0, 0.25, 1.5, 0.0, 1.0, 0.5),
    "neutral": (0.0, 0.0, 1.0, 0.0, 0.0, 0.8),
    "contempt": (0.3, 0.0, 0.8, 0.35, 0.0, 0.9),
}


def draw_face(label, size=96, rng=None, rgb=False, background=None):
    """Returns a uint8 face image (size x size, 1 or 3 channels) for a canonical label index."""
    rng = np.random.default_rng() if rng is None else rng
    name = CLASS_NAMES_WITH_CONTEMPT[label]
    tilt, lift, eye_open, curve, mouth_open, mouth_w = _SHAPES[name]
    scale = 4  # draw large, then downsample for antialiasing
    s = size * scale
    bg = int(rng.integers(20, 90)) if background is None else background
    img = Image.new("L", (s, s), bg)
    d = ImageDraw.Draw(img)
    cx = s / 2 + rng.uniform(-0.06, 0.06) * s
    cy = s / 2 + rng.uniform(-0.06, 0.06) * s
    r = s * rng.uniform(0.34, 0.42)
    skin = int(rng.integers(150, 230))
    d.ellipse([cx - r * 0.82, cy - r, cx + r * 0.82, cy + r], fill=skin)
    ink = int(rng.integers(0, 50))
    lw = max(2, int(r * 0.06))
    for side in (-1, 1):
        ex, ey = cx + side * r * 0.36, cy - r * 0.18
        ew, eh = r * 0.16, r * 0.09 * eye_open
        d.ellipse([ex - ew, ey - eh, ex + ew, ey + eh], fill=ink)
        by = ey - r * (0.2 + lift)
        inner, outer = ex - side * r * 0.2, ex + side * r * 0.22
        d.line([(inner, by + tilt * r * 0.1), (outer, by - tilt * r * 0.1)], fill=ink, width=lw)
    my, mw = cy + r * 0.45, r * 0.35 * mouth_w
    pts = [(cx + t * mw, my + curve * r * 0.18 * (1 - t * t)) for t in np.linspace(-1, 1, 15)]
    if mouth_open > 0:
        lower = [(x, y + mouth_open * r * 0.22 * (1 - ((x - cx) / mw) ** 2)) for x, y in pts]
        d.polygon(pts + lower[::-1], fill=ink)
    else:
        d.line(pts, fill=ink, width=lw)
    if name == "contempt":  # one-sided smirk
        d.line([(cx + mw, my), (cx + mw * 1.2, my - r * 0.12)], fill=ink, width=lw)
    img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * rng.uniform(0.8, 1.2) + rng.normal(0, 6, arr.shape)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if rgb:
        tint = rng.uniform(0.85, 1.15, size=3)
        return np.clip(arr[..., None] * tint, 0, 255).astype(np.uint8)
    return arr[..., None]


def save_image(array, path, **kwargs):
    """Writes a uint8 HxWxC array with PIL, choosing the format from the extension."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    img.save(path, **kwargs)
