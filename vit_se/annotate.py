"""Predictions drawn onto their inputs: `python -m vit_se.predict --annotate=DIR`.

Images become DIR/<name>.annotated.png, videos DIR/<name>.annotated.avi (MJPG at the source frame
rate, every frame, each showing the boxes of the latest sampled frame), <name> being the input's
path relative to the inputs' common folder. Each file is written whole or not at all. A module of
its own because it is the one part of prediction that encodes images and videos; reading them is
`vit_se.media`'s.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile

from vit_se import media, workdir
from vit_se.errors import Error


class AnnotationError(Error, RuntimeError):
    """An annotated image or video that OpenCV cannot encode here."""


def _label_text(row):
    track = "" if row.get("track") is None else f"#{row['track']} "
    return f"{track}{row['predicted']} {row['confidence']:.2f}"


def _items(rows):
    return [
        {
            "text": _label_text(r),
            "box": (r["x"], r["y"], r["width"], r["height"]) if "x" in r else None,
            "colour_index": r.get("track") if r.get("track") is not None else r.get("face", 0),
        }
        for r in rows
    ]


def annotated_names(files, out_dir):
    """input file -> DIR/<path relative to the inputs' common folder>.annotated.{png,avi}."""
    files = list(dict.fromkeys(files))
    if not files:
        return {}
    root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    out = {}
    for f in files:
        rel = os.path.relpath(os.path.abspath(f), root)
        out[f] = os.path.join(
            out_dir, rel + (".annotated.avi" if media.is_video(f) else ".annotated.png")
        )
    return out


def annotate(rows, out_dir, every_nth_frame=1):
    """Writes every file of `rows` with its predictions drawn (see the module docstring);
    returns the paths written. Rows of `predict_paths` (no box) draw the label in a corner."""
    import cv2

    from vit_se import figures

    by_file = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        by_file[r["file"]][r["frame"]].append(r)
    names = annotated_names(list(by_file), out_dir)
    written = []
    for path, frames in by_file.items():
        target = names[path]
        if not media.is_video(path):
            image = figures.draw_labels(media.read_image(path), _items(frames[None]))
            ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise AnnotationError(f"{target}: OpenCV cannot encode PNG")
            workdir.write_bytes(target, png.tobytes())
        else:
            _annotate_video(path, target, frames, every_nth_frame)
        written.append(target)
    return written


def _annotate_video(path, target, frames, every_nth_frame):
    """Every frame of the video, each with the rows of the latest sampled frame, as MJPG."""
    import cv2

    from vit_se import figures

    fps = media.frame_rate(path)
    local_dir = (
        tempfile.gettempdir() if "://" in target else os.path.dirname(os.path.abspath(target))
    )
    os.makedirs(local_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local_dir, prefix=f".{os.path.basename(target)}.", suffix=".avi")
    os.close(fd)
    writer = None
    try:
        for index, rgb in media.frames(path):
            sampled = index - index % every_nth_frame
            drawn = figures.draw_labels(rgb, _items(frames.get(sampled, [])))
            if writer is None:
                h, w = drawn.shape[:2]
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
                if not writer.isOpened():
                    raise AnnotationError(f"{target}: OpenCV cannot write an MJPG video")
            writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        writer.release()
        writer = None
        if "://" in target:
            with open(tmp, "rb") as src, workdir.atomic_open(target) as dst:
                shutil.copyfileobj(src, dst)
            os.remove(tmp)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    finally:
        if writer is not None:
            writer.release()
        if os.path.exists(tmp):
            os.remove(tmp)
