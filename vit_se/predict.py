"""Apply a trained model to image files, folders and videos.

  python -m vit_se.predict --workdir=/tmp/run [--params=params.npz] [--out=preds.csv] \
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

import numpy as np
from absl import app, flags, logging

from vit_se import cli, workdir
from vit_se.datasets.common import BadImagesError

FIXED_COLUMNS = ("file", "frame", "predicted", "confidence")


# ------------------------------------------------------------------------------------ inputs


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

    for path in cli.find_images(paths):
        if cli.is_video(path):
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
        raise cli.CommandError(f"batch_size must be at least 1, got {batch_size}")
    if every_nth_frame < 1:
        raise cli.CommandError(f"every_nth_frame must be at least 1, got {every_nth_frame}")
    class_names = trained.class_names
    if len(set(class_names) & set(FIXED_COLUMNS)):
        raise cli.CommandError(f"class names may not be any of {FIXED_COLUMNS}: {class_names}")
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


def write_predictions(path, rows, class_names, source=None, skipped=()):
    lower = path.lower()
    if lower.endswith(".csv"):
        workdir.write_text(path, to_csv(rows, class_names))
    elif lower.endswith(".json"):
        workdir.write_text(path, to_json(rows, class_names, source, skipped))
    else:
        raise cli.CommandError(f"--out must end with .csv or .json, got {path!r}")


# ------------------------------------------------------------------------------------ CLI

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command (defined only when run as a program, so others can import this)."""
    cli.define_model_flags()
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_integer("every_nth_frame", 1, "Classify video frames 0, N, 2N, ...")
    flags.DEFINE_string("out", None, "Write the predictions to this .csv or .json file.")
    flags.DEFINE_bool("skip_bad", False, "Skip unreadable inputs (counted) instead of failing.")
    flags.DEFINE_bool("quiet", False, "Do not print the table.")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("name at least one image file, folder or video")
    if FLAGS.out and not FLAGS.out.lower().endswith((".csv", ".json")):
        raise cli.CommandError(f"--out must end with .csv or .json, got {FLAGS.out!r}")
    trained = cli.load_model()
    bad = []
    rows = predict_paths(
        trained,
        paths,
        batch_size=FLAGS.batch_size,
        every_nth_frame=FLAGS.every_nth_frame,
        skip_bad=FLAGS.skip_bad,
        bad=bad,
    )
    if not FLAGS.quiet:
        print(format_table(rows))
    if bad:
        print(f"skipped {len(bad)} unreadable input(s):")
        for msg in bad:
            print(f"  {msg}")
    if FLAGS.out:
        write_predictions(FLAGS.out, rows, trained.class_names, trained.source, bad)
        print(f"wrote {len(rows)} prediction(s) to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "predict")
