"""Face detection and 5-point alignment (`vit_se.datasets.faces`) on a real photograph.

scikit-image ships one (`skimage.data.astronaut()`, 512x512 RGB, one frontal face), so the
detector and the alignment are tested on a real face without a download. Tolerances:
- the detector finds exactly one face there, with its eyes above its mouth;
- the aligned crop (224 px) puts the 5 landmarks on the template within EYE_TOLERANCE_PX in least
  squares, and MTCNN run again on the aligned crop finds the eyes within REDETECT_TOLERANCE_PX
  of the template's eye positions;
- rotating the photograph by 15 degrees changes the aligned crop by at most ROTATION_MEAN_DIFF
  grey levels on average (of 255) and moves the re-detected landmarks by at most
  ROTATION_POINT_PX, where the unaligned centre crops of the two photographs differ by several
  times as much.
"""

import numpy as np
import pytest
import tolerances

from vit_se import workdir
from vit_se.datasets import common, faces

skimage_data = pytest.importorskip("skimage.data")

SIZE = 224
EYE_TOLERANCE_PX = 6.0
REDETECT_TOLERANCE_PX = 7.0
ROTATION_MEAN_DIFF = 10.0
ROTATION_POINT_PX = 3.0


@pytest.fixture(scope="module")
def photo():
    return skimage_data.astronaut()


def _rotate(image, degrees):
    import cv2

    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def test_face_crop_mode_normalises_and_names_the_setting():
    assert faces.face_crop_mode(True) == "haar"
    assert faces.face_crop_mode(False) == "none"
    assert faces.face_crop_mode(None) == "none"
    assert faces.face_crop_mode("Aligned") == "aligned"
    assert faces.face_crop_mode("true") == "haar"
    with pytest.raises(ValueError) as e:
        faces.face_crop_mode("mtcnn")
    msg = str(e.value)
    assert msg.startswith("config.face_crop must be one of 'none', 'haar', 'aligned'")
    assert "got 'mtcnn'" in msg and "\n" not in msg


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.deg2rad(20), 1.7, np.array([3.0, -8.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    m = faces.similarity_transform(src, dst)
    # float64 least squares over 5 points with coordinates up to |dst| (the shift's scale).
    n, size = 5, np.abs(dst).max()
    tolerances.assert_close(m[:, :2], scale * rot, n, scale=size, eps=tolerances.EPS64)
    tolerances.assert_close(m[:, 2], shift, n, scale=size, eps=tolerances.EPS64)
    tolerances.assert_close(faces.transform_points(m, src), dst, n, eps=tolerances.EPS64)


def test_template_with_margin():
    t0 = faces.template(112, margin=0)
    tolerances.assert_close(t0, faces.ARCFACE_TEMPLATE_112, n=2, eps=tolerances.EPS64)
    t = faces.template(SIZE, margin=0.1)
    # The margin shrinks the face towards the centre: eye distance 1/1.2 of the margin-0 one.
    d0 = np.linalg.norm(faces.template(SIZE, 0)[1] - faces.template(SIZE, 0)[0])
    assert np.linalg.norm(t[1] - t[0]) == tolerances.approx(d0 / 1.2, n=4, eps=tolerances.EPS64)
    with pytest.raises(ValueError, match="margin"):
        faces.template(SIZE, margin=-0.1)


def test_mtcnn_finds_the_astronauts_face(photo):
    found = faces.detect_mtcnn(photo)
    assert len(found) == 1, found
    face = found[0]
    x, y, w, h = face.box
    assert 0.9 < face.score <= 1.0
    assert 60 < w < 260 and 60 < h < 300
    pts = face.landmarks
    assert pts.shape == (5, 2)
    assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # image-left first
    assert pts[:2, 1].max() < pts[2, 1] < pts[3:, 1].min()  # eyes, nose, mouth from the top
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in pts)
    # Haar (the 'haar' mode) finds the same face.
    (haar,) = faces.detect_haar(photo)[:1]
    cx, cy = x + w / 2, y + h / 2
    hx, hy, hw, hh = haar.box
    assert hx < cx < hx + hw and hy < cy < hy + hh


def test_aligned_crop_puts_the_landmarks_on_the_template(photo):
    (face,) = faces.detect_mtcnn(photo)
    crop, m = faces.align(photo, face.landmarks, SIZE)
    assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8
    target = faces.template(SIZE)
    moved = faces.transform_points(m, face.landmarks)
    residual = np.linalg.norm(moved - target, axis=1)
    print(f"landmark residual after alignment (px at {SIZE}): {np.round(residual, 2)}")
    assert residual[:2].max() <= EYE_TOLERANCE_PX
    again = faces.detect_mtcnn(crop)
    assert again, "MTCNN finds no face in the aligned crop"
    eyes = again[0].landmarks[:2]
    error = np.linalg.norm(eyes - target[:2], axis=1)
    print(f"eyes re-detected in the aligned crop vs template (px): {np.round(error, 2)}")
    assert error.max() <= REDETECT_TOLERANCE_PX


def test_rotating_the_photo_changes_the_aligned_crop_little(photo):
    rotated = _rotate(photo, 15)
    a, found_a = faces.largest_face_crop(photo, "aligned", SIZE)
    b, found_b = faces.largest_face_crop(rotated, "aligned", SIZE)
    assert found_a and found_b
    diff = np.abs(a.astype(float) - b.astype(float)).mean()
    naive = np.abs(
        common.resize(faces.center_square(photo), SIZE).astype(float)
        - common.resize(faces.center_square(rotated), SIZE).astype(float)
    ).mean()
    print(f"aligned crops differ by {diff:.2f} grey levels; unaligned centre crops by {naive:.2f}")
    assert diff <= ROTATION_MEAN_DIFF and naive > 2 * diff
    pa = faces.detect_mtcnn(a)[0].landmarks
    pb = faces.detect_mtcnn(b)[0].landmarks
    move = np.linalg.norm(pa - pb, axis=1).max()
    print(f"landmarks of the two aligned crops differ by at most {move:.2f} px")
    assert move <= ROTATION_POINT_PX


def test_gray_images_align_to_gray_crops(photo):
    gray = common.to_gray(photo)
    crop, found = faces.largest_face_crop(gray, "aligned", 96)
    assert found and crop.shape == (96, 96, 1)


def test_no_face_falls_back_to_the_centre_square_and_is_counted():
    blank = np.full((90, 120, 3), 128, np.uint8)
    crop, found = faces.largest_face_crop(blank, "aligned")
    assert not found and crop.shape == (faces.ALIGNED_SIZE, faces.ALIGNED_SIZE, 3)
    cropper = common.FaceCropper("test", "aligned", 64)
    assert cropper(blank).shape == (64, 64, 3)
    assert cropper.finish() == 1 and cropper.missed == 1 and cropper.total == 1
    assert common.FaceCropper("test", True).mode == "haar"
    assert not common.FaceCropper("test", False).enabled
    with pytest.raises(ValueError, match="test: face crop must be one of"):
        common.FaceCropper("test", "yes please")


def test_crop_face_is_the_haar_crop_in_haar_mode(photo):
    got, found = common.crop_face(photo, "haar")
    want, _ = common.face_crop(photo)
    assert found and np.array_equal(got, want)
    same, found = common.crop_face(photo, "none")
    assert found and np.array_equal(same, photo)


def test_export_info_reads_old_boolean_face_crop():
    base = {"model": {}, "class_names": ["a", "b"], "image_size": 32, "eval_resize": 32}
    assert workdir.ExportInfo.from_json({**base, "face_crop": True}).face_crop == "haar"
    assert workdir.ExportInfo.from_json({**base, "face_crop": False}).face_crop == "none"
    assert workdir.ExportInfo.from_json(base).face_crop == "none"
    info = workdir.ExportInfo.from_json({**base, "face_crop": "aligned"})
    assert info.face_crop == "aligned" and info.to_json()["face_crop"] == "aligned"
    with pytest.raises(workdir.WorkdirError, match=r"^x/export.json: face_crop must be one of"):
        workdir.ExportInfo.from_json({**base, "face_crop": "eyes"}, where="x/export.json")


def test_aligned_crop_in_tf_data_parallel_threads_is_the_inference_crop(photo):
    """The input pipeline crops inside tf.data (several threads, MTCNN running TensorFlow ops
    from within a numpy_function); the cached crop must be exactly what inference computes."""
    import io

    import tensorflow as tf
    from PIL import Image

    from vit_se import input_pipeline

    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    ds = tf.data.Dataset.from_tensor_slices([buf.getvalue()] * 4)
    ds = ds.map(
        lambda b: input_pipeline._face_crop_encoded(b, "aligned"),
        num_parallel_calls=4,
        deterministic=True,
    )
    crops = [tf.io.decode_png(png).numpy() for png in ds]
    want, found = common.crop_face(photo, "aligned")
    assert found
    for crop in crops:
        np.testing.assert_array_equal(crop, want)
