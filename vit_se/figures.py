"""Every picture vit_se draws: attention overlays, Grad-CAM summaries, SE bars, confusion matrices,
masked-autoencoder reconstructions.

Drawing only; the numbers come from `vit_se.attention` and `vit_se.metrics`. Files are written
whole or not at all (`workdir.write_bytes`), locally or to `gs://`. matplotlib runs on its Agg
backend: commands run on headless TPU workers and in tests.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from vit_se import workdir  # noqa: E402

DISPLAY_SIZE = 224  # overlays are drawn at least this large, whatever the model's input size


def to_display(image):
    """A model input (float in [-1, 1]) or a uint8 image -> float32 HxWx3 in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    else:
        out = (image.astype(np.float32) + 1.0) / 2.0
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.clip(out, 0.0, 1.0)


def upsample(grid_map, size):
    """Bilinear upsampling of a [g, g] map to [size, size], cell centres on patch centres."""
    grid_map = np.asarray(grid_map, np.float32)
    factors = (size / grid_map.shape[0], size / grid_map.shape[1])
    out = ndimage.zoom(grid_map, factors, order=1, mode="nearest", grid_mode=True)
    return out[:size, :size]


def normalise(heat):
    """Min-max to [0, 1]; a constant map becomes zeros."""
    heat = np.asarray(heat, np.float32)
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)


def overlay(image, grid_map, alpha=0.5, cmap="jet", size=None):
    """The map upsampled and blended over the image: uint8 [size, size, 3].

    image: a model input in [-1, 1] (or uint8); grid_map [g, g]; size defaults to the larger of
    the image side and DISPLAY_SIZE.
    """
    base = to_display(image)
    size = size or max(base.shape[0], DISPLAY_SIZE)
    if base.shape[0] != size or base.shape[1] != size:
        factors = (size / base.shape[0], size / base.shape[1], 1)
        base = ndimage.zoom(base, factors, order=1, mode="nearest", grid_mode=True)
        base = np.clip(base[:size, :size], 0.0, 1.0)
    heat = plt.get_cmap(cmap)(normalise(upsample(grid_map, size)))[..., :3]
    return np.round(255 * ((1 - alpha) * base + alpha * heat)).astype(np.uint8)


def save_png(array, path):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    workdir.write_bytes(path, buf.getvalue())


def save_figure(fig, path, dpi=100):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    workdir.write_bytes(path, buf.getvalue())


def attention_figure(image, maps, alpha=0.5, cmap="jet", title=None):
    """Layers (rows) x heads (columns) of class-token attention overlays; maps [L, H, g, g].

    Each panel is scaled to its own range (min-max), so panels compare where, not how much.
    """
    layers, heads = maps.shape[:2]
    panel = 1.4 if layers * heads <= 64 else 1.0
    fig, axes = plt.subplots(
        layers,
        heads,
        figsize=(panel * heads, panel * layers + 0.4),
        squeeze=False,
        layout="constrained",
    )
    base = to_display(image)
    size = base.shape[0]
    for li in range(layers):
        for hi in range(heads):
            ax = axes[li, hi]
            ax.imshow(base, extent=(0, size, size, 0))
            ax.imshow(
                normalise(upsample(maps[li, hi], size)),
                cmap=cmap,
                alpha=alpha,
                extent=(0, size, size, 0),
                interpolation="bilinear",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if li == 0:
                ax.set_title(f"head {hi}", fontsize=7)
            if hi == 0:
                ax.set_ylabel(f"layer {li}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def summary_figure(
    image, rollout, cam, probabilities, class_names, cam_class, alpha=0.5, cmap="jet", title=None
):
    """One row: input | rollout | Grad-CAM | class probabilities."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.2]})
    axes[0].imshow(to_display(image))
    axes[0].set_title("model input", fontsize=9)
    axes[1].imshow(overlay(image, rollout, alpha, cmap))
    axes[1].set_title("attention rollout", fontsize=9)
    axes[2].imshow(overlay(image, cam, alpha, cmap))
    axes[2].set_title(f"Grad-CAM: {class_names[cam_class]}", fontsize=9)
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    order = np.arange(len(class_names))[::-1]
    best = int(np.argmax(probabilities))
    colors = ["tab:red" if i == best else "tab:gray" for i in order]
    axes[3].barh([class_names[i] for i in order], probabilities[order], color=colors)
    axes[3].set_xlim(0, 1)
    axes[3].set_title("probabilities", fontsize=9)
    axes[3].tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def se_figure(by_class):
    """Bars of the mean SE excitation per channel, one panel per predicted class with images."""
    present = [c for c in range(len(by_class.class_names)) if by_class.counts[c] > 0]
    if not present:
        raise ValueError("no class was predicted: nothing to plot")
    width = by_class.means.shape[1]
    fig, axes = plt.subplots(
        len(present), 1, figsize=(10, 1.5 * len(present) + 0.6), sharex=True, squeeze=False
    )
    for ax, c in zip(axes[:, 0], present, strict=True):
        m = by_class.means[c]
        ax.bar(np.arange(width), m, width=1.0, color="tab:blue")
        ax.axhline(float(np.mean(m)), color="tab:red", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylabel(f"{by_class.class_names[c]}\n(n={by_class.counts[c]})", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("channel of the class-token representation")
    fig.suptitle("SE excitation sigmoid(W2 relu(W1 c)), mean per predicted class (red: mean)")
    fig.tight_layout()
    return fig


def save_confusion_png(confusion, class_names, path, title=""):
    """Row-normalised confusion matrix with counts; returns the figure as uint8 RGB [H, W, 3]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    fig = Figure(figsize=(1.0 + 0.85 * n, 0.8 + 0.8 * n), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if cm[i, j] or (rows[i, 0] and i == j):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}\n{100 * frac[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    workdir.write_bytes(path, buf.getvalue())
    return image


def save_reconstruction_png(images, masked, reconstructed, path, title=""):
    """Masked-autoencoder reconstructions, one face per row: input | masked input |
    reconstruction (`vit_se.mae.reconstruction`); all [n, H, W, 3] in [-1, 1].

    Drawn pixel for pixel (nearest), so the patch grid stays visible. Written as a PNG; returns
    the figure as uint8 RGB [H, W, 3], which a clu writer logs with
    `write_images(step, {"reconstruction": image[None]})`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = (("input", images), ("masked", masked), ("reconstruction", reconstructed))
    n = len(images)
    fig = Figure(figsize=(3 * 1.6, n * 1.6 + (0.3 if title else 0.0)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    for row in range(n):
        for col, (name, arrays) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(to_display(arrays[row]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    workdir.write_bytes(path, buf.getvalue())
    return image


def read_scalars(run_dir):
    """{tag: (steps, values)} of the scalars a run logged (clu writes them as tensors).

    Read with TensorBoard's own accumulator over every event file of the run directory, in the
    order they were written; points a resumed run wrote again replace the killed run's.
    """
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("tensors", []):
        events = acc.Tensors(tag)
        values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
        if all(v.size == 1 for v in values):
            out[tag] = ([e.step for e in events], [float(v) for v in values])
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        out[tag] = ([e.step for e in events], [e.value for e in events])
    return out


def curves_figure(scalars, title=""):
    """Loss (left) and accuracy (right) over steps: train, and every evaluated split."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        drawn = False
        for tag in sorted(scalars):
            split, _, name = tag.partition("/")
            if name != metric:
                continue
            steps, values = scalars[tag]
            ax.plot(steps, values, marker="" if split == "train" else "o", ms=3, label=split)
            drawn = True
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        if metric == "accuracy":
            ax.set_ylim(0, 1)
        if drawn:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_curves(run_dir, path):
    """curves.png of a run directory's TensorBoard logs; returns the tags drawn."""
    scalars = read_scalars(run_dir)
    save_figure(curves_figure(scalars, title=run_dir), path)
    return sorted(t for t in scalars if t.endswith(("/loss", "/accuracy")))


# ----------------------------------------------------------------------------------------------
# Faces and labels drawn onto photographs and video frames (`vit_se.predict --annotate`).

# Distinct colours (RGB) for track ids, cycled: tab10's.
TRACK_COLOURS = [
    tuple(int(round(255 * c)) for c in matplotlib.colormaps["tab10"](i)[:3]) for i in range(10)
]


def draw_labels(image, items):
    """An RGB uint8 copy of `image` with each item drawn: a dict with `text` and optionally
    `box` (x, y, width, height) and `colour_index` (a track id). An item without a box is
    written in the top-left corner (whole-image predictions). Drawn with OpenCV on the RGB
    array, so colours are given in RGB (see `vit_se.datasets.faces` on colour order)."""
    import cv2

    out = np.ascontiguousarray(np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image)
    out = out.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(h, w) / 640)
    thick = max(1, int(round(2 * scale)))
    line = 0
    for item in items:
        colour = TRACK_COLOURS[int(item.get("colour_index") or 0) % len(TRACK_COLOURS)]
        (tw, th), base = cv2.getTextSize(item["text"], cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        if item.get("box") is None:
            x, y = 4, 4 + line * (th + base + 6)
            line += 1
        else:
            bx, by, bw, bh = (int(round(v)) for v in item["box"])
            cv2.rectangle(out, (bx, by), (bx + bw, by + bh), colour, thick)
            x, y = bx, max(0, by - th - base - 4)
        cv2.rectangle(out, (x, y), (x + tw + 4, y + th + base + 4), colour, -1)
        cv2.putText(
            out,
            item["text"],
            (x + 2, y + th + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return out
