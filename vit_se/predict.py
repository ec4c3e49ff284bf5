"""Apply a trained model to image files, folders and videos.

  python -m vit_se.predict --workdir=/tmp/run [--params=best_params.npz] [--out=preds.csv] \
      photo.jpg faces/ clip.mp4 [--every_nth_frame=5]

  python -m vit_se.predict --npz=ViT-B_16-fer.npz --variant=B/16 \
      --labels=angry,disgust,fear,happy,sad,surprise,neutral [--use_se] [--image_size=224] images/

Inputs: an image file; a folder (searched recursively for files with an image extension, hidden
files and folders skipped, sorted); a video file (by extension, read with OpenCV; every Nth frame,
counted from frame 0, is classified; OpenCV's BGR frames are converted to RGB). Each image goes
through `inference.preprocess`, i.e. the run's face crop and the very transform evaluation used,
so the model sees what it saw when it was scored.

Output: a table on stdout (file, frame for videos, predicted class, confidence) and, with --out,
a CSV or JSON file (by extension) with one row per image or sampled frame: `file`, `frame`
(empty/null for images), `predicted`, `confidence` and one column per class name holding that
class's probability. The file is written under a temporary name and renamed, so a reader never
sees half a file.

Unreadable inputs (undecodable image, video that opens to no frame, missing path) are each named
on one line. By default the command then fails listing all of them and writes nothing (the model
is not run once the first bad file is seen, but every input is still read so the list is
complete); with --skip_bad they are skipped and counted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

from vit_se.datasets.common import BadImagesError

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
FIXED_COLUMNS = ("file", "frame", "predicted", "confidence")


class PredictError(ValueError):
    """Bad inputs or flags, with a message meant for the command line."""


# ------------------------------------------------------------------------------------ inputs


def is_video(path):
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def is_image(path):
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def expand_paths(paths):
    """Files and folders -> the list of files to read, in a stable order.

    A folder contributes its images (recursively, sorted, hidden entries skipped); a file named
    explicitly is kept whatever its extension (a video when its extension says so, else an image).
    A path that does not exist is kept too, so reading it reports it as bad.
    """
    out = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(
                    os.path.join(root, f)
                    for f in sorted(files)
                    if not f.startswith(".") and is_image(f)
                )
        else:
            out.append(path)
    return out


def _read_video(path, every_nth_frame):
    """Yields (frame_index, RGB uint8 frame) for frames 0, N, 2N, ...; raises if none reads."""
    import cv2

    if not os.path.isfile(path):
        raise BadImagesError(f"{path}: no such file")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise BadImagesError(f"{path}: cannot open video (OpenCV VideoCapture failed)")
        index = 0
        kept = 0
        while True:
            if index % every_nth_frame == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                kept += 1
                yield index, np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            elif not cap.grab():  # skipped frames are not decoded
                break
            index += 1
        if kept == 0:
            raise BadImagesError(f"{path}: cannot read any frame of the video")
    finally:
        cap.release()


def iter_inputs(paths, every_nth_frame=1):
    """Yields (file, frame or None, uint8 HxWx3 image, error or None) for every input.

    A bad file yields one item with the image None and a one-line error naming it. A video that
    breaks after some frames keeps the frames it gave.
    """
    from vit_se import inference

    for path in expand_paths(paths):
        if is_video(path):
            try:
                for index, frame in _read_video(path, every_nth_frame):
                    yield path, index, frame, None
            except BadImagesError as e:
                yield path, None, None, str(e)
        else:
            try:
                if not os.path.exists(path):
                    raise BadImagesError(f"{path}: no such file")
                image = inference.read_image(path)
            except (BadImagesError, OSError) as e:
                msg = str(e) if str(e).startswith(path) else f"{path}: {e}"
                yield path, None, None, msg
                continue
            yield path, None, image, None


# ------------------------------------------------------------------------------------ model


def _rows_for(meta, probs, class_names):
    rows = []
    for (path, frame), p in zip(meta, probs, strict=True):
        k = int(np.argmax(p))
        row = {
            "file": path,
            "frame": frame,
            "predicted": class_names[k],
            "confidence": float(p[k]),
        }
        row.update({name: float(v) for name, v in zip(class_names, p, strict=True)})
        rows.append(row)
    return rows


def predict_paths(trained, paths, batch_size=32, every_nth_frame=1, skip_bad=False, bad=None):
    """Classifies images, folders and videos with a `inference.Trained` model.

    Args:
      trained: from `inference.load_trained` or `inference.load_official`.
      paths: image files, folders (recursive) and video files.
      batch_size: images per model call; the last batch is padded so the model compiles once.
      every_nth_frame: classify video frames 0, N, 2N, ...
      skip_bad: skip unreadable inputs (logged with their count) instead of raising.
      bad: optional list; every unreadable input's one-line message is appended to it (and
        then not logged: the caller reports them).

    Returns:
      A list of dicts, one per image or sampled video frame, in input order: file, frame (None
      for images), predicted, confidence and one probability per class name.

    Raises:
      BadImagesError listing every unreadable input (unless skip_bad).
    """
    from vit_se import inference

    if batch_size < 1:
        raise PredictError(f"batch_size must be at least 1, got {batch_size}")
    if every_nth_frame < 1:
        raise PredictError(f"every_nth_frame must be at least 1, got {every_nth_frame}")
    class_names = trained.class_names
    if len(set(class_names) & set(FIXED_COLUMNS)):
        raise PredictError(f"class names may not be any of {FIXED_COLUMNS}: {class_names}")
    caller_collects = bad is not None
    bad = [] if bad is None else bad
    first_bad = len(bad)
    size = trained.image_size
    rows, meta, batch = [], [], []

    def flush():
        if not batch:
            return
        n = len(batch)
        x = np.zeros((batch_size, size, size, 3), np.float32)
        x[:n] = np.stack(batch)
        probs = trained.probabilities(x)[:n]
        rows.extend(_rows_for(meta, probs, class_names))
        meta.clear()
        batch.clear()

    for path, frame, image, error in iter_inputs(paths, every_nth_frame):
        if error is not None:
            bad.append(error)
            continue
        if len(bad) > first_bad and not skip_bad:
            continue  # failing anyway: keep reading only to list every bad input
        meta.append((path, frame))
        batch.append(inference.preprocess(image, trained.info))
        if len(batch) == batch_size:
            flush()
    flush()

    new_bad = bad[first_bad:]
    if new_bad and not skip_bad:
        raise BadImagesError(
            f"{len(new_bad)} unreadable input(s) (pass --skip_bad to skip them):\n"
            + "\n".join(new_bad)
        )
    if new_bad and not caller_collects:
        logging.warning("skipped %d unreadable input(s): %s", len(new_bad), "; ".join(new_bad))
    return rows


# ------------------------------------------------------------------------------------ output


def _fmt_frame(frame):
    return "" if frame is None else str(frame)


def format_table(rows):
    """Plain-text table: file, frame (only if a video is among the inputs), class, confidence."""
    with_frames = any(r["frame"] is not None for r in rows)
    header = ["file"] + (["frame"] if with_frames else []) + ["predicted", "confidence"]
    body = [
        [r["file"]]
        + ([_fmt_frame(r["frame"])] if with_frames else [])
        + [r["predicted"], f"{r['confidence']:.4f}"]
        for r in rows
    ]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(header)]
    right = {"frame", "confidence"}

    def line(cells):
        return "  ".join(
            c.rjust(w) if h in right else c.ljust(w)
            for c, w, h in zip(cells, widths, header, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def to_csv(rows, class_names):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(FIXED_COLUMNS) + list(class_names))
    for r in rows:
        writer.writerow(
            [r["file"], _fmt_frame(r["frame"]), r["predicted"], repr(r["confidence"])]
            + [repr(r[c]) for c in class_names]
        )
    return buf.getvalue()


def to_json(rows, class_names, source=None, skipped=()):
    doc = {
        "source": source or {},
        "class_names": list(class_names),
        "columns": list(FIXED_COLUMNS) + list(class_names),
        "num_predictions": len(rows),
        "skipped": list(skipped),
        "predictions": rows,
    }
    return json.dumps(doc, indent=1) + "\n"


def write_atomic(path, text):
    """Writes text to a temporary file beside `path`, then renames it over `path`."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an output file is for sharing
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_predictions(path, rows, class_names, source=None, skipped=()):
    lower = path.lower()
    if lower.endswith(".csv"):
        write_atomic(path, to_csv(rows, class_names))
    elif lower.endswith(".json"):
        write_atomic(path, to_json(rows, class_names, source, skipped))
    else:
        raise PredictError(f"--out must end with .csv or .json, got {path!r}")


# ------------------------------------------------------------------------------------ CLI

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command (defined only when run as a program, so others can import this)."""
    flags.DEFINE_string("workdir", None, "Workdir of a finished vit_se run (export.json + params).")
    flags.DEFINE_string(
        "params",
        "params.npz",
        "Parameter file in --workdir: params.npz (final step) "
        "or best_params.npz (best on the validation split).",
    )
    flags.DEFINE_string(
        "npz",
        None,
        "Official-format .npz (vit_jax/big_vision layout or a vit_se "
        "export) to use instead of --workdir; needs --variant and --labels.",
    )
    flags.DEFINE_string("variant", None, "Model variant of --npz, e.g. B/16.")
    flags.DEFINE_list("labels", None, "Class names of --npz in head order, comma-separated.")
    flags.DEFINE_string("labels_file", None, "File with the class names of --npz, one per line.")
    flags.DEFINE_integer("image_size", 224, "Input size of the --npz model.")
    flags.DEFINE_bool("use_se", False, "The --npz model has the SE block (a vit_se fine-tune).")
    flags.DEFINE_integer("se_reduction", 4, "SE reduction of the --npz model.")
    flags.DEFINE_bool(
        "face_crop",
        False,
        "Face-crop inputs for the --npz model (a workdir's run "
        "says itself whether it was trained on face crops).",
    )
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_integer("every_nth_frame", 1, "Classify video frames 0, N, 2N, ...")
    flags.DEFINE_string("out", None, "Write the predictions to this .csv or .json file.")
    flags.DEFINE_bool("skip_bad", False, "Skip unreadable inputs (counted) instead of failing.")
    flags.DEFINE_bool("quiet", False, "Do not print the table.")


def _labels_from_flags():
    if FLAGS.labels and FLAGS.labels_file:
        raise PredictError("give --labels or --labels_file, not both")
    if FLAGS.labels_file:
        with open(FLAGS.labels_file) as f:
            names = [line.strip() for line in f if line.strip()]
    elif FLAGS.labels:
        names = [n.strip() for n in FLAGS.labels]
    else:
        raise PredictError("--npz needs the class names: --labels=a,b,... or --labels_file=FILE")
    if len(set(names)) != len(names):
        raise PredictError(f"class names repeat: {names}")
    return names


def load_from_flags():
    """The model named by --workdir/--params or by --npz/--variant/--labels; and its source."""
    from vit_se import inference

    if bool(FLAGS.workdir) == bool(FLAGS.npz):
        raise PredictError("give exactly one of --workdir (a finished run) or --npz")
    if FLAGS.workdir:
        trained = inference.load_trained(FLAGS.workdir, FLAGS.params)
        source = {"workdir": FLAGS.workdir, "params": FLAGS.params}
        return trained, source
    if not FLAGS.variant:
        raise PredictError("--npz needs --variant (e.g. B/16)")
    names = _labels_from_flags()
    trained = inference.load_official(
        FLAGS.npz,
        FLAGS.variant,
        names,
        image_size=FLAGS.image_size,
        use_se=FLAGS.use_se,
        se_reduction=FLAGS.se_reduction,
    )
    trained.info["face_crop"] = bool(FLAGS.face_crop)
    source = {"npz": FLAGS.npz, "variant": FLAGS.variant, "image_size": FLAGS.image_size}
    return trained, source


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("name at least one image file, folder or video")
    if FLAGS.out and not FLAGS.out.lower().endswith((".csv", ".json")):
        sys.exit(f"vit_se.predict: --out must end with .csv or .json, got {FLAGS.out!r}")
    import tensorflow as tf

    from vit_se import checkpoint

    tf.config.set_visible_devices([], "GPU")  # TF only preprocesses; JAX owns the accelerators.
    try:
        trained, source = load_from_flags()
        bad = []
        rows = predict_paths(
            trained,
            paths,
            batch_size=FLAGS.batch_size,
            every_nth_frame=FLAGS.every_nth_frame,
            skip_bad=FLAGS.skip_bad,
            bad=bad,
        )
    except (PredictError, BadImagesError, FileNotFoundError, checkpoint.CheckpointError) as e:
        sys.exit(f"vit_se.predict: {e}")
    if not FLAGS.quiet:
        print(format_table(rows))
    if bad:
        print(f"skipped {len(bad)} unreadable input(s):")
        for msg in bad:
            print(f"  {msg}")
    if FLAGS.out:
        write_predictions(FLAGS.out, rows, trained.class_names, source, bad)
        print(f"wrote {len(rows)} prediction(s) to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
