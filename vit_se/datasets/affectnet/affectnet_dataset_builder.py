"""AffectNet (manually annotated part) as a tfds builder, read from the distribution as it comes.

Labels. AffectNet's expression codes (0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust,
6 anger, 7 contempt, 8 none, 9 uncertain, 10 no-face) are mapped once, through
`labels.AFFECTNET_CODES`, into the canonical order angry, disgust, fear, happy, sad, surprise,
neutral: code 0 -> 6, 1 -> 3, 2 -> 4, 3 -> 5, 4 -> 2, 5 -> 1, 6 -> 0, and in the `8class*` configs
contempt 7 -> 7 (an eighth, last class, as in CK+'s 8-class configs). Codes 8-10 are not
expressions and are never emitted; the 7-class configs drop contempt too. Every dropped row is
counted per split and reason ('none', 'uncertain', 'no-face', 'contempt') in the log and in
`info.metadata['dropped_rows']`.

Layouts (read by `affectnet_layouts`), found under the manual dir (the CSV layout wins when both
are there):
  csv: `Manually_Annotated_file_lists/training.csv` and `validation.csv` (or the zip of that
    name), columns `subDirectory_filePath, face_x, face_y, face_width, face_height,
    facial_landmarks, expression, valence, arousal`; a file without the header row (some
    releases ship validation.csv so) is read in that column order. Images
    `Manually_Annotated_Images/<subDirectory_filePath>`, extracted, or read member by member from
    the zip as distributed (e.g. Manually_Annotated_compressed.zip) without extracting it. Splits
    `train` (training.csv) and `validation` (validation.csv: the official validation set, 500
    images per code, which every paper reports as its test set).
  folders: the widely shared variant `train/<code>/*.jpg`, `val/<code>/*.jpg` and optionally
    `test/<code>/*.jpg` with class folders 0..7 in the code order above. Splits `train`,
    `validation` (from val/) and `test` (from test/, when present). It carries no annotations
    beyond the label, so valence and arousal are NaN, the face box is [-1, -1, -1, -1] and the
    landmarks are NaN; its images are usually face crops already, and the `*_facebox` configs
    refuse it (there is no box to crop to); the `*_aligned` configs take its largest face.

Configs: `7class` (default) and `8class` keep the images as distributed; `7class_facebox` and
`8class_facebox` crop each image to its CSV face box (clipped to the image; a box outside the
image is reported like an unreadable file); `7class_aligned` and `8class_aligned` align the face
of each original photograph by its 5 landmarks to the template of `vit_se.datasets.faces`, at
ALIGNED_SIZE x ALIGNED_SIZE: the MTCNN face that overlaps the CSV face box most (intersection over
union at least MIN_BOX_IOU; the largest face for the class-folder variant, which has no boxes).
When MTCNN finds no such face the CSV's own 68 landmarks give the 5 points (eye centres, nose
tip, mouth corners) for the same template; a row without landmarks gets the centre square.
Both fallbacks are counted in `info.metadata['face_crop_fallbacks']` (all images whose face
MTCNN did not find) and `['face_crop_from_csv_landmarks']` (those of them aligned from the CSV).

Features: `image` (RGB), `label`, `valence` and
`arousal` (float32, as annotated in [-1, 1]), `face_box` (int32 x, y, width, height in the
original image), `landmarks` (float32 [68, 2], x and y of the 68 points of the CSV's 136
semicolon-separated numbers, in the coordinates of the stored image: shifted by the box origin on
the facebox configs, moved by the alignment's similarity transform on the aligned configs; NaN
when the CSV field is empty), `file_name` (subDirectory_filePath, or
`<split folder>/<code>/<file>` for the folder variant).

Storage. A JPEG image (RGB or gray) is stored as its original bytes: re-encoding 290k photographs
as PNG would make the build several times the size of the download. Other formats (PNG, CMYK
JPEG, ...) are stored as PNG of their RGB decode; face-box crops as JPEG at quality 95 without
chroma subsampling (faces are small; 4:2:0 would halve their colour resolution), and so are
aligned crops. Every
image is decoded once while building, so truncated files fail the build (see skip_bad_images).

Sizes. Building ~290k images streams: each split's generator reads its CSV row by row and yields
one example at a time, with a log line every LOG_EVERY examples next to tfds' progress bar; only
row counts and file names (to catch duplicates) are held for a whole split. Counts that differ
from the official ones (training 283,901 / 287,651 and validation 3,500 / 4,000 for 7 / 8
classes) are warned with both numbers. Missing images are found before anything is written and
named in one error. tfds stores examples in an order hashed from their keys, so a slice such as
`train[98%:]` is a pseudo-random held-out part of training, not its last CSV rows.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from vit_se import media
from vit_se.datasets import common, faces, labels
from vit_se.datasets.affectnet.affectnet_layouts import (
    IMAGES_DIR,
    LISTS_ARCHIVE,
    LISTS_DIR,
    NAME,
    NUM_LANDMARKS,
    find_class_folders,
    find_images,
    find_lists,
    list_class_folders,
    read_csv,
    scan_csv,
)

# Official sizes of the manually annotated part, keyed by "with contempt".
OFFICIAL_COUNTS = {
    False: {"train": 283901, "validation": 3500},
    True: {"train": 287651, "validation": 4000},
}
LOG_EVERY = 10_000
FACEBOX_JPEG_QUALITY = 95
ALIGNED_SIZE = 224
# A detected face is the annotated one when its box overlaps the CSV box at least this much.
MIN_BOX_IOU = 0.3
# 68-point (iBUG/Multi-PIE) indices of the 5 alignment points: eye contours (averaged), nose tip,
# mouth corners; in image order (the subject's right eye is on the image's left).
LANDMARKS_68_TO_5 = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (30,), (48,), (54,))
NO_BOX = (-1, -1, -1, -1)
_HINT = (
    f"{LISTS_DIR}/training.csv and validation.csv with {IMAGES_DIR}/ (or its zip), or the "
    "class-folder variant train/0..7/, val/0..7/"
)

_CITATION = """\
@article{mollahosseini2017affectnet,
  title={{AffectNet}: A Database for Facial Expression, Valence, and Arousal Computing in the
         Wild},
  author={Mollahosseini, Ali and Hasani, Behzad and Mahoor, Mohammad H.},
  journal={IEEE Transactions on Affective Computing},
  volume={10},
  number={1},
  pages={18--31},
  year={2019}
}
"""


@dataclasses.dataclass
class AffectNetConfig(tfds.core.BuilderConfig):
    """`contempt`: 8 classes (contempt = 7) instead of 7; `face_box`: crop to the CSV face box;
    `align`: align the face by its 5 landmarks (see the module docstring)."""

    contempt: bool = False
    face_box: bool = False
    align: bool = False


def _configs():
    out = []
    for face_box in (False, True):
        for contempt in (False, True):
            classes = "8class" if contempt else "7class"
            what = "cropped to the CSV face box" if face_box else "as distributed"
            out.append(
                AffectNetConfig(
                    name=classes + ("_facebox" if face_box else ""),
                    contempt=contempt,
                    face_box=face_box,
                    description=f"{classes[0]} classes, images {what}.",
                )
            )
    for contempt in (False, True):
        classes = "8class" if contempt else "7class"
        out.append(
            AffectNetConfig(
                name=f"{classes}_aligned",
                contempt=contempt,
                align=True,
                description=f"{classes[0]} classes, the face aligned by 5 landmarks (MTCNN; the "
                f"CSV's when MTCNN misses it), {ALIGNED_SIZE}x{ALIGNED_SIZE}.",
            )
        )
    return out


@dataclasses.dataclass
class _BuildState:
    reader: media.ImageReader
    skip_lines: dict  # split -> CSV lines (or folder keys) not to generate
    clipped_boxes: int = 0
    aligned: int = 0  # images aligned (aligned configs)
    faces_missed: int = 0  # of those, MTCNN found no (matching) face
    from_csv_landmarks: int = 0  # of those, aligned from the CSV's landmarks instead


class Builder(common.SkipBadImages, tfds.core.GeneratorBasedBuilder):
    """AffectNet manually annotated: ~290k in-the-wild faces, 7 or 8 classes, train/validation.

    Pass `skip_bad_images=True` to drop unreadable or missing images and boxes outside their
    image (counted in a warning and in `info.metadata['skipped_images']`) instead of failing.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: CSV and class-folder layouts, 7/8 classes, face-box crops.",
        "1.1.0": "Configs 7class_aligned and 8class_aligned (5-point alignment); other configs "
        "unchanged.",
    }
    BUILDER_CONFIGS = _configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AffectNet is released for research by its authors under a licence agreement signed by a lab
manager or professor: see http://mohammadmahoor.com/affectnet/. Only the manually annotated part
is used. Place in the manual dir (default ~/tensorflow_datasets/downloads/manual/, or
--manual_dir=DIR), as distributed (folders are found up to four levels below DIR):
  DIR/Manually_Annotated_file_lists/training.csv and validation.csv, or the zip
      DIR/Manually_Annotated_file_lists.zip;
  and the images, either extracted, DIR/.../Manually_Annotated_Images/<n>/<hash>.jpg, or as the
      zip you were sent (e.g. DIR/Manually_Annotated_compressed.zip), read without extracting.
  The multi-part RAR release (Manually_Annotated.part01.rar ...) cannot be read by Python's
  standard library: extract it first (`unrar x Manually_Annotated.part01.rar`).
Or the widely shared class-folder variant: DIR/train/<code>/*.jpg, DIR/val/<code>/*.jpg and
optionally DIR/test/<code>/*.jpg, with <code> 0..7 (0 neutral ... 7 contempt); it has no face
boxes, so only the 7class and 8class configs build from it.
The distribution holds a few unreadable files: a build names all of them in one error; build
`affectnet/7class/skip_bad_images=True` (tfds build) or pass skip_bad_images=True to drop them.
"""

    def _info(self):
        config = self.builder_config
        names = labels.CLASS_NAMES_WITH_CONTEMPT if config.contempt else labels.CLASS_NAMES
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=names),
                    "valence": tfds.features.Scalar(
                        np.float32, doc="Valence in [-1, 1]; NaN for the class-folder variant."
                    ),
                    "arousal": tfds.features.Scalar(
                        np.float32, doc="Arousal in [-1, 1]; NaN for the class-folder variant."
                    ),
                    "face_box": tfds.features.Tensor(
                        shape=(4,),
                        dtype=np.int32,
                        doc="face_x, face_y, face_width, face_height in the original image; "
                        "-1s for the class-folder variant.",
                    ),
                    "landmarks": tfds.features.Tensor(
                        shape=(NUM_LANDMARKS, 2),
                        dtype=np.float32,
                        doc="68 (x, y) points in the stored image's pixels; NaN when absent.",
                    ),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://mohammadmahoor.com/affectnet/",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        manual_dir = common.manual_dir(dl_manager, NAME, _HINT)
        lists = find_lists(manual_dir, dl_manager)
        reader = media.ImageReader(NAME, self._skip_bad_images)
        if lists is not None:
            images = find_images(manual_dir, lists)
            scans = {
                split: scan_csv(path, config.contempt, images) for split, path in lists.items()
            }
            state = _BuildState(reader, skip_lines=_skip_lines(scans, reader))
            self._record_scans("csv", scans)
            self._last_split = list(lists)[-1]
            return {
                split: self._generate_examples(
                    split, _csv_items(path, config.contempt, images, state.skip_lines[split]), state
                )
                for split, path in lists.items()
            }
        root = find_class_folders(manual_dir)
        if root is None:
            raise FileNotFoundError(
                f"{NAME}: neither {LISTS_DIR}/training.csv (nor {LISTS_ARCHIVE}) nor class "
                f"folders train/0..7/ found under {manual_dir!r}; expected {_HINT}"
            )
        if config.face_box:
            raise ValueError(
                f"{NAME}/{config.name}: the class-folder variant under {root!r} has no face "
                f"boxes to crop to (its images are usually crops already); build "
                f"{'8class' if config.contempt else '7class'} from it, or place the CSV "
                "layout in the manual dir"
            )
        items = list_class_folders(root, config.contempt)
        scans = {split: scan for split, (scan, _) in items.items()}
        state = _BuildState(reader, skip_lines=_skip_lines(scans, reader))
        self._record_scans("folders", scans)
        self._last_split = list(items)[-1]
        return {
            split: self._generate_examples(
                split, _file_items(files, state.skip_lines[split]), state
            )
            for split, (_, files) in items.items()
        }

    def _record_scans(self, layout, scans):
        config = self.builder_config
        names = labels.CLASS_NAMES_WITH_CONTEMPT if config.contempt else labels.CLASS_NAMES
        for split, scan in scans.items():
            official = OFFICIAL_COUNTS[config.contempt].get(split)
            common.check_count(NAME, split, scan.listed, official)
            for reason, n in sorted(scan.dropped.items()):
                logging.info(
                    "%s/%s: dropped %d %s rows of split %r", NAME, config.name, n, reason, split
                )
            if scan.duplicates:
                logging.warning(
                    "%s: split %r lists %d file(s) twice; kept the first row of each, skipped "
                    "lines %s",
                    NAME,
                    split,
                    len(scan.duplicates),
                    ", ".join(str(n) for n in scan.duplicates[:20]),
                )
            per_class = [scan.per_class[c] for c in range(len(names))]
            logging.info(
                "%s/%s: split %r lists %d examples, per class %s",
                NAME,
                config.name,
                split,
                scan.listed,
                dict(zip(names, per_class, strict=True)),
            )
        self.info.metadata["layout"] = layout
        self.info.metadata["dropped_rows"] = {
            split: dict(sorted(scan.dropped.items())) for split, scan in scans.items()
        }
        self.info.metadata["duplicate_rows"] = {
            split: len(scan.duplicates) for split, scan in scans.items()
        }
        self.info.metadata["class_counts"] = {}

    def _generate_examples(self, split, items, state):
        """Yields one example per item, streaming: `items` is produced lazily for the CSV layout."""
        count = 0
        per_class = collections.Counter()
        for item in items:
            config = self.builder_config
            example = self._example(item, state, crop=config.face_box, align=config.align)
            if example is None:
                continue
            count += 1
            per_class[item.label] += 1
            if count % LOG_EVERY == 0:
                logging.info("%s: split %r: %d examples so far", NAME, split, count)
            yield item.key, example
        self._finish_split(split, count, per_class, state)

    def _finish_split(self, split, count, per_class, state):
        config = self.builder_config
        num_classes = 8 if config.contempt else 7
        self.info.metadata["class_counts"][split] = [per_class[c] for c in range(num_classes)]
        logging.info("%s/%s: split %r: wrote %d examples", NAME, config.name, split, count)
        if split == self._last_split:  # Splits are generated in order: report every bad file.
            self.info.metadata["skipped_images"] = state.reader.finish()
            if config.align:
                self.info.metadata["face_crop_fallbacks"] = state.faces_missed
                self.info.metadata["face_crop_from_csv_landmarks"] = state.from_csv_landmarks
                if state.faces_missed:
                    logging.warning(
                        "%s: MTCNN found no face matching the annotation in %d of %d images; "
                        "aligned %d of those by the CSV landmarks and used the centre square "
                        "for the rest",
                        NAME,
                        state.faces_missed,
                        state.aligned,
                        state.from_csv_landmarks,
                    )
            if config.face_box:
                self.info.metadata["face_boxes_clipped"] = state.clipped_boxes
                if state.clipped_boxes:
                    logging.info(
                        "%s: %d face boxes reach outside their image; cropped to the part inside",
                        NAME,
                        state.clipped_boxes,
                    )

    @staticmethod
    def _example(item, state, crop, align=False):
        """The example of one item, or None when its file is recorded as bad."""
        try:
            data = item.read()
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            state.reader.bad.append(f"{item.where}: cannot read ({type(e).__name__}: {e})")
            return None
        try:
            with Image.open(io.BytesIO(data)) as probe:
                stored_as_is = probe.format == "JPEG" and probe.mode in ("RGB", "L")
            image = media.decode(io.BytesIO(data), name=item.where)
        except common.BadImagesError as e:
            state.reader.bad.append(str(e))
            return None
        except Exception as e:  # PIL's open raises several types for data it cannot identify.
            state.reader.bad.append(f"{item.where}: cannot decode image ({type(e).__name__}: {e})")
            return None
        landmarks = item.landmarks
        if landmarks is None:
            landmarks = np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
        example = {
            "label": item.label,
            "valence": np.float32(item.valence),
            "arousal": np.float32(item.arousal),
            "face_box": np.array(item.box, np.int32),
            "landmarks": landmarks,
            "file_name": item.key,
        }
        if align:
            face, matrix = _aligned(_rgb(image), item, landmarks, state)
            example["image"] = _jpeg(face)
            example["landmarks"] = faces.transform_points(matrix, landmarks).astype(np.float32)
            return example
        if not crop:
            example["image"] = data if stored_as_is else _rgb(image)
            return example
        height, width = image.shape[:2]
        x, y, w, h = item.box
        left, top = max(0, x), max(0, y)
        right, bottom = min(width, x + w), min(height, y + h)
        if right <= left or bottom <= top:
            state.reader.bad.append(
                f"{item.where}: face box (x={x}, y={y}, width={w}, height={h}) lies outside "
                f"the {width}x{height} image"
            )
            return None
        if (left, top, right, bottom) != (x, y, x + w, y + h):
            state.clipped_boxes += 1
        example["image"] = _jpeg(_rgb(image[top:bottom, left:right]))
        example["landmarks"] = (landmarks - np.array([left, top], np.float32)).astype(np.float32)
        return example


@dataclasses.dataclass(frozen=True)
class _Item:
    """One image to generate: its key, label, annotations and how to read its bytes."""

    key: str
    label: int
    where: str  # the path (or zip:member) named in messages
    read: object  # () -> bytes
    box: tuple = NO_BOX
    landmarks: np.ndarray | None = None
    valence: float = float("nan")
    arousal: float = float("nan")


def _csv_items(path, contempt, images, skip):
    """The kept rows of a CSV as items, lazily: the file is read again row by row."""
    for row, _ in read_csv(path, contempt):
        if row is None or row.line in skip:
            continue
        yield _Item(
            key=row.file,
            label=row.label,
            where=images.where(row.file),
            read=functools.partial(images.read, row.file),
            box=row.box,
            landmarks=row.landmarks,
            valence=row.valence,
            arousal=row.arousal,
        )


def _file_items(files, skip):
    for key, path, label in files:
        if key not in skip:
            yield _Item(key=key, label=label, where=path, read=functools.partial(_read_file, path))


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


def _jpeg(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=FACEBOX_JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def five_points(landmarks68):
    """The 5 alignment points (faces.py's order) of 68 iBUG landmarks; None if any is NaN."""
    points = np.stack([landmarks68[list(idx)].mean(axis=0) for idx in LANDMARKS_68_TO_5])
    return None if np.isnan(points).any() else points.astype(np.float64)


def _aligned(image, item, landmarks68, state):
    """(crop, matrix image -> crop) of an aligned config; counts the fallbacks on `state`."""
    state.aligned += 1
    found = faces.detect_mtcnn(image)
    if item.box != NO_BOX:
        scored = [(_iou(f.box, item.box), f) for f in found]
        found = [f for iou, f in sorted(scored, key=lambda t: -t[0]) if iou >= MIN_BOX_IOU]
    if found:
        return faces.align(image, found[0].landmarks, ALIGNED_SIZE)
    state.faces_missed += 1
    points = five_points(landmarks68)
    if points is not None:
        state.from_csv_landmarks += 1
        return faces.align(image, points, ALIGNED_SIZE)
    return faces.center_square_resized(image, ALIGNED_SIZE)


def _rgb(image):
    return np.ascontiguousarray(np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image)


def _skip_lines(scans, reader):
    """Per split, the CSV lines / folder keys not to generate: duplicates and missing images.

    Missing images fail the build here, before anything is written, in one error naming them
    all, unless the reader skips bad files (they are then recorded on it and counted).
    """
    missing = [where for scan in scans.values() for _, where in scan.missing]
    if missing and not reader.skip_bad:
        shown = "; ".join(missing[:50]) + ("; ..." if len(missing) > 50 else "")
        raise common.BadImagesError(
            f"{NAME}: {len(missing)} listed image(s) missing ({common.SKIP_HINT}): {shown}"
        )
    reader.bad.extend(f"{where}: listed but missing" for where in missing)
    return {
        split: set(scan.duplicates) | {key for key, _ in scan.missing}
        for split, scan in scans.items()
    }
