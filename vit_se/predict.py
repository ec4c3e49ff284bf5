"""Apply a trained model to image files, folders and videos: per image, or per face.

  python -m vit_se.predict --workdir=/tmp/run [--params=params.npz] [--out=preds.csv] \
      photo.jpg faces/ clip.mp4 [--every_nth_frame=5]

  python -m vit_se.predict --npz=ViT-B_16-fer.npz --variant=B/16 \
      --labels=angry,disgust,fear,happy,sad,surprise,neutral [--use_se] [--image_size=224] images/

  python -m vit_se.predict --workdir=/tmp/run --faces [--detector=aligned] [--smooth=ema:0.3] \
      --annotate=annotated/ --out=faces.csv group.jpg clip.mp4

Inputs (found, sniffed and read by `vit_se.media`): an image file; a folder (searched
recursively for files with an image extension, hidden files and folders skipped, sorted); a video
file (by extension, read with OpenCV; every Nth frame, counted from frame 0, is classified;
OpenCV's BGR frames are converted to RGB; a progress line every --progress_every sampled frames).
16-bit images are scaled by their bit depth. Each image goes through `inference.preprocess`,
i.e. the run's face crop and the very transform evaluation used, so the model sees what it saw
when it was scored.

Output: a table on stdout (file, frame for videos, predicted class, confidence) and, with --out,
a CSV or JSON file (by extension) with one row per image or sampled frame: `file`, `frame`
(empty/null for images), `predicted`, `confidence` and one column per class name holding that
class's probability. The file is written under a temporary name and renamed, so a reader never
sees half a file.

Per face (--faces): every face the detector finds (--detector: 'aligned', MTCNN with 5-point
alignment, or 'haar'; default the run's own face crop, else 'aligned') is cropped as training
cropped a face of that mode (`inference.preprocess_face`) and gets its own row: `file`, `frame`,
`face` (0 = largest), `track` (videos: the face's identity across frames, `vit_se.tracking`;
empty for images), the box `x`, `y`, `width`, `height` in pixels of the input, `detector_score`,
then `predicted`, `confidence` and the class probabilities. --smooth (off by default;
`window:N` or `ema:ALPHA`) averages each track's probabilities over its sampled frames, and the
row then holds the smoothed values. Images and frames where no face is found give no row; they
are counted per file and reported (the table's footer, the JSON's `no_face`).

--annotate DIR writes each input with its predictions drawn (`vit_se.annotate`).

Unreadable inputs (undecodable image, video that opens to no frame, missing path) are each named
on one line. By default the command then fails listing all of them and writes nothing (the model
is not run once the first bad file is seen, but every input is still read so the list is
complete); with --skip_bad they are skipped and counted. No input at all (folders without
images) and no readable input are each one line, and nothing is written.

Before the model is loaded: the inputs are found, and --out and --annotate must be writable (a
real test write, `cli.check_writable`).
"""

from __future__ import annotations

import collections

import numpy as np
from absl import app, flags, logging

from vit_se import annotate, cli, media, tracking
from vit_se.datasets.common import BadImagesError
from vit_se.prediction_output import (
    FACE_COLUMNS,
    FIXED_COLUMNS,
    format_table,
    write_predictions,
)

DEFAULT_PROGRESS_EVERY = 100


# ------------------------------------------------------------------------------------ inputs


def find_inputs(paths):
    """The files `paths` name (`media.find`: folders give their images); none is an error."""
    files = media.find(paths)
    if not files:
        raise cli.CommandError(
            f"no image files in {', '.join(map(str, paths))} (a folder gives its files ending in "
            f"{' '.join(media.IMAGE_EXTENSIONS)}, searched recursively; a video is read when "
            "named)"
        )
    return files


def iter_inputs(paths, every_nth_frame=1, progress_every=DEFAULT_PROGRESS_EVERY):
    """Yields (file, frame or None, uint8 HxWx3 image, error or None) for every input.

    A bad file yields one item with the image None and a one-line error naming it. A video that
    breaks after some frames keeps the frames it gave.
    """
    for path in find_inputs(paths):
        if media.is_video(path):
            try:
                for index, frame in media.frames(path, every_nth_frame, progress_every):
                    yield path, index, frame, None
            except BadImagesError as e:
                yield path, None, None, str(e)
        else:
            try:
                image = media.read_image(path)
            except BadImagesError as e:
                yield path, None, None, str(e)
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


def predict_paths(
    trained,
    paths,
    batch_size=32,
    every_nth_frame=1,
    skip_bad=False,
    bad=None,
    progress_every=DEFAULT_PROGRESS_EVERY,
):
    """Classifies images, folders and videos with a `inference.Trained` model.

    Args:
      trained: from `inference.load_trained` or `inference.load_official`.
      paths: image files, folders (recursive) and video files.
      batch_size: images per model call; the last batch is padded so the model compiles once.
      every_nth_frame: classify video frames 0, N, 2N, ...
      skip_bad: skip unreadable inputs (logged with their count) instead of raising.
      bad: optional list; every unreadable input's one-line message is appended to it (and
        then not logged: the caller reports them).
      progress_every: video progress line every this many sampled frames (0: never).

    Returns:
      A list of dicts, one per image or sampled video frame, in input order: file, frame (None
      for images), predicted, confidence and one probability per class name.

    Raises:
      BadImagesError listing every unreadable input (unless skip_bad), or in one line when no
      input was readable (skip_bad or not); CommandError when `paths` name no file at all.
    """
    from vit_se import inference

    _check_args(trained, batch_size, every_nth_frame, FIXED_COLUMNS)
    class_names = trained.class_names
    caller_collects = bad is not None
    bad = [] if bad is None else bad
    rows, meta, batch = [], [], []

    def flush():
        if not batch:
            return
        rows.extend(_rows_for(meta, _probabilities(trained, batch, batch_size), class_names))
        meta.clear()
        batch.clear()

    inputs = _Readable(iter_inputs(paths, every_nth_frame, progress_every), bad, skip_bad)
    for path, frame, image in inputs:
        meta.append((path, frame))
        batch.append(inference.preprocess(image, trained.info))
        if len(batch) == batch_size:
            flush()
    flush()

    inputs.report(paths, caller_collects)
    return rows


class _Readable:
    """(path, frame, image) of the readable inputs; each unreadable one's message appended to
    `bad`. Once one is bad and not skipped the run fails anyway: the rest are only read, to list
    every one (`report`)."""

    def __init__(self, inputs, bad, skip_bad):
        self.inputs = inputs
        self.bad = bad
        self.first_bad = len(bad)
        self.skip_bad = skip_bad
        self.readable = 0

    def __iter__(self):
        for path, frame, image, error in self.inputs:
            if error is not None:
                self.bad.append(error)
                continue
            self.readable += 1
            if self.skip_bad or len(self.bad) == self.first_bad:
                yield path, frame, image

    def report(self, paths, caller_collects):
        """No readable input: one line naming the inputs. Otherwise all unreadable inputs in
        one error, or (skipping) a warning unless the caller lists them."""
        new_bad = self.bad[self.first_bad :]
        if new_bad and not self.readable:
            raise BadImagesError(
                f"nothing readable in {', '.join(map(str, paths))}: {'; '.join(new_bad)}"
            )
        if new_bad and not self.skip_bad:
            raise BadImagesError(
                f"{len(new_bad)} unreadable input(s) (pass --skip_bad to skip them):\n"
                + "\n".join(new_bad)
            )
        if new_bad and not caller_collects:
            logging.warning("skipped %d unreadable input(s): %s", len(new_bad), "; ".join(new_bad))


def _probabilities(trained, inputs, batch_size):
    """Class probabilities of up to batch_size inputs, padded to the one compiled batch shape."""
    n, size = len(inputs), trained.image_size
    x = np.zeros((batch_size, size, size, 3), np.float32)
    x[:n] = np.stack(inputs)
    return trained.probabilities(x)[:n]


def _check_args(trained, batch_size, every_nth_frame, columns):
    if batch_size < 1:
        raise cli.CommandError(f"batch_size must be at least 1, got {batch_size}")
    if every_nth_frame < 1:
        raise cli.CommandError(f"every_nth_frame must be at least 1, got {every_nth_frame}")
    if set(trained.class_names) & set(columns):
        raise cli.CommandError(f"class names may not be any of {columns}: {trained.class_names}")


def predict_faces(
    trained,
    paths,
    batch_size=32,
    every_nth_frame=1,
    skip_bad=False,
    bad=None,
    detector=None,
    smoothing=None,
    iou_threshold=tracking.DEFAULT_IOU_THRESHOLD,
    no_face=None,
    progress_every=DEFAULT_PROGRESS_EVERY,
):
    """One row per detected face of every image and sampled video frame (see the module doc).

    Args:
      trained, paths, batch_size, every_nth_frame, skip_bad, bad: as in `predict_paths` (a
        batch holds faces, possibly of several frames).
      detector: 'aligned' or 'haar'; None takes `inference.detector_mode` (the run's own crop,
        else 'aligned').
      smoothing: None, ('window', N) or ('ema', alpha) (`tracking.parse_smoothing`), applied per
        video track in frame order.
      iou_threshold: the tracker's matching threshold.
      no_face: optional Counter; file -> number of its images/frames without a face.
      progress_every: video progress line every this many sampled frames.

    Returns:
      Rows with the FACE_COLUMNS and one probability per class, in input, frame and face order.
    """
    from vit_se import inference
    from vit_se.datasets import faces

    _check_args(trained, batch_size, every_nth_frame, FACE_COLUMNS)
    mode = inference.detector_mode(trained.info, detector)
    class_names = trained.class_names
    caller_collects = bad is not None
    bad = [] if bad is None else bad
    no_face = collections.Counter() if no_face is None else no_face
    rows, pending = [], []
    tracker, tracked_file = None, None

    def flush():
        if not pending:
            return
        probs = _probabilities(trained, [inp for _, inp in pending], batch_size)
        for (i, _), p in zip(pending, probs, strict=True):
            rows[i]["_p"] = p
        pending.clear()

    inputs = _Readable(iter_inputs(paths, every_nth_frame, progress_every), bad, skip_bad)
    for path, frame, image in inputs:
        found = faces.detect(image, mode)
        if frame is not None and tracked_file != path:
            tracker = tracking.IoUTracker(iou_threshold)
            tracked_file = path
        if not found:
            no_face[path] += 1
            if frame is not None:
                tracker.update([])
            continue
        ids = tracker.update([f.box for f in found]) if frame is not None else [None] * len(found)
        for k, (face, track) in enumerate(zip(found, ids, strict=True)):
            rows.append(
                {
                    "file": path,
                    "frame": frame,
                    "face": k,
                    "track": track,
                    "x": round(float(face.box[0]), 1),
                    "y": round(float(face.box[1]), 1),
                    "width": round(float(face.box[2]), 1),
                    "height": round(float(face.box[3]), 1),
                    "detector_score": round(float(face.score), 4),
                }
            )
            pending.append(
                (len(rows) - 1, inference.preprocess_face(image, face, trained.info, mode))
            )
            if len(pending) == batch_size:
                flush()
    flush()

    inputs.report(paths, caller_collects)
    smoother = tracking.Smoother(smoothing)
    for row in rows:
        p = row.pop("_p")
        if row["track"] is not None:
            p = smoother((row["file"], row["track"]), p)
        k = int(np.argmax(p))
        row["predicted"] = class_names[k]
        row["confidence"] = float(p[k])
        row.update({name: float(v) for name, v in zip(class_names, p, strict=True)})
    return rows


# ------------------------------------------------------------------------------------ CLI

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command (defined only when run as a program, so others can import this)."""
    cli.define_model_flags()
    flags.DEFINE_integer("batch_size", 32, "Images (or faces, with --faces) per model call.")
    flags.DEFINE_integer("every_nth_frame", 1, "Classify video frames 0, N, 2N, ...")
    flags.DEFINE_string("out", None, "Write the predictions to this .csv or .json file.")
    flags.DEFINE_bool("skip_bad", False, "Skip unreadable inputs (counted) instead of failing.")
    flags.DEFINE_bool("quiet", False, "Do not print the table.")
    flags.DEFINE_bool("faces", False, "One row per detected face instead of per image/frame.")
    flags.DEFINE_enum(
        "detector",
        None,
        ["aligned", "haar"],
        "With --faces: 'aligned' (MTCNN, 5-point alignment) or 'haar'. Default: the run's own "
        "face crop, else aligned.",
    )
    flags.DEFINE_string(
        "smooth",
        "off",
        "With --faces, per video track: off, window:N (mean of the last N sampled frames) or "
        "ema:ALPHA (exponential average, 0 < ALPHA <= 1).",
    )
    flags.DEFINE_float(
        "iou_threshold",
        tracking.DEFAULT_IOU_THRESHOLD,
        "With --faces: the box overlap at which a face continues a track of the previous "
        "sampled frame.",
    )
    flags.DEFINE_string("annotate", None, "Write every input with boxes and labels into DIR.")
    flags.DEFINE_integer(
        "progress_every",
        DEFAULT_PROGRESS_EVERY,
        "Log progress every this many sampled video frames (0: never).",
    )


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("name at least one image file, folder or video")
    if FLAGS.out and not FLAGS.out.lower().endswith((".csv", ".json")):
        raise cli.CommandError(f"--out must end with .csv or .json, got {FLAGS.out!r}")
    try:
        smoothing = tracking.parse_smoothing(FLAGS.smooth)
    except ValueError as e:
        raise cli.CommandError(str(e)) from None
    if not FLAGS.faces:
        used = [f"--{n}" for n in ("detector",) if getattr(FLAGS, n)]
        used += ["--smooth"] if smoothing else []
        if used:
            raise cli.CommandError(f"{' and '.join(used)}: per-face options; add --faces")
    if not 0 < FLAGS.iou_threshold <= 1:
        raise cli.CommandError(f"--iou_threshold must be in (0, 1], got {FLAGS.iou_threshold}")
    # Everything that can be known before the model loads: that there is input, and that the
    # results can be written.
    find_inputs(paths)
    if FLAGS.out:
        cli.check_writable(FLAGS.out, "--out")
    if FLAGS.annotate:
        cli.check_writable(FLAGS.annotate, "--annotate", folder=True)
    trained = cli.load_model()
    bad = []
    common_args = dict(
        batch_size=FLAGS.batch_size,
        every_nth_frame=FLAGS.every_nth_frame,
        skip_bad=FLAGS.skip_bad,
        bad=bad,
        progress_every=FLAGS.progress_every,
    )
    no_face = collections.Counter()
    extra = {}
    if FLAGS.faces:
        from vit_se import inference

        rows = predict_faces(
            trained,
            paths,
            detector=FLAGS.detector,
            smoothing=smoothing,
            iou_threshold=FLAGS.iou_threshold,
            no_face=no_face,
            **common_args,
        )
        extra = {
            "detector": inference.detector_mode(trained.info, FLAGS.detector),
            "smoothing": FLAGS.smooth if smoothing else "off",
            "no_face": dict(no_face),
        }
    else:
        rows = predict_paths(trained, paths, **common_args)
    if not FLAGS.quiet:
        print(format_table(rows))
    if no_face:
        print(
            f"no face found in {sum(no_face.values())} image(s)/frame(s) of {len(no_face)} file(s):"
        )
        for path, n in no_face.items():
            print(f"  {path}: {n}")
    if bad:
        print(f"skipped {len(bad)} unreadable input(s):")
        for msg in bad:
            print(f"  {msg}")
    if FLAGS.out:
        write_predictions(FLAGS.out, rows, trained.class_names, trained.source, bad, extra=extra)
        print(f"wrote {len(rows)} prediction(s) to {FLAGS.out}")
    if FLAGS.annotate:
        written = annotate.annotate(rows, FLAGS.annotate, FLAGS.every_nth_frame)
        print(f"wrote {len(written)} annotated file(s) to {FLAGS.annotate}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "predict")
