"""Finding, sniffing and reading the images and videos that users and datasets give.

One module so that a file is an image for the builders exactly when it is one for predict and
analyze, and decodes to the same pixels in both:

- Finding (`find`): files are kept as named; a folder contributes its files with an image
  extension (or the extensions asked for), recursively unless told otherwise, in sorted order
  (a folder's files before its sub-folders), hidden files and folders skipped. Local paths and
  `gs://` through `etils.epath`.
- Sniffing (`is_image`, `is_video`): by extension, from one list of each.
- Reading (`decode`, `read_image`, `frames`, `ImageReader`): images with PIL as stored, 16-bit
  scaled by their bit depth; video frames with OpenCV, converted to RGB as they are read.

Every failure to read is a `BadImagesError` naming the file.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageFile

from vit_se.datasets.common import SKIP_HINT, BadImagesError

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

# Truncated files must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _remote(path):
    return "://" in os.fspath(path)


# ----------------------------------------------------------------------------------------------
# Sniffing and finding.


def is_image(path):
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def is_video(path):
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def _hidden(name):
    return name.startswith(".")


def find(paths, extensions=IMAGE_EXTENSIONS, recursive=True):
    """Files and folders -> the files to read, as strings, in a stable order.

    A folder contributes its files ending with one of `extensions` (case-insensitive), sorted,
    hidden entries skipped; with `recursive`, its sub-folders' too, after its own files. A file
    named explicitly is kept whatever its extension, and so is a path that does not exist, so
    that reading it reports it by name. Each result starts with the folder as it was spelt.
    """
    out = []
    for path in map(os.fspath, paths):
        top = epath.Path(path)
        if not top.is_dir():
            out.append(path)
            continue
        for root, dirs, files in top.walk():
            # epath normalises ('./a/' is 'a'); the user's spelling is kept for the results.
            below = os.fspath(root.relative_to(top))
            below = "" if below == "." else below
            dirs[:] = sorted(d for d in dirs if not _hidden(d)) if recursive else []
            out.extend(
                os.path.join(path, below, f)
                for f in sorted(files)
                if not _hidden(f) and f.lower().endswith(extensions)
            )
    return out


# ----------------------------------------------------------------------------------------------
# Images.


def _full_scale(img):
    """The value of white in a PIL integer gray image ('I;16*' or 'I'), from its bit depth.

    PIL opens 16-bit gray as 'I;16' (PNG, TIFF) or as 'I' with a 16-bit raw mode (PGM; a PGM
    of another maxval is scaled to 16 bits by PIL itself); 'I' from wider data (a 32-bit TIFF)
    has no standard white, hence None. Called before `load()`, which drops the tile list.
    """
    if img.mode.startswith("I;16"):
        return 65535
    tile = img.tile[0] if img.tile else None
    if tile is not None:
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        raw = args[0] if args and isinstance(args[0], str) else ""
        if tile.codec_name == "ppm" or raw.startswith("I;16"):
            return 65535
    return None


def decode(source, name=None):
    """An image file (a path, local or gs://, or a binary file object) -> uint8 HxWxC, as stored.

    C is 1 for gray and 3 for colour. Palette images (some JAFFE tiffs) are expanded: to gray
    when the palette is gray, else RGB. Alpha is dropped. Deeper than 8 bits is scaled by the
    bit depth, never by the image's own range, so an 8-bit image saved at 16 bits (each value
    x257) decodes to its 8-bit values: 16-bit gray is rounded from value * 255 / 65535, 16-bit
    colour is PIL's high byte (exact for x257 too).
    """
    is_path = isinstance(source, str | os.PathLike)
    name = name or (os.fspath(source) if is_path else "image")
    remote = is_path and _remote(source)
    f = None
    try:
        f = epath.Path(source).open("rb") if remote else source
        with Image.open(f) as img:
            white = _full_scale(img) if img.mode.startswith("I") else None
            img.load()
            return _as_stored(img, white)
    except FileNotFoundError:
        raise BadImagesError(f"{name}: no such file") from None
    except PermissionError as e:
        raise BadImagesError(f"{name}: cannot read ({e.strerror})") from None
    except Exception as e:  # PIL raises several types for corrupt data.
        raise BadImagesError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
    finally:
        if remote and f is not None:
            f.close()


def _as_stored(img, white):
    mode = img.mode
    if mode == "P":
        arr = np.asarray(img.convert("RGB"))
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., :1]
        return np.ascontiguousarray(arr)
    if mode.startswith("I"):
        if white is None:
            raise ValueError(f"{mode} pixels wider than 16 bits; expected 8 or 16")
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, white)
        return np.round(arr * (255.0 / white)).astype(np.uint8)[..., None]
    if mode in ("L", "1", "LA"):
        return np.asarray(img.convert("L"))[..., None]
    return np.asarray(img.convert("RGB"))


def read_image(path):
    """Any image file -> uint8 HxWx3 RGB (gray repeated), naming the file when it fails."""
    image = decode(path)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


class ImageReader:
    """Decodes a build's images, recording failures so one build reports every bad file at once.

    With `skip_bad=False` (the default of every builder) `finish()` raises listing all bad files;
    with `skip_bad=True` they are dropped and `finish()` logs how many were skipped.
    """

    def __init__(self, dataset_name, skip_bad=False):
        self.dataset_name = dataset_name
        self.skip_bad = skip_bad
        self.bad = []

    def read(self, path):
        """Returns the decoded image (`decode`), or None when the file is bad (recorded)."""
        try:
            return decode(path)
        except BadImagesError as e:
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
            f"{self.dataset_name}: {len(self.bad)} unreadable image(s) ({SKIP_HINT}): "
            + "; ".join(self.bad)
        )


# ----------------------------------------------------------------------------------------------
# Videos.


def _local_video(path):
    if _remote(path):
        raise BadImagesError(f"{path}: OpenCV reads videos from local files only; copy it here")
    if not os.path.isfile(path):
        raise BadImagesError(f"{path}: no such file")


def frame_rate(path, default=25.0):
    """The video's frames per second as its container states it (`default` when it does not)."""
    import cv2

    _local_video(path)
    cap = cv2.VideoCapture(path)
    try:
        return cap.get(cv2.CAP_PROP_FPS) or default
    finally:
        cap.release()


def frames(path, every_nth_frame=1, progress_every=0):
    """Yields (frame_index, RGB uint8 HxWx3 frame) for frames 0, N, 2N, ...; raises if none reads.

    Skipped frames are grabbed, not decoded. OpenCV's BGR is converted to RGB here, the one place
    a frame enters vit_se (`vit_se.datasets.faces`: the colour order). Logs a progress line every
    `progress_every` sampled frames (0: never).
    """
    import cv2

    _local_video(path)
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise BadImagesError(f"{path}: cannot open video (OpenCV VideoCapture failed)")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        start = time.time()
        index = 0
        kept = 0
        while True:
            if index % every_nth_frame == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                kept += 1
                if progress_every and kept % progress_every == 0:
                    _log_progress(path, index, total, kept, time.time() - start)
                yield index, np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            elif not cap.grab():
                break
            index += 1
        if kept == 0:
            raise BadImagesError(f"{path}: cannot read any frame of the video")
    finally:
        cap.release()


def _log_progress(path, index, total, kept, seconds):
    of = f" of {total} ({100 * (index + 1) / total:.1f}%)" if total else ""
    logging.info(
        "%s: frame %d%s, %d sampled frames in %.0f s (%.2f frames/s)",
        path,
        index,
        of,
        kept,
        seconds,
        kept / max(seconds, 1e-9),
    )
