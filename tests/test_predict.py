"""`python -m vit_se.predict` and `predict_paths` on a tiny trained run.

The session's tiny demo run (tests/conftest.py) is the model; inputs are drawn
faces saved as PNG/JPEG (RGB and gray, a nested folder), a short MJPG video written with OpenCV,
and broken files. Checks: the rows (count, order, frame indices, columns, probabilities summing to
1), that predictions equal the model applied to `inference.preprocess` (the evaluation transform),
that video frames reach the model as RGB, bad-file reporting, and the --npz/--labels path.
"""

import csv
import json
import os

import cv2
import jax
import numpy as np
import pytest
import tolerances
from conftest import run_module

from vit_se import inference, media, predict
from vit_se.datasets.labels import CLASS_NAMES
from vit_se.datasets.synthetic_faces import draw_face, save_image

COLUMNS = ["file", "frame", "predicted", "confidence", *CLASS_NAMES]
VIDEO_FRAMES = 10


@pytest.fixture(scope="module")
def workdir(demo_run):
    return demo_run["workdir"]


@pytest.fixture(scope="module")
def trained(workdir):
    return inference.load_trained(workdir, "params.npz")


def write_video(path, frames, fps=10):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    writer.release()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    faces = root / "faces"
    (faces / "nested" / "deeper").mkdir(parents=True)
    images = {
        "a0.png": draw_face(0, 64, rng, rgb=True),
        "a1.jpg": draw_face(3, 80, rng, rgb=True),
        "a2_gray.png": draw_face(5, 64, rng, rgb=False),
        "nested/c.jpeg": draw_face(4, 72, rng, rgb=True),
        "nested/deeper/b.png": draw_face(6, 64, rng, rgb=True),
    }
    for name, image in images.items():
        save_image(image, faces / name)
    (faces / "notes.txt").write_text("not an image")  # ignored: no image extension
    save_image(draw_face(1, 64, rng), faces / ".hidden.png")  # ignored: hidden
    clip = root / "clip.avi"
    write_video(clip, [draw_face(i % 7, 64, rng, rgb=True) for i in range(VIDEO_FRAMES)])
    bad = root / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    # os.walk order: files of a folder (sorted) before its sub-folders.
    order = ["a0.png", "a1.jpg", "a2_gray.png", "nested/c.jpeg", "nested/deeper/b.png"]
    return {
        "root": root,
        "faces": str(faces),
        "image_files": [str(faces / n) for n in order],
        "clip": str(clip),
        "bad": str(bad),
    }


def test_trained_params_live_on_the_device(trained):
    # Host (numpy) parameters would be copied to the device again on every batch.
    leaves = jax.tree_util.tree_leaves(trained.params)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)


def _probability_sums(trained):
    """n of a probability: the model's sums and the softmax's over the classes (scale 1)."""
    return tolerances.vit_sums(trained.model, trained.info.image_size) + len(trained.class_names)


def _check_row(row, class_names):
    p = np.array([row[c] for c in class_names])
    assert p.sum() == tolerances.approx(1.0, n=len(class_names))
    assert row["predicted"] == class_names[int(np.argmax(p))]
    assert row["confidence"] == p.max()  # the predicted class's own probability


def test_predict_paths_folder_and_video_rows(trained, inputs):
    rows = predict.predict_paths(
        trained, [inputs["faces"], inputs["clip"]], batch_size=4, every_nth_frame=3
    )
    files = inputs["image_files"]
    assert [r["file"] for r in rows] == files + [inputs["clip"]] * 4
    assert [r["frame"] for r in rows] == [None] * len(files) + [0, 3, 6, 9]
    for row in rows:
        assert list(row) == COLUMNS
        _check_row(row, CLASS_NAMES)
    # The same numbers as the model on the evaluation transform of each file, one at a time:
    # preprocessing is evaluation's, and batching/padding changes nothing.
    x = np.stack([inference.preprocess(media.read_image(f), trained.info) for f in files])
    want = trained.probabilities(x)
    got = np.array([[r[c] for c in CLASS_NAMES] for r in rows[: len(files)]])
    n = _probability_sums(trained)
    tolerances.assert_close(got, want, n, scale=1.0)
    one_by_one = predict.predict_paths(trained, [inputs["clip"]], batch_size=1, every_nth_frame=3)
    tolerances.assert_close(
        [[r[c] for c in CLASS_NAMES] for r in one_by_one],
        [[r[c] for c in CLASS_NAMES] for r in rows[len(files) :]],
        n,
        scale=1.0,
    )


def test_video_frames_are_sampled_and_reach_the_model_as_rgb(tmp_path):
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 230
    path = tmp_path / "red.avi"
    write_video(path, [red] * 7)
    items = list(predict.iter_inputs([str(path)], every_nth_frame=1))
    assert [i[1] for i in items] == list(range(7))
    for _, _, frame, error in items:
        assert error is None and frame.shape == (32, 32, 3)
        r, g, b = frame.reshape(-1, 3).mean(0)
        assert r > 200 and g < 40 and b < 40, (r, g, b)
    assert [i[1] for i in predict.iter_inputs([str(path)], every_nth_frame=4)] == [0, 4]


def test_unreadable_inputs_are_listed_or_skipped(trained, inputs, tmp_path):
    garbage_video = tmp_path / "garbage.mp4"
    garbage_video.write_bytes(os.urandom(3000))
    paths = [inputs["image_files"][0], inputs["bad"], str(tmp_path / "missing.jpg")]
    with pytest.raises(predict.BadImagesError) as e:
        predict.predict_paths(trained, [*paths, str(garbage_video)])
    lines = str(e.value).splitlines()
    assert lines[0].startswith("3 unreadable input(s)")
    assert lines[1].startswith(f"{inputs['bad']}: cannot decode image")
    assert lines[2] == f"{tmp_path / 'missing.jpg'}: no such file"
    assert lines[3].startswith(f"{garbage_video}: cannot ")
    bad = []
    rows = predict.predict_paths(trained, paths, skip_bad=True, bad=bad)
    assert [r["file"] for r in rows] == paths[:1] and len(bad) == 2


@pytest.mark.slow
def test_cli_writes_table_and_csv(workdir, inputs, tmp_path):
    out = tmp_path / "out" / "preds.csv"
    r = run_module(
        "vit_se.predict",
        f"--workdir={workdir}",
        "--params=best_params.npz",
        "--batch_size=4",
        "--every_nth_frame=3",
        f"--out={out}",
        inputs["faces"],
        inputs["clip"],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == COLUMNS
    body = table[1:]
    assert len(body) == 5 + 4
    assert [row[1] for row in body] == [""] * 5 + ["0", "3", "6", "9"]
    for row in body:
        assert sum(float(v) for v in row[4:]) == tolerances.approx(1.0, n=len(CLASS_NAMES))
        assert row[2] in CLASS_NAMES
    assert os.listdir(out.parent) == ["preds.csv"]  # no temporary file left behind
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["file", "frame", "predicted", "confidence"]
    last = lines[2 + 8].split()
    assert last[:2] == [inputs["clip"], "9"] and last[2] in CLASS_NAMES
    assert f"wrote 9 prediction(s) to {out}" in r.stdout


@pytest.mark.slow
def test_cli_bad_file_fails_naming_it_and_writes_nothing(workdir, inputs, tmp_path):
    out = tmp_path / "preds.json"
    good = inputs["image_files"][0]
    r = run_module("vit_se.predict", f"--workdir={workdir}", f"--out={out}", good, inputs["bad"])
    assert r.returncode == 1
    tail = r.stderr.strip().splitlines()[-2:]
    assert tail[0] == ("vit_se.predict: 1 unreadable input(s) (pass --skip_bad to skip them):"), (
        r.stderr[-2000:]
    )
    assert tail[1].startswith(f"{inputs['bad']}: cannot decode image (")
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_cli_official_npz_with_labels_file_and_skip_bad(workdir, trained, inputs, tmp_path):
    """--npz/--variant/--labels_file on the run's params.npz (vit_jax layout) + --skip_bad."""
    labels = tmp_path / "labels.txt"
    names = [f"expr_{n}" for n in CLASS_NAMES]
    labels.write_text("\n".join(names) + "\n")
    out = tmp_path / "preds.json"
    good = inputs["image_files"][:2]
    r = run_module(
        "vit_se.predict",
        f"--npz={workdir}/params.npz",
        "--variant=tiny/8",
        "--use_se",
        "--image_size=48",
        f"--labels_file={labels}",
        "--skip_bad",
        f"--out={out}",
        good[0],
        inputs["bad"],
        good[1],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped 1 unreadable input(s):" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["class_names"] == names and doc["columns"] == COLUMNS[:4] + names
    assert doc["num_predictions"] == 2 and len(doc["skipped"]) == 1
    assert doc["skipped"][0].startswith(f"{inputs['bad']}: ")
    rows = doc["predictions"]
    assert [row["file"] for row in rows] == good and rows[0]["frame"] is None
    want = predict.predict_paths(trained, good)
    for row, ref in zip(rows, want, strict=True):
        _check_row(row, names)
        tolerances.assert_close(
            [row[n] for n in names],
            [ref[c] for c in CLASS_NAMES],
            _probability_sums(trained),
            scale=1.0,
        )


@pytest.mark.slow
def test_cli_official_npz_with_labels_list(workdir, inputs, tmp_path):
    out = tmp_path / "p.csv"
    r = run_module(
        "vit_se.predict",
        f"--npz={workdir}/params.npz",
        "--variant=tiny/8",
        "--use_se",
        "--image_size=48",
        "--labels=" + ",".join(CLASS_NAMES),
        f"--out={out}",
        inputs["clip"],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == COLUMNS
    assert [row[1] for row in table[1:]] == [str(i) for i in range(VIDEO_FRAMES)]


@pytest.mark.slow
def test_flag_errors(workdir):
    r = run_module("vit_se.predict", f"--workdir={workdir}", "--out=x.txt", "a.png")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "vit_se.predict: --out must end with .csv or .json, got 'x.txt'"
    )


def test_a_sixteen_bit_png_predicts_as_its_eight_bit_original(trained, tmp_path):
    """16-bit PNGs written by the test itself (each 8-bit value x257, as image tools widen) give
    the 8-bit image's pixels and so its prediction, to the bit: scaled by the bit depth."""
    rng = np.random.default_rng(5)
    gray = draw_face(2, 64, rng)  # HxWx1; its values stay below 255, so a stretch would show
    rgb = draw_face(4, 64, rng, rgb=True)
    assert gray.max() < 250
    pairs = []
    for name, face in (("gray", gray), ("rgb", rgb)):
        eight, sixteen = tmp_path / f"{name}8.png", tmp_path / f"{name}16.png"
        save_image(face, eight)
        wide = face.astype(np.uint16) * 257
        assert cv2.imwrite(str(sixteen), wide[..., 0] if name == "gray" else wide[..., ::-1])
        assert cv2.imread(str(sixteen), cv2.IMREAD_UNCHANGED).dtype == np.uint16
        np.testing.assert_array_equal(media.read_image(sixteen), media.read_image(eight))
        pairs.append((str(eight), str(sixteen)))
    for eight, sixteen in pairs:
        (a,) = predict.predict_paths(trained, [eight], batch_size=1)
        (b,) = predict.predict_paths(trained, [sixteen], batch_size=1)
        assert [a[c] for c in CLASS_NAMES] == [b[c] for c in CLASS_NAMES]


def test_nothing_to_read_fails_in_one_line(trained, inputs, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(predict.cli.CommandError, match=f"^no image files in {empty} "):
        predict.predict_paths(trained, [str(empty)])
    only_bad = [inputs["bad"], str(tmp_path / "missing.jpg")]
    for skip_bad in (False, True):
        with pytest.raises(predict.BadImagesError) as e:
            predict.predict_paths(trained, only_bad, skip_bad=skip_bad)
        text = str(e.value)
        assert "\n" not in text and text.startswith(f"nothing readable in {', '.join(only_bad)}: ")
        assert f"{tmp_path / 'missing.jpg'}: no such file" in text


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.slow
def test_cli_no_readable_input_fails_and_writes_nothing(workdir, inputs, tmp_path, skip_bad):
    out = tmp_path / "out" / "p.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [f"--workdir={workdir}", f"--out={out}", *(["--skip_bad"] if skip_bad else [])]
    r = run_module("vit_se.predict", *args, str(empty))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"vit_se.predict: no image files in {empty} (a folder gives its files ending in "
        ".png .jpg .jpeg .bmp .gif .tif .tiff .webp .ppm .pgm, searched recursively; a video is "
        "read when named)"
    ]
    r = run_module("vit_se.predict", *args, inputs["bad"])  # the model loads (its INFO line)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"vit_se.predict: nothing readable in {inputs['bad']}: {inputs['bad']}: cannot decode "
        f"image (UnidentifiedImageError: cannot identify image file {inputs['bad']!r})"
    ), r.stderr[-2000:]
    assert not out.parent.exists()


def _unwritable_folder(tmp_path):
    """A folder this process cannot write into; where chmod does not stop it (root), a path
    under a regular file, which no one can make a folder in."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return folder, str(folder)
    (folder / "probe").unlink()
    regular = tmp_path / "a_file"
    regular.write_text("")
    return regular / "sub", str(regular)


@pytest.mark.parametrize("flag", ["out", "annotate"])
@pytest.mark.grid
def test_cli_unwritable_destination_fails_before_the_model_loads(inputs, tmp_path, flag):
    folder, blocker = _unwritable_folder(tmp_path)
    target = folder / "p.csv" if flag == "out" else folder / "annotated"
    # A workdir that does not exist: the destination's error comes first, so it was checked
    # before the model was looked for, let alone loaded or run.
    r = run_module(
        "vit_se.predict", "--workdir=/nonexistent/run", f"--{flag}={target}", inputs["faces"]
    )
    (tmp_path / "read_only").chmod(0o755)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vit_se.predict: --{flag}={target}: "), lines
    assert blocker in lines[0] and "export.json" not in lines[0]


# ------------------------------------------------------------------------------ per face


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    """A video of two real faces (the astronaut's, one mirrored) moving towards each other, and
    one frame of it as an image. The faces move 12 px per frame, under a fifth of their width."""
    skimage_data = pytest.importorskip("skimage.data")
    from vit_se.datasets import faces as faces_lib

    photo = skimage_data.astronaut()
    (face,) = faces_lib.detect_mtcnn(photo)
    crop = faces_lib.box_crop(photo, face.box, 0.3)
    crop = cv2.resize(crop, (100, 100), interpolation=cv2.INTER_AREA)
    root = tmp_path_factory.mktemp("two_faces")
    frames, truth = [], []
    for t in range(8):
        frame = np.full((240, 400, 3), 90, np.uint8)
        ax, bx = 10 + 12 * t, 290 - 12 * t
        frame[20:120, ax : ax + 100] = crop
        frame[130:230, bx : bx + 100] = crop[:, ::-1]
        frames.append(frame)
        truth.append((ax, bx))
    clip = root / "two.avi"
    write_video(clip, frames)
    still = root / "still.png"
    save_image(frames[0], still)
    return {"clip": str(clip), "still": str(still), "truth": truth, "frames": frames}


def test_every_face_gets_a_row_and_keeps_its_track(trained, two_faces):
    rows = predict.predict_faces(trained, [two_faces["clip"]], batch_size=3, detector="aligned")
    assert len(rows) == 16, [(r["frame"], r["face"]) for r in rows]
    assert [r["frame"] for r in rows] == [t for t in range(8) for _ in range(2)]
    for row in rows:
        assert list(row) == [*predict.FACE_COLUMNS, *CLASS_NAMES]
        _check_row(row, CLASS_NAMES)
    assert {r["track"] for r in rows} == {0, 1}
    by_track = {k: [r for r in rows if r["track"] == k] for k in (0, 1)}
    for track in by_track.values():
        assert [r["frame"] for r in track] == list(range(8))
        ys = {r["y"] // 110 for r in track}
        assert len(ys) == 1  # the upper face stays one track, the lower one the other
        xs = [r["x"] for r in track]
        step = np.diff(xs)
        assert np.all(np.abs(np.abs(step) - 12) <= 4), xs  # follows its own face
    # A row's numbers are the model on that face's crop (`inference.preprocess_face`).
    from vit_se.datasets import faces as faces_lib

    frame0 = two_faces["frames"][0]
    found = faces_lib.detect(frame0, "aligned")
    x = np.stack([inference.preprocess_face(frame0, f, trained.info, "aligned") for f in found])
    still = predict.predict_faces(trained, [two_faces["still"]], detector="aligned")
    assert [r["track"] for r in still] == [None, None] and [r["face"] for r in still] == [0, 1]
    tolerances.assert_close(
        [[r[c] for c in CLASS_NAMES] for r in still],
        trained.probabilities(x),
        _probability_sums(trained),
        scale=1.0,
    )


def test_smoothing_is_per_track_and_in_frame_order(trained, two_faces):
    raw = predict.predict_faces(trained, [two_faces["clip"]], detector="haar")
    smooth = predict.predict_faces(
        trained, [two_faces["clip"]], detector="haar", smoothing=("ema", 0.5)
    )
    for track in (0, 1):
        r = np.array([[x[c] for c in CLASS_NAMES] for x in raw if x["track"] == track])
        s = np.array([[x[c] for c in CLASS_NAMES] for x in smooth if x["track"] == track])
        assert len(r) >= 4 and len(s) == len(r)  # Haar finds each face in most frames
        want = [r[0]]
        for p in r[1:]:
            want.append(0.5 * p + 0.5 * want[-1])
        # One float32 rounding per frame of the recursion, at probability scale.
        tolerances.assert_close(s, want, n=len(r), scale=1.0)


@pytest.mark.slow
def test_cli_faces_annotates_images_and_videos(workdir, two_faces, tmp_path):
    out, annotated = tmp_path / "faces.json", tmp_path / "annotated"
    r = run_module(
        "vit_se.predict",
        f"--workdir={workdir}",
        "--faces",
        "--detector=aligned",
        "--smooth=window:3",
        f"--annotate={annotated}",
        f"--out={out}",
        "--progress_every=4",
        two_faces["still"],
        two_faces["clip"],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["detector"] == "aligned" and doc["smoothing"] == "window:3"
    assert doc["num_predictions"] == 2 + 16 and doc["no_face"] == {}
    assert doc["columns"] == [*predict.FACE_COLUMNS, *CLASS_NAMES]
    assert "frame 7 of 8" in r.stderr  # the progress line after the 8th sampled frame
    assert sorted(os.listdir(annotated)) == ["still.png.annotated.png", "two.avi.annotated.avi"]
    drawn = cv2.imread(str(annotated / "still.png.annotated.png"))[..., ::-1]
    assert drawn.shape == two_faces["frames"][0].shape
    assert np.abs(drawn.astype(int) - two_faces["frames"][0]).max() > 100  # boxes and labels
    cap = cv2.VideoCapture(str(annotated / "two.avi.annotated.avi"))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 8
    assert "wrote 2 annotated file(s)" in r.stdout


@pytest.mark.slow
def test_cli_per_face_flags_need_faces(workdir):
    r = run_module("vit_se.predict", f"--workdir={workdir}", "--smooth=ema:0.5", "a.png")
    assert r.returncode == 1
    assert (
        r.stderr.strip().splitlines()[-1]
        == "vit_se.predict: --smooth: per-face options; add --faces"
    )
    r = run_module("vit_se.predict", f"--workdir={workdir}", "--faces", "--smooth=ema:2", "a.png")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("vit_se.predict: --smooth must be off,")
