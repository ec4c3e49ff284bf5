"""What `vit_se.predict` prints and writes: the plain-text table, and the CSV or JSON file.

Kept apart from the prediction itself so a notebook or script can format rows it got from
`predict.predict_paths` / `predict_faces` the way the command does. One row per image or sampled
frame (FIXED_COLUMNS), or per face (FACE_COLUMNS), then one probability column per class. Files
go through `workdir.write_text`: written under a temporary name and renamed.
"""

from __future__ import annotations

import csv
import io
import json

from vit_se import workdir
from vit_se.errors import Error

FIXED_COLUMNS = ("file", "frame", "predicted", "confidence")
FACE_COLUMNS = (
    "file",
    "frame",
    "face",
    "track",
    "x",
    "y",
    "width",
    "height",
    "detector_score",
    "predicted",
    "confidence",
)


def _fmt_frame(frame):
    return "" if frame is None else str(frame)


def _columns(rows):
    return FACE_COLUMNS if rows and "face" in rows[0] else FIXED_COLUMNS


def format_table(rows):
    """Plain-text table: file, frame (only if a video is among the inputs), face, track and box
    (per-face rows), class, confidence."""
    with_frames = any(r["frame"] is not None for r in rows)
    per_face = _columns(rows) == FACE_COLUMNS
    with_tracks = per_face and any(r["track"] is not None for r in rows)
    header = (
        ["file"]
        + (["frame"] if with_frames else [])
        + (["face"] if per_face else [])
        + (["track"] if with_tracks else [])
        + (["box"] if per_face else [])
        + ["predicted", "confidence"]
    )

    def cells(r):
        box = f"{r['x']:.0f},{r['y']:.0f},{r['width']:.0f}x{r['height']:.0f}" if per_face else ""
        return (
            [r["file"]]
            + ([_fmt_frame(r["frame"])] if with_frames else [])
            + ([str(r["face"])] if per_face else [])
            + ([_fmt_frame(r["track"])] if with_tracks else [])
            + ([box] if per_face else [])
            + [r["predicted"], f"{r['confidence']:.4f}"]
        )

    body = [cells(r) for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(header)]
    right = {"frame", "face", "track", "confidence"}

    def line(cells):
        return "  ".join(
            c.rjust(w) if h in right else c.ljust(w)
            for c, w, h in zip(cells, widths, header, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def _cell(value):
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def to_csv(rows, class_names, columns=None):
    columns = list(columns or _columns(rows))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns + list(class_names))
    for r in rows:
        writer.writerow([_cell(r[c]) for c in columns] + [repr(r[c]) for c in class_names])
    return buf.getvalue()


def to_json(rows, class_names, source=None, skipped=(), columns=None, extra=None):
    doc = {
        "source": source or {},
        "class_names": list(class_names),
        "columns": list(columns or _columns(rows)) + list(class_names),
        "num_predictions": len(rows),
        "skipped": list(skipped),
        **(extra or {}),
        "predictions": rows,
    }
    return json.dumps(doc, indent=1) + "\n"


def write_predictions(path, rows, class_names, source=None, skipped=(), columns=None, extra=None):
    lower = path.lower()
    if lower.endswith(".csv"):
        workdir.write_text(path, to_csv(rows, class_names, columns))
    elif lower.endswith(".json"):
        workdir.write_text(path, to_json(rows, class_names, source, skipped, columns, extra))
    else:
        raise Error(f"--out must end with .csv or .json, got {path!r}")
