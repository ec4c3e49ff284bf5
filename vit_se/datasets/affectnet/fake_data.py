"""Writes a small AffectNet in the distributed layouts, with drawn faces placed at their face box.

AffectNet cannot be shipped, so tests and demos build the `affectnet` builder from these files:
`Manually_Annotated_file_lists/training.csv` and `validation.csv` with the real header and
columns (landmarks as 136 ';'-separated numbers, no-face rows with valence/arousal -2 and no
landmarks), images under `Manually_Annotated_Images/<n>/<56 hex digits>.jpg` (some `.JPG`, some
PNG, some gray, as in the real folders); with `layout` the same files as the zips the owners
send, or the widely shared class-folder variant `train/<code>/`, `val/<code>/` (and `test/`).

Every code 0..10 appears with the count given per code, in shuffled row order; the
validation CSV has the same number of rows for each of the 11 codes, as the real one (500 each).
Each picture is a flat background with the face drawn exactly inside its box, so a crop to the
box holds face pixels only.

    python -m vit_se.datasets.affectnet.fake_data --out /tmp/affectnet_manual
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import os
import shutil
import zipfile

import numpy as np
from PIL import Image

from vit_se.datasets import labels
from vit_se.datasets.synthetic_faces import draw_face

LAYOUTS = ("csv", "csv_zip", "folders")
# The distributed header, spelled out here rather than imported from affectnet_layouts.COLUMNS:
# the fake files follow the owners' format, so a typo in the reader's names fails a test instead
# of being written into the files it reads.
HEADER = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
# Rows per AffectNet code 0..10 (neutral, happy, sad, surprise, fear, disgust, anger, contempt,
# none, uncertain, no-face): all different for the expressions, so a swapped mapping shows.
TRAIN_PER_CODE = (5, 8, 4, 3, 2, 1, 6, 2, 2, 1, 3)
VALIDATION_PER_CODE = 2
IMAGES_ZIP = "Manually_Annotated_compressed.zip"
LISTS_ZIP = "Manually_Annotated_file_lists.zip"


@dataclasses.dataclass(frozen=True)
class FakeImage:
    """One written image and its annotations as in the CSV (box in the original picture)."""

    file: str  # subDirectory_filePath, or <split folder>/<code>/<name> for layout 'folders'
    code: int
    box: tuple  # face_x, face_y, face_width, face_height
    landmarks: np.ndarray = dataclasses.field(repr=False)  # (68, 2), NaN for no-face rows
    valence: float
    arousal: float
    line: int  # CSV line (the header is line 1); 0 for layout 'folders'


def write_fake_affectnet(
    root,
    train_per_code=TRAIN_PER_CODE,
    validation_per_code=VALIDATION_PER_CODE,
    layout="csv",
    test_per_code=0,
    picture_size=(40, 64),
    validation_header=True,
    seed=0,
):
    """Writes AffectNet under root; returns {split: [FakeImage]} in CSV row order.

    Args:
      root: the manual dir to write into.
      train_per_code: rows of training.csv per code 0..10 (11 counts; layout 'folders' uses the
        first 8).
      validation_per_code: rows of validation.csv per code (0..10; 0..7 for 'folders').
      layout: 'csv' (lists and images extracted), 'csv_zip' (Manually_Annotated_file_lists.zip
        holding the two CSV files and Manually_Annotated_compressed.zip holding
        Manually_Annotated_Images/..., as sent) or 'folders' (train/<code>/, val/<code>/).
      test_per_code: with layout 'folders', also write test/<code>/ with this many per code.
      picture_size: (min, max) side of the pictures; the face box is 60-80% of the shorter side.
      validation_header: False writes validation.csv without its header row, as some releases.
      seed: seed of the drawings and annotations.
    Returns:
      per split ('train', 'validation' and, for 'folders' with test_per_code, 'test') the written
      images in file order, codes 8-10 included (they are in the CSV; the builder drops them).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    if len(train_per_code) != 11:
        raise ValueError(f"train_per_code needs 11 counts (codes 0..10), got {len(train_per_code)}")
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    if layout == "folders":
        return _write_folders(
            root, train_per_code, validation_per_code, test_per_code, picture_size, rng
        )
    images_dir = os.path.join(root, "Manually_Annotated_Images")
    lists_dir = os.path.join(root, "Manually_Annotated_file_lists")
    os.makedirs(lists_dir, exist_ok=True)
    written = {}
    for split, per_code, file, header in (
        ("train", train_per_code, "training.csv", True),
        ("validation", [validation_per_code] * 11, "validation.csv", validation_header),
    ):
        codes = [code for code, n in enumerate(per_code) for _ in range(n)]
        rng.shuffle(codes)
        written[split] = []
        rows = []
        for i, code in enumerate(codes):
            name = hashlib.sha224(f"{split}{i}".encode()).hexdigest()
            kind = _kind(len(rows) + 7 * (split == "validation"))
            rel = f"{1 + i % 3}/{name}{kind[0]}"
            item = _draw(rel, int(code), picture_size, rng, line=len(rows) + 1 + header)
            path = os.path.join(images_dir, *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _save(item.picture, path, kind)
            rows.append(_csv_row(item.image))
            written[split].append(item.image)
        with open(os.path.join(lists_dir, file), "w", newline="") as f:
            out = csv.writer(f)
            if header:
                out.writerow(HEADER)
            out.writerows(rows)
    if layout == "csv_zip":
        _zip_tree(os.path.join(root, LISTS_ZIP), lists_dir, arc_root="")
        _zip_tree(os.path.join(root, IMAGES_ZIP), images_dir, arc_root="Manually_Annotated_Images")
        shutil.rmtree(lists_dir)
        shutil.rmtree(images_dir)
    return written


@dataclasses.dataclass
class _Drawn:
    image: FakeImage
    picture: np.ndarray


def _kind(i):
    """(extension, format, gray) of the i-th image: mostly .jpg, some .JPG, PNG and gray JPEG."""
    if i % 5 == 4:
        return ".png", "PNG", False
    if i % 7 == 6:
        return ".jpg", "JPEG", True
    return (".JPG" if i % 4 == 3 else ".jpg"), "JPEG", False


def _draw(rel, code, size_range, rng, line):
    """A picture with a flat background and, unless code 10 (no-face), a face in its box."""
    height = int(rng.integers(size_range[0], size_range[1] + 1))
    width = int(rng.integers(size_range[0], size_range[1] + 1))
    side = min(height, width)
    w = int(side * rng.uniform(0.6, 0.8))
    h = min(height, int(w * rng.uniform(1.0, 1.2)))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    picture = np.full((height, width, 3), int(rng.integers(0, 40)), np.uint8)
    label = labels.AFFECTNET_CODES.get(code, labels.CLASS_NAMES.index("neutral"))
    if code == 10:
        picture[y : y + h, x : x + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        face = draw_face(label, max(w, h), rng, rgb=True)
        picture[y : y + h, x : x + w] = np.asarray(Image.fromarray(face).resize((w, h)))
    if code == 10:  # the real no-face rows: valence and arousal -2, no landmarks
        valence = arousal = -2.0
        landmarks = np.full((68, 2), np.nan, np.float32)
    else:
        valence, arousal = (round(float(v), 4) for v in rng.uniform(-1, 1, size=2))
        t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        landmarks = np.stack(
            [x + w * (0.5 + 0.4 * np.cos(t)), y + h * (0.5 + 0.4 * np.sin(t))], axis=-1
        )
        landmarks = np.round(landmarks, 2).astype(np.float32)
    image = FakeImage(rel, code, (x, y, w, h), landmarks, valence, arousal, line)
    return _Drawn(image, picture)


def _save(picture, path, kind):
    _, fmt, gray = kind
    array = picture.mean(axis=-1, keepdims=True).astype(np.uint8) if gray else picture
    image = Image.fromarray(array[..., 0] if gray else array)
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _csv_row(image):
    if np.isnan(image.landmarks).all():
        points = ""
    else:
        points = ";".join(f"{v:.2f}" for v in image.landmarks.ravel())
    return [image.file, *image.box, points, image.code, image.valence, image.arousal]


def _zip_tree(archive, folder, arc_root):
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path, _, files in sorted(os.walk(folder)):
            for name in sorted(files):
                full = os.path.join(path, name)
                rel = os.path.relpath(full, folder).replace(os.sep, "/")
                z.write(full, f"{arc_root}/{rel}" if arc_root else rel)


def _write_folders(root, train_per_code, validation_per_code, test_per_code, size_range, rng):
    """The class-folder variant: face crops in train/<code>/, val/<code>/ (and test/<code>/)."""
    written = {}
    parts = [
        ("train", "train", train_per_code[:8]),
        ("val", "validation", [validation_per_code] * 8),
    ]
    if test_per_code:
        parts.append(("test", "test", [test_per_code] * 8))
    for part, split, per_code in parts:
        written[split] = []
        for code, n in enumerate(per_code):
            for i in range(n):
                name = hashlib.sha224(f"{part}{code}_{i}".encode()).hexdigest()
                kind = _kind(len(written[split]))
                key = f"{part}/{code}/{name}{kind[0]}"
                drawn = _draw(key, code, size_range, rng, line=0)
                x, y, w, h = drawn.image.box
                path = os.path.join(root, part, str(code), name + kind[0])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _save(drawn.picture[y : y + h, x : x + w], path, kind)
                nan = np.full((68, 2), np.nan, np.float32)
                written[split].append(
                    FakeImage(key, code, (-1, -1, -1, -1), nan, float("nan"), float("nan"), 0)
                )
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="manual dir to write into")
    parser.add_argument("--layout", choices=LAYOUTS, default="csv")
    parser.add_argument(
        "--train_per_code",
        default=",".join(map(str, TRAIN_PER_CODE)),
        help="11 comma-separated counts, codes 0..10",
    )
    parser.add_argument("--validation_per_code", type=int, default=VALIDATION_PER_CODE)
    parser.add_argument("--test_per_code", type=int, default=0, help="layout folders only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_fake_affectnet(
        args.out,
        train_per_code=tuple(int(n) for n in args.train_per_code.split(",")),
        validation_per_code=args.validation_per_code,
        layout=args.layout,
        test_per_code=args.test_per_code,
        seed=args.seed,
    )
    for split, items in written.items():
        per_code = np.bincount([item.code for item in items], minlength=11)
        print(f"{split}: {len(items)} images, per AffectNet code 0..10 {per_code.tolist()}")


if __name__ == "__main__":
    main()
