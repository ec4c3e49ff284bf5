r"""Looks inside a trained model: attention maps, attention rollout, Grad-CAM and SE weights.

  python -m vit_se.analyze --workdir=/tmp/run [--params=params.npz] [--out=DIR] \
      [--class_name=happy] [--layer=-1] [--head_fusion=mean] face.jpg faces/ ...

  python -m vit_se.analyze --npz=ViT-B_16-fer.npz --variant=B/16 \
      --labels=angry,disgust,fear,happy,sad,surprise,neutral [--use_se] face.jpg

Each image is prepared exactly as evaluation prepares it (the run's face crop and eval resize,
`vit_se.inference.preprocess`), and every map is drawn over that model input, so a map's cells sit
on the pixels the model saw. Written to --out (default <workdir>/analysis):

  NNN_<name>_attention.png   class-token attention over the patches, layers (rows) x heads (cols)
  NNN_<name>_rollout.png     attention rollout overlay        (Abnar & Zuidema, 2020)
  NNN_<name>_gradcam.png     Grad-CAM overlay for --class_name (default: the predicted class)
  NNN_<name>_summary.png     input | rollout | Grad-CAM | class probabilities
  se_weights_by_class.png    mean SE excitation per predicted class (models with an SE block)
  maps.npz                   the raw arrays (attention, rollout, grad_cam, se, probabilities)
  summary.json               predictions, probabilities and the file names of the figures

The computations live in `vit_se.attention` (the Python API), the drawing in `vit_se.figures`;
this module runs them over files and writes the results.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
from absl import flags, logging

from vit_se import attention, cli, figures, inference, media, workdir


def load_inputs(paths, info):
    """Reads and preprocesses; returns (model inputs [N, S, S, 3], kept paths, skipped paths)."""
    inputs, kept, skipped = [], [], []
    for p in paths:
        try:
            inputs.append(inference.preprocess(media.read_image(p), info))
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
    files = media.find(paths)
    if not files:
        raise cli.CommandError(f"no image files in {', '.join(paths)}")
    x, kept, skipped = load_inputs(files, trained.info)
    if x is None:
        raise cli.CommandError("none of the images could be read")
    workdir.makedirs(out_dir)
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
        figures.save_figure(
            figures.attention_figure(x[i], result.attention[i], alpha, cmap, title=head),
            os.path.join(out_dir, figs["attention"]),
        )
        figures.save_png(
            figures.overlay(x[i], result.rollout[i], alpha, cmap),
            os.path.join(out_dir, figs["rollout"]),
        )
        figures.save_png(
            figures.overlay(x[i], result.grad_cam[i], alpha, cmap),
            os.path.join(out_dir, figs["grad_cam"]),
        )
        figures.save_figure(
            figures.summary_figure(
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
        figures.save_figure(
            figures.se_figure(by_class), os.path.join(out_dir, "se_weights_by_class.png")
        )
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
    workdir.write_bytes(os.path.join(out_dir, "maps.npz"), buf.getvalue())
    workdir.write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


# ----------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command (defined only when run as a program, so others can import this)."""
    cli.define_model_flags()
    flags.DEFINE_string("out", None, "Output folder; default <workdir>/analysis or ./analysis.")
    flags.DEFINE_string("class_name", None, "Grad-CAM class; default each image's predicted class.")
    flags.DEFINE_integer("layer", -1, "Grad-CAM block (its normalised input tokens); -1 the last.")
    flags.DEFINE_enum("head_fusion", "mean", list(attention.HEAD_FUSIONS), "Rollout head fusion.")
    flags.DEFINE_float("alpha", 0.5, "Overlay opacity.")
    flags.DEFINE_string("cmap", "jet", "Matplotlib colour map of the overlays (jet, inferno, ...).")
    flags.DEFINE_integer("batch_size", attention.DEFAULT_BATCH_SIZE, "Images per forward pass.")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise cli.CommandError("give image files or folders after the flags")
    trained = cli.load_model()
    if FLAGS.class_name is not None and FLAGS.class_name not in trained.class_names:
        raise cli.CommandError(
            f"--class_name={FLAGS.class_name} is not one of {', '.join(trained.class_names)}"
        )
    missing = [p for p in paths if not workdir.exists(p)]
    if missing:
        raise cli.CommandError(f"no such file or folder: {', '.join(missing)}")
    out = FLAGS.out or (
        os.path.join(FLAGS.workdir, workdir.ANALYSIS_DIR) if FLAGS.workdir else workdir.ANALYSIS_DIR
    )
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
        trained.source,
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
    cli.run(main, "analyze")
