"""What every FER builder shares: reading images as stored, face crops, and loud checks.

The databases are downloaded by hand from their owners, so the builders must say exactly which
file is wrong when something is off (a truncated PNG, a label file missing) instead of producing a
silently smaller dataset. That is why image reading goes through `ImageReader`, which collects every
bad file before failing, and why split sizes are compared with the official counts.
"""

from __future__ import annotations

import json
import os
import threading
import zlib

import numpy as np
from absl import logging
from PIL import Image, ImageFile

# Truncated files must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImagesError(ValueError):
    """Raised when one or more images cannot be decoded; names every bad file."""


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
    """Mixin giving a builder the `skip_bad_images` keyword (see ImageReader).

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


def decode_image(path_or_file, name=None):
    """Decodes an image file to uint8 HxWxC with C = 1 (gray) or 3 (RGB), as stored.

    Palette images (some JAFFE tiffs) are expanded: to gray when the palette is gray, else RGB.
    16-bit gray is rescaled to 8 bits. Alpha is dropped.
    """
    name = name or os.fspath(path_or_file)
    try:
        with Image.open(path_or_file) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGB")
                arr = np.asarray(img)
                if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(
                    arr[..., 0], arr[..., 2]
                ):
                    arr = arr[..., :1]
                return np.ascontiguousarray(arr)
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                peak = arr.max() if arr.max() > 0 else 1.0
                arr = np.round(arr * (255.0 / max(peak, 255.0))).astype(np.uint8)
                return arr[..., None]
            if mode in ("L", "1"):
                return np.asarray(img.convert("L"))[..., None]
            if mode == "LA":
                return np.asarray(img.convert("L"))[..., None]
            return np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises several types for corrupt data.
        raise BadImagesError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e


class ImageReader:
    """Decodes images, recording failures so one build reports every bad file at once.

    With `skip_bad=False` (the default of every builder) `finish()` raises listing all bad files;
    with `skip_bad=True` they are dropped and `finish()` logs how many were skipped.
    """

    def __init__(self, dataset_name, skip_bad=False):
        self.dataset_name = dataset_name
        self.skip_bad = skip_bad
        self.bad = []

    def read(self, path):
        """Returns the decoded image, or None when the file is bad (recorded)."""
        try:
            with open(path, "rb") as f:
                return decode_image(f, name=os.fspath(path))
        except (BadImagesError, OSError) as e:
            self.bad.append(str(e))
            return None

    def finish(self):
        if not self.bad:
            return 0
        if self.skip_bad:
            logging.warning(
                "%s: skipped %d unreadable image(s): %s",
                self.dataset_name,
                len(self.bad),
                "; ".join(self.bad),
            )
            return len(self.bad)
        raise BadImagesError(
            f"{self.dataset_name}: {len(self.bad)} unreadable image(s) (set skip_bad_images to "
            f"skip them): " + "; ".join(self.bad)
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


_THIS_THREAD = threading.local()


def _face_detector():
    """This thread's Haar cascade.

    One CascadeClassifier must not run detectMultiScale in two threads at once: tf.data's parallel
    map calls face_crop from several, and a shared detector fails at random with OpenCV's
    "u->urefcount == 0" assertion. Loading the cascade costs a few milliseconds per thread.
    """
    detector = getattr(_THIS_THREAD, "face_detector", None)
    if detector is None:
        import cv2

        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        detector = cv2.CascadeClassifier(path)
        if detector.empty():
            raise RuntimeError(f"cannot load the OpenCV face detector from {path}")
        _THIS_THREAD.face_detector = detector
    return detector


def center_square(image):
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top : top + s, left : left + s]


def face_crop(image, margin=0.2):
    """Crops the largest frontal face (OpenCV Haar cascade, shipped in the cv2 wheel).

    Returns (crop, found). When no face is found the centre square is returned and `found` is
    False, so the caller can count the fallbacks and warn once.
    """
    gray = image[..., 0] if image.shape[-1] == 1 else image.mean(axis=-1).astype(np.uint8)
    h, w = gray.shape
    min_side = max(24, min(h, w) // 8)
    faces = _face_detector().detectMultiScale(
        np.ascontiguousarray(gray), scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    if len(faces) == 0:
        return center_square(image), False
    x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
    side = int(round(max(fw, fh) * (1 + 2 * margin)))
    cx, cy = x + fw // 2, y + fh // 2
    side = min(side, h, w)
    top = int(np.clip(cy - side // 2, 0, h - side))
    left = int(np.clip(cx - side // 2, 0, w - side))
    return image[top : top + side, left : left + side], True


class FaceCropper:
    """Applies `face_crop` over a build and warns once with the number of fallbacks."""

    def __init__(self, dataset_name, enabled, size=None, margin=0.2):
        self.dataset_name = dataset_name
        self.enabled = enabled
        self.size = size
        self.margin = margin
        self.total = 0
        self.missed = 0

    def __call__(self, image):
        if not self.enabled:
            return image
        self.total += 1
        crop, found = face_crop(image, self.margin)
        if not found:
            self.missed += 1
        if self.size:
            crop = resize(crop, self.size)
        return crop

    def finish(self):
        if self.enabled and self.missed:
            logging.warning(
                "%s: no face found in %d of %d images; used the centre crop for those",
                self.dataset_name,
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
