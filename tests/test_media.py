"""vit_se.media: finding files and folders, sniffing image vs video, decoding images (16-bit by
bit depth) and video frames, on files written here in their real formats."""

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from vit_se import media
from vit_se.datasets.common import BadImagesError
from vit_se.errors import Error


def _gray8(h=40, w=52):
    # Values 20..219: neither end of the range, so any stretch to the image's own peak shows.
    return ((np.arange(h * w).reshape(h, w) * 7) % 200 + 20).astype(np.uint8)


def _rgb8(h=40, w=52):
    g = _gray8(h, w)
    return np.stack([g, 255 - g, (g // 2) + 30], axis=-1).astype(np.uint8)


def test_one_extension_list_each_and_sniffing():
    assert media.is_image("a/B.PNG") and media.is_image("x.jpeg") and media.is_image("x.tif")
    assert media.is_video("clip.MP4") and media.is_video("c.avi")
    assert not media.is_image("clip.mp4") and not media.is_video("a.png")
    assert not media.is_image("notes.txt") and not media.is_video("notes.txt")
    assert not set(media.IMAGE_EXTENSIONS) & set(media.VIDEO_EXTENSIONS)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "faces"
    for rel in ["b.png", "a.JPG", "z.tiff", "sub/c.png", "sub/deeper/d.webp", "other/e.bmp"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    for rel in ["notes.txt", ".hidden.png", ".cache/f.png", "sub/clip.mp4"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


def test_find_recursive_sorted_hidden_skipped_files_kept_as_named(tree, tmp_path):
    want = ["a.JPG", "b.png", "z.tiff", "other/e.bmp", "sub/c.png", "sub/deeper/d.webp"]
    assert media.find([tree]) == [os.path.join(str(tree), w) for w in want]
    # Explicit files are kept whatever they are, and so is a path that does not exist.
    named = [str(tree / "notes.txt"), str(tmp_path / "missing.png")]
    assert media.find(named) == named
    # Only the top folder, and other extensions.
    assert media.find([tree], recursive=False) == [
        os.path.join(str(tree), w) for w in ["a.JPG", "b.png", "z.tiff"]
    ]
    assert media.find([tree], media.VIDEO_EXTENSIONS) == [os.path.join(str(tree), "sub/clip.mp4")]


def test_find_keeps_the_folder_as_spelt(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    assert media.find(["./faces/"])[:2] == ["./faces/a.JPG", "./faces/b.png"]
    assert media.find(["faces"])[-1] == "faces/sub/deeper/d.webp"
    monkeypatch.chdir(tree)
    assert media.find(["."])[3] == "./other/e.bmp"


def test_eight_bit_images_decode_as_stored(tmp_path):
    gray, rgb = _gray8(), _rgb8()
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.gif")
    assert media.decode(tmp_path / "g.png").shape == (40, 52, 1)
    np.testing.assert_array_equal(media.decode(tmp_path / "g.png")[..., 0], gray)
    np.testing.assert_array_equal(media.decode(tmp_path / "c.png"), rgb)
    np.testing.assert_array_equal(media.read_image(tmp_path / "g.png"), np.stack([gray] * 3, -1))
    assert media.decode(tmp_path / "p.gif").shape == (40, 52, 3)
    with open(tmp_path / "c.png", "rb") as f:  # a file object, named by the caller
        np.testing.assert_array_equal(media.decode(f, name="c"), rgb)


def test_sixteen_bit_images_are_scaled_by_their_bit_depth(tmp_path):
    """An 8-bit image saved at 16 bits (x257, as image tools widen) decodes to its 8-bit values,
    not stretched to the image's own peak (219 x 257 here, far from 65535)."""
    gray, rgb = _gray8(), _rgb8()
    gray16, rgb16 = gray.astype(np.uint16) * 257, rgb.astype(np.uint16) * 257
    paths = {
        "gray.png": gray16,
        "gray.tif": gray16,
        "rgb.png": rgb16,  # cv2 writes 16-bit colour PNG/TIFF (PIL cannot), BGR order
        "rgb.tiff": rgb16,
        "gray.pgm": gray16,
    }
    for name, array in paths.items():
        data = array[..., ::-1] if array.ndim == 3 else array
        assert cv2.imwrite(str(tmp_path / name), np.ascontiguousarray(data)), name
    with Image.open(tmp_path / "gray.png") as img:
        assert img.mode == "I;16"  # really 16-bit on disk
    assert cv2.imread(str(tmp_path / "rgb.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    for name in ("gray.png", "gray.tif", "gray.pgm"):
        got = media.decode(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (40, 52, 1), name
        np.testing.assert_array_equal(got[..., 0], gray, err_msg=name)
    for name in ("rgb.png", "rgb.tiff"):
        np.testing.assert_array_equal(media.decode(tmp_path / name), rgb, err_msg=name)
    # Values between the 8-bit steps round to the nearest: 65535 is 255, 128 (0.5 step) is 0.
    edge = np.array([[0, 128, 129, 257 * 100 + 128, 65535]], np.uint16)
    Image.fromarray(edge).save(tmp_path / "edge.png")
    np.testing.assert_array_equal(media.decode(tmp_path / "edge.png")[0, :, 0], [0, 0, 1, 100, 255])


def test_wider_integer_images_and_bad_files_fail_naming_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(buf, format="TIFF")
    (tmp_path / "wide.tif").write_bytes(buf.getvalue())
    with pytest.raises(BadImagesError, match=r"wide.tif: cannot decode image .*wider than 16"):
        media.decode(tmp_path / "wide.tif")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(BadImagesError, match=r"bad.png: cannot decode image \("):
        media.read_image(tmp_path / "bad.png")
    with pytest.raises(BadImagesError, match=r"missing.png: no such file$"):
        media.read_image(tmp_path / "missing.png")
    assert issubclass(BadImagesError, Error)  # one line from every command


def test_image_reader_collects_every_bad_file(tmp_path):
    Image.fromarray(_gray8()).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    reader = media.ImageReader("demo")
    assert reader.read(tmp_path / "ok.png").shape == (40, 52, 1)
    assert reader.read(tmp_path / "bad.png") is None and reader.read(tmp_path / "no.png") is None
    with pytest.raises(BadImagesError, match=r"^demo: 2 unreadable image\(s\) .*bad.png.*no.png"):
        reader.finish()
    skipping = media.ImageReader("demo", skip_bad=True)
    skipping.read(tmp_path / "bad.png")
    assert skipping.finish() == 1


def _write_video(path, frames, fps=10):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()


def test_video_frames_are_sampled_as_rgb(tmp_path):
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 230
    _write_video(tmp_path / "red.avi", [red] * 7, fps=12)
    got = list(media.frames(str(tmp_path / "red.avi"), every_nth_frame=3))
    assert [i for i, _ in got] == [0, 3, 6]
    r, g, b = got[0][1].reshape(-1, 3).mean(0)
    assert r > 200 and g < 40 and b < 40
    assert media.frame_rate(str(tmp_path / "red.avi")) == pytest.approx(12)
    (tmp_path / "junk.mp4").write_bytes(os.urandom(2000))
    with pytest.raises(BadImagesError, match="junk.mp4: cannot "):
        list(media.frames(str(tmp_path / "junk.mp4")))
    with pytest.raises(BadImagesError, match="local files only"):
        list(media.frames("gs://bucket/clip.mp4"))
