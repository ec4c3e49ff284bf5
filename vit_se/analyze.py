r"""Looks inside a trained model: attention maps, attention rollout, Grad-CAM and SE weights.

  python -m vit_se.analyze --workdir=/tmp/run [--params=best_params.npz] [--out=DIR] \
      [--class_name=happy] [--layer=-1] [--head_fusion=mean] face.jpg faces/ ...

  python -m vit_se.analyze --npz=ViT-B_16-fer.npz --variant=B/16 \
      --labels=angry,disgust,fear,happy,sad,surprise,neutral [--use_se] face.jpg

Each image is prepared exactly as evaluation prepares it (the run's face crop and eval crop,
`vit_se.inference.preprocess`), and every map is drawn over that model input, so a map's cells sit
on the pixels the model saw. Written to --out (default <workdir>/analysis):

  NNN_<name>_attention.png   class-token attention over the patches, layers (rows) x heads (cols)
  NNN_<name>_rollout.png     attention rollout overlay        (Abnar & Zuidema, 2020)
  NNN_<name>_gradcam.png     Grad-CAM overlay for --class_name (default: the predicted class)
  NNN_<name>_summary.png     input | rollout | Grad-CAM | class probabilities
  se_weights_by_class.png    mean SE excitation per predicted class (models with an SE block)
  maps.npz                   the raw arrays (attention, rollout, grad_cam, se, probabilities)
  summary.json               predictions, probabilities and the file names of the figures

The computations live in `vit_se.attention` (the Python API); this module draws and writes.
"""

from __future__ import annotations

import io
import json
import os
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from vit_se import attention, inference  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DISPLAY_SIZE = 224  # overlays are drawn at least this large, whatever the model's input size

# ----------------------------------------------------------------------------------------------
# Drawing.


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


def _write_bytes(path, data):
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def save_png(array, path):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    _write_bytes(path, buf.getvalue())


def save_figure(fig, path, dpi=100):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    _write_bytes(path, buf.getvalue())


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


# ----------------------------------------------------------------------------------------------
# Files in, files out.


def collect_images(paths):
    """Image files named directly, or found (recursively, sorted) under folders."""
    found = []
    for p in paths:
        if tf.io.gfile.isdir(p):
            for root, dirs, files in tf.io.gfile.walk(p):
                dirs.sort()
                found += [
                    os.path.join(root, f)
                    for f in sorted(files)
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                ]
        elif tf.io.gfile.exists(p):
            found.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return found


def load_inputs(paths, info):
    """Reads and preprocesses; returns (model inputs [N, S, S, 3], kept paths, skipped paths)."""
    inputs, kept, skipped = [], [], []
    for p in paths:
        try:
            inputs.append(inference.preprocess(inference.read_image(p), info))
            kept.append(p)
        except Exception as e:  # noqa: BLE001 - report the file and carry on with the rest
            logging.warning("skipping %s: %s", p, e)
            skipped.append({"path": p, "error": str(e)})
    return np.stack(inputs) if inputs else None, kept, skipped


def _stem(i, path):
    name = os.path.splitext(os.path.basename(path))[0]
    return f"{i:03d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def analyze_files(
    trained,
    paths,
    out_dir,
    class_name=None,
    layer=-1,
    head_fusion="mean",
    alpha=0.5,
    cmap="jet",
    batch_size=attention.DEFAULT_BATCH_SIZE,
    source=None,
):
    """Runs every analysis on image files and writes the figures; returns the summary dict."""
    files = collect_images(paths)
    if not files:
        raise ValueError(f"no image files in {', '.join(paths)}")
    x, kept, skipped = load_inputs(files, trained.info)
    if x is None:
        raise ValueError("none of the images could be read")
    tf.io.gfile.makedirs(out_dir)
    names = trained.class_names
    result = attention.analyze(trained, x, class_name, layer, head_fusion, batch_size)
    num_layers = result.attention.shape[1]

    images = []
    for i, path in enumerate(kept):
        stem = _stem(i, path)
        pred = int(np.argmax(result.probabilities[i]))
        cam_class = int(result.grad_cam_class[i])
        head = f"{os.path.basename(path)}: {names[pred]} ({result.probabilities[i, pred]:.2f})"
        figs = {
            "attention": f"{stem}_attention.png",
            "rollout": f"{stem}_rollout.png",
            "grad_cam": f"{stem}_gradcam.png",
            "summary": f"{stem}_summary.png",
        }
        save_figure(
            attention_figure(x[i], result.attention[i], alpha, cmap, title=head),
            os.path.join(out_dir, figs["attention"]),
        )
        save_png(
            overlay(x[i], result.rollout[i], alpha, cmap), os.path.join(out_dir, figs["rollout"])
        )
        save_png(
            overlay(x[i], result.grad_cam[i], alpha, cmap), os.path.join(out_dir, figs["grad_cam"])
        )
        save_figure(
            summary_figure(
                x[i],
                result.rollout[i],
                result.grad_cam[i],
                result.probabilities[i],
                names,
                cam_class,
                alpha,
                cmap,
                title=head,
            ),
            os.path.join(out_dir, figs["summary"]),
        )
        images.append(
            {
                "path": path,
                "prediction": names[pred],
                "prediction_index": pred,
                "probabilities": {
                    n: float(p) for n, p in zip(names, result.probabilities[i], strict=True)
                },
                "grad_cam_class": names[cam_class],
                "figures": figs,
            }
        )

    arrays = dict(
        attention=result.attention,
        rollout=result.rollout,
        grad_cam=result.grad_cam,
        grad_cam_class=result.grad_cam_class,
        probabilities=result.probabilities,
        paths=np.array(kept),
        class_names=np.array(names),
    )
    summary = {
        "source": source,
        "class_names": names,
        "image_size": trained.image_size,
        "num_layers": int(num_layers),
        "num_heads": int(result.attention.shape[2]),
        "grid": int(result.rollout.shape[-1]),
        "grad_cam": {
            "class": class_name if class_name is not None else "predicted",
            "layer": int(layer % num_layers),
            "tokens": f"Transformer/encoderblock_{layer % num_layers}/LayerNorm_0 output",
        },
        "rollout_head_fusion": head_fusion,
        "images": images,
        "skipped": skipped,
        "arrays": "maps.npz",
    }
    if result.se is not None:
        predictions = np.argmax(result.logits, axis=-1)
        means, counts = attention.mean_by_class(result.se, predictions, len(names))
        by_class = attention.SEByClass(means, counts, names)
        save_figure(se_figure(by_class), os.path.join(out_dir, "se_weights_by_class.png"))
        arrays.update(se=result.se, se_mean_by_class=means, se_counts=counts)
        summary["se"] = {
            "figure": "se_weights_by_class.png",
            "width": int(result.se.shape[1]),
            "counts": {n: int(c) for n, c in zip(names, counts, strict=True)},
            "mean_excitation": {
                n: float(np.mean(means[c])) for c, n in enumerate(names) if counts[c]
            },
        }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _write_bytes(os.path.join(out_dir, "maps.npz"), buf.getvalue())
    with tf.io.gfile.GFile(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


# ----------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command (defined only when run as a program, so others can import this)."""
    flags.DEFINE_string("workdir", None, "Workdir of a finished vit_se run (export.json + params).")
    flags.DEFINE_string(
        "params",
        None,
        "Parameter file in --workdir; default best_params.npz if present, else params.npz.",
    )
    flags.DEFINE_string("npz", None, "An official-format .npz instead of --workdir.")
    flags.DEFINE_string("variant", "B/16", "Model variant of --npz.")
    flags.DEFINE_list("labels", None, "Class names of --npz's head, in order.")
    flags.DEFINE_integer("image_size", 224, "Input size of --npz.")
    flags.DEFINE_bool("use_se", False, "--npz has an SE block (a vit_se export).")
    flags.DEFINE_string("out", None, "Output folder; default <workdir>/analysis or ./analysis.")
    flags.DEFINE_string("class_name", None, "Grad-CAM class; default each image's predicted class.")
    flags.DEFINE_integer("layer", -1, "Grad-CAM block (its normalised input tokens); -1 the last.")
    flags.DEFINE_enum("head_fusion", "mean", list(attention.HEAD_FUSIONS), "Rollout head fusion.")
    flags.DEFINE_float("alpha", 0.5, "Overlay opacity.")
    flags.DEFINE_string("cmap", "jet", "Matplotlib colour map of the overlays (jet, inferno, ...).")
    flags.DEFINE_integer("batch_size", attention.DEFAULT_BATCH_SIZE, "Images per forward pass.")


def load_model(
    workdir=None, params=None, npz=None, variant="B/16", labels=None, image_size=224, use_se=False
):
    """-> (Trained, source description) from a workdir or an official npz plus labels."""
    if (workdir is None) == (npz is None):
        raise app.UsageError("give exactly one of --workdir and --npz")
    if npz is not None:
        if not labels:
            raise app.UsageError("--npz needs --labels (the class names of its head, in order)")
        trained = inference.load_official(npz, variant, labels, image_size, use_se=use_se)
        return trained, {"npz": npz, "variant": variant}
    if params is None:
        best = os.path.join(workdir, "best_params.npz")
        params = "best_params.npz" if tf.io.gfile.exists(best) else "params.npz"
    return inference.load_trained(workdir, params), {"workdir": workdir, "params": params}


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give image files or folders after the flags")
    trained, source = load_model(
        FLAGS.workdir,
        FLAGS.params,
        FLAGS.npz,
        FLAGS.variant,
        FLAGS.labels,
        FLAGS.image_size,
        FLAGS.use_se,
    )
    if FLAGS.class_name is not None and FLAGS.class_name not in trained.class_names:
        raise app.UsageError(
            f"--class_name={FLAGS.class_name} is not one of {', '.join(trained.class_names)}"
        )
    missing = [p for p in paths if not tf.io.gfile.exists(p)]
    if missing:
        raise app.UsageError(f"no such file or folder: {', '.join(missing)}")
    out = FLAGS.out or (os.path.join(FLAGS.workdir, "analysis") if FLAGS.workdir else "analysis")
    summary = analyze_files(
        trained,
        paths,
        out,
        FLAGS.class_name,
        FLAGS.layer,
        FLAGS.head_fusion,
        FLAGS.alpha,
        FLAGS.cmap,
        FLAGS.batch_size,
        source,
    )
    width = max(len(os.path.basename(r["path"])) for r in summary["images"])
    for r in summary["images"]:
        p = r["probabilities"][r["prediction"]]
        print(f"{os.path.basename(r['path']):<{width}}  {r['prediction']:<10} {p:.3f}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} unreadable file(s); see summary.json")
    print(f"wrote {len(summary['images'])} image analyses to {out} (summary.json)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
