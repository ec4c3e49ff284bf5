"""What every FER builder shares: face crops, loud checks and their errors.

The databases are downloaded by hand from their owners, so the builders must say exactly which
file is wrong when something is off (a truncated PNG, a label file missing, a file the layout
cannot place) instead of producing a silently smaller dataset. That is why image reading goes
through `vit_se.media.ImageReader`, which collects every bad file before failing, and why split
sizes are compared with the official counts.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
from absl import logging
from PIL import Image

from vit_se.datasets import faces
from vit_se.errors import Error


class BadImagesError(Error, ValueError):
    """One or more images or videos cannot be read; names every bad file."""


class LayoutError(Error, ValueError):
    """Files of a manual dir that the builder cannot place, or a split it finds no files for."""


def check_manual_dir(manual_dir, dataset_name, hint):
    """Fails early with the expected layout when the manual dir is missing or empty."""
    path = os.fspath(manual_dir) if manual_dir is not None else ""
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(
            f"{dataset_name}: manual dir {path!r} does not exist; expected {hint} (see the "
            f"builder's MANUAL_DOWNLOAD_INSTRUCTIONS)"
        )
    if not os.listdir(path):
        raise FileNotFoundError(f"{dataset_name}: manual dir {path!r} is empty; expected {hint}")
    return path


class SkipBadImages:
    """Mixin giving a builder the `skip_bad_images` keyword (see `vit_se.media.ImageReader`).

    Recorded in tfds' `_original_state` too, so a builder re-created from its pickled state (as
    tfds does for distributed generation) keeps the choice.
    """

    def __init__(self, *, skip_bad_images=False, **kwargs):
        self._skip_bad_images = skip_bad_images
        super().__init__(**kwargs)
        self._original_state["skip_bad_images"] = skip_bad_images


def manual_dir(dl_manager, dataset_name, hint):
    """The checked manual dir of a build.

    Read before tfds' own `dl_manager.manual_dir` property, which fails on a missing folder with a
    multi-line AssertionError; ours names the folder and the expected files in one line.
    """
    path = getattr(dl_manager, "_manual_dir", None) or dl_manager.manual_dir
    return check_manual_dir(path, dataset_name, hint)


# Where a user can turn skipping on: the trainer's field, or the builder's keyword.
SKIP_HINT = (
    "--config.skip_bad_images=True skips and counts them; builder keyword skip_bad_images=True"
)


def check_count(dataset_name, split, got, expected):
    """Warns, stating both numbers, when a split differs from the official size."""
    if expected is not None and got != expected:
        logging.warning(
            "%s: split %r has %d examples; the official count is %d",
            dataset_name,
            split,
            got,
            expected,
        )
        return False
    return True


def _face_detector():
    """This thread's Haar cascade (one per thread: see `faces`)."""
    return faces._haar()


def center_square(image):
    return faces.center_square(image)


def face_crop(image, margin=faces.HAAR_MARGIN):
    """Crops the largest frontal face (OpenCV Haar cascade, shipped in the cv2 wheel).

    Returns (crop, found). When no face is found the centre square is returned and `found` is
    False, so the caller can count the fallbacks and warn once. `vit_se.datasets.faces` holds the
    detectors and the other modes ('aligned').
    """
    found = faces.detect_haar(image)
    if not found:
        return center_square(image), False
    return faces.box_crop(image, found[0].box, margin), True


def crop_face(image, mode):
    """(crop, found) of the largest face in a face-crop mode ('none', 'haar', 'aligned').

    The one crop that the input pipeline (`config.face_crop`) and inference (`export.json`'s
    `face_crop`) apply, so that a model sees at inference what it saw in training: 'haar' is
    `face_crop`; 'aligned' is `faces.largest_face_crop` at `faces.ALIGNED_SIZE`.
    """
    mode = faces.face_crop_mode(mode, "face crop mode")
    if mode == "haar":
        return face_crop(image)
    return faces.largest_face_crop(image, mode)


class FaceCropper:
    """Applies a face crop over a build, counts the images with no face found, warns once.

    `mode` is a face-crop mode ('none', 'haar', 'aligned'; a boolean as in
    `faces.face_crop_mode`). With `size` every crop is size x size: Haar boxes and fallback
    centre squares are resized (PIL bicubic), aligned crops are warped straight to it. The
    fallback for an image with no face found is its centre square; `finish()` returns how many.
    """

    def __init__(self, dataset_name, mode, size=None, margin=None):
        self.dataset_name = dataset_name
        self.mode = faces.face_crop_mode(mode, f"{dataset_name}: face crop")
        self.size = size
        self.margin = margin
        self.total = 0
        self.missed = 0

    @property
    def enabled(self):
        return self.mode != "none"

    def __call__(self, image):
        if not self.enabled:
            return image
        self.total += 1
        if self.mode == "haar":
            crop, found = face_crop(
                image, faces.HAAR_MARGIN if self.margin is None else self.margin
            )
            if self.size:
                crop = resize(crop, self.size)
        else:
            crop, found = faces.largest_face_crop(image, self.mode, self.size, self.margin)
        if not found:
            self.missed += 1
        return crop

    def finish(self):
        if self.enabled and self.missed:
            logging.warning(
                "%s: no face found (%s) in %d of %d images; used the centre square for those",
                self.dataset_name,
                self.mode,
                self.missed,
                self.total,
            )
        return self.missed


def resize(image, size):
    """Resizes uint8 HxWxC to size x size with PIL's bicubic filter (antialiased)."""
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.BICUBIC))
    return out[..., None] if channels == 1 else out


# --- Subject-independent folds and original archives (shared by the CK+ and JAFFE builders) ---


def fold_splits(k, num_folds=10):
    """Returns (train, test) tfds split strings for fold k of a builder with splits fold0..foldN-1.

    The test split is `fold{k}`; train is every other fold joined with '+', which the tfds split
    API reads as their concatenation, e.g. `tfds.load('jaffe', split=fold_splits(3)[0])`.
    """
    if not 0 <= k < num_folds:
        raise ValueError(f"fold {k} out of range 0..{num_folds - 1}")
    train = "+".join(f"fold{i}" for i in range(num_folds) if i != k)
    return train, f"fold{k}"


class FoldAssigner:
    """Maps subject ids to folds from a fold file shipped with the builder.

    The file is JSON: {"num_folds": n, "folds": [[subject, ...], ...]} with fold i at index i. A
    subject absent from the file (a distribution with extra subjects) falls back to
    crc32(id) % n, which is stable across runs and machines, and is named in a warning.
    """

    def __init__(self, dataset_name, path):
        self.dataset_name = dataset_name
        with open(path) as f:
            spec = json.load(f)
        self.num_folds = spec["num_folds"]
        if len(spec["folds"]) != self.num_folds:
            n = len(spec["folds"])
            raise ValueError(f"{path}: {n} folds listed, num_folds is {self.num_folds}")
        self.fold_of = {}
        for fold, subjects in enumerate(spec["folds"]):
            for subject in subjects:
                if subject in self.fold_of:
                    raise ValueError(f"{path}: subject {subject} is in two folds")
                self.fold_of[subject] = fold
        self.unknown = set()

    def __call__(self, subject):
        if subject in self.fold_of:
            return self.fold_of[subject]
        fold = zlib.crc32(subject.encode()) % self.num_folds
        if subject not in self.unknown:
            self.unknown.add(subject)
            logging.warning(
                "%s: subject %s is not in the shipped fold file; assigned to fold %d by "
                "crc32(id) %% %d",
                self.dataset_name,
                subject,
                fold,
                self.num_folds,
            )
        return fold


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def extract_archives(dl_manager, manual_dir):
    """Extracts the archives lying at the top of the manual dir; returns their folders, sorted.

    Builders call this only when the extracted layout is not already there, so a user may keep
    either the archives as downloaded or their extracted folders.
    """
    names = sorted(
        n for n in os.listdir(manual_dir) if n.lower().endswith(ARCHIVE_SUFFIXES) and n[0] != "."
    )
    if not names:
        return []
    extracted = dl_manager.extract({n: os.path.join(manual_dir, n) for n in names})
    return [os.fspath(extracted[n]) for n in names]


def iter_dirs(root, max_depth=4):
    """Yields root and its sub-folders down to max_depth, skipping hidden and __MACOSX folders."""
    root = os.fspath(root)
    base = root.rstrip(os.sep).count(os.sep)
    for path, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d[0] != "." and d != "__MACOSX")
        if path.count(os.sep) - base >= max_depth:
            dirs[:] = []
        yield path


def to_gray(image):
    """Converts uint8 HxWx3 to HxWx1 with PIL's ITU-R 601-2 luma; HxWx1 passes through."""
    if image.shape[-1] == 1:
        return image
    return np.asarray(Image.fromarray(image).convert("L"))[..., None]
