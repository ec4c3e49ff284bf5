"""The affectnet builder on fake data in both distributed layouts: counts, labels, features, errors.

Expected counts are written out by hand from fake_data's defaults: training.csv has, per AffectNet
code 0..10 (neutral happy sad surprise fear disgust anger contempt none uncertain no-face),
5 8 4 3 2 1 6 2 2 1 3 rows, validation.csv 2 rows of every code.
"""

import importlib.util
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tolerances
from PIL import Image

from vit_se.datasets import common, labels
from vit_se.datasets.affectnet import affectnet_dataset_builder as affectnet
from vit_se.datasets.affectnet import fake_data

tfds.disable_progress_bar()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per canonical class (angry disgust fear happy sad surprise neutral [contempt]).
TRAIN_7 = [6, 1, 2, 8, 4, 3, 5]  # anger 6, disgust 1, fear 2, happy 8, sad 4, surprise 3, neutral 5
TRAIN_8 = TRAIN_7 + [2]
VALIDATION_7, VALIDATION_8 = [2] * 7, [2] * 8
DROPPED_7 = {
    "train": {"contempt": 2, "no-face": 3, "none": 2, "uncertain": 1},
    "validation": {"contempt": 2, "no-face": 2, "none": 2, "uncertain": 2},
}
DROPPED_8 = {
    split: {k: v for k, v in d.items() if k != "contempt"} for split, d in DROPPED_7.items()
}
# AffectNet code -> canonical name, from the AffectNet paper's code list.
CODE_NAMES = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "angry",
    7: "contempt",
}


def canonical(code):
    return labels.CLASS_NAMES_WITH_CONTEMPT.index(CODE_NAMES[code])


@pytest.fixture(scope="module")
def fake_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet_csv")
    return root, fake_data.write_fake_affectnet(root)


@pytest.fixture(scope="module")
def fake_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet_folders")
    return root, fake_data.write_fake_affectnet(root, layout="folders", test_per_code=1)


def build(manual_dir, data_dir, config="7class", **kwargs):
    builder = tfds.builder("affectnet", data_dir=os.fspath(data_dir), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


@pytest.fixture(scope="module")
def built(fake_csv, tmp_path_factory):
    """The CSV layout built once per config, shared by the tests that only read."""
    cache = {}

    def get(config):
        if config not in cache:
            cache[config] = build(fake_csv[0], tmp_path_factory.mktemp(config), config)
        return cache[config]

    return get


def split_sizes(builder):
    return {k: v.num_examples for k, v in builder.info.splits.items()}


def examples(builder, split, **kwargs):
    ds = builder.as_dataset(split=split, **kwargs)
    return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(ds)}


def per_class(exs, num_classes):
    return np.bincount([int(ex["label"]) for ex in exs.values()], minlength=num_classes).tolist()


def kept(items, contempt):
    return [i for i in items if i.code < 7 or (contempt and i.code == 7)]


def copy_fake(fake, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(fake[0], manual)
    return manual


def edit_line(path, n, edit):
    """Replaces line n (1-based, the header is line 1) of a text file by edit(line)."""
    lines = path.read_text().splitlines(keepends=True)
    lines[n - 1] = edit(lines[n - 1])
    path.write_text("".join(lines))


def source_rgb(manual, item):
    path = manual / "Manually_Annotated_Images" / item.file
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("config", ["7class", "8class"])
def test_csv_layout_counts_labels_and_features(fake_csv, built, config):
    contempt = config == "8class"
    builder = built(config)
    root, written = fake_csv
    num_classes = 8 if contempt else 7
    assert split_sizes(builder) == {"train": 29 + 2 * contempt, "validation": 14 + 2 * contempt}
    names = labels.CLASS_NAMES_WITH_CONTEMPT if contempt else labels.CLASS_NAMES
    assert builder.info.features["label"].names == list(names)
    meta = builder.info.metadata
    assert meta["layout"] == "csv" and meta["skipped_images"] == 0
    assert meta["dropped_rows"] == (DROPPED_8 if contempt else DROPPED_7)
    assert meta["class_counts"] == {
        "train": TRAIN_8 if contempt else TRAIN_7,
        "validation": VALIDATION_8 if contempt else VALIDATION_7,
    }
    for split in ("train", "validation"):
        got = examples(builder, split)
        assert per_class(got, num_classes) == meta["class_counts"][split]
        want = {i.file: i for i in kept(written[split], contempt)}
        assert {f: int(ex["label"]) for f, ex in got.items()} == {
            f: canonical(i.code) for f, i in want.items()
        }
        for file, ex in got.items():
            item = want[file]
            # Stored as float32: one rounding of a value in [-1, 1].
            assert ex["valence"] == tolerances.approx(item.valence, n=1, scale=1.0)
            assert ex["arousal"] == tolerances.approx(item.arousal, n=1, scale=1.0)
            assert tuple(ex["face_box"]) == item.box and ex["face_box"].dtype == np.int32
            tolerances.assert_close(ex["landmarks"], item.landmarks, n=1)  # stored as float32
            assert ex["image"].shape == source_rgb(root, item).shape
    assert affectnet.OFFICIAL_COUNTS[contempt] == (
        {"train": 287651, "validation": 4000} if contempt else {"train": 283901, "validation": 3500}
    )


def test_official_count_warnings_state_both_numbers(fake_csv, tmp_path, caplog):
    build(fake_csv[0], tmp_path, "8class")
    assert "affectnet: split 'train' has 31 examples; the official count is 287651" in caplog.text
    assert (
        "affectnet: split 'validation' has 16 examples; the official count is 4000" in caplog.text
    )


def test_images_are_stored_as_distributed(fake_csv, built):
    """RGB and gray JPEGs keep their bytes; a PNG is stored losslessly (its pixels unchanged)."""
    root, written = fake_csv
    builder = built("7class")
    raw = examples(builder, "train", decoders={"image": tfds.decode.SkipDecoding()})
    decoded = examples(builder, "train")
    kinds = {"jpeg": 0, "png": 0}
    for item in kept(written["train"], contempt=False):
        path = root / "Manually_Annotated_Images" / item.file
        if item.file.lower().endswith(".jpg"):
            assert raw[item.file]["image"] == path.read_bytes()
            kinds["jpeg"] += 1
        else:
            np.testing.assert_array_equal(decoded[item.file]["image"], source_rgb(root, item))
            kinds["png"] += 1
    assert kinds["jpeg"] > 0 and kinds["png"] > 0
    gray = [
        ex["image"]
        for ex in decoded.values()
        if np.array_equal(ex["image"][..., 0], ex["image"][..., 2])
    ]
    assert gray and all(image.shape[-1] == 3 for image in gray)


@pytest.mark.parametrize("config", ["7class_facebox", "8class_facebox"])
def test_facebox_configs_crop_to_the_csv_box(fake_csv, built, config):
    root, written = fake_csv
    contempt = config.startswith("8")
    builder = built(config)
    assert split_sizes(builder) == {"train": 29 + 2 * contempt, "validation": 14 + 2 * contempt}
    assert builder.info.metadata["face_boxes_clipped"] == 0
    errors, shifted_errors = [], []
    for split in ("train", "validation"):
        got = examples(builder, split)
        for item in kept(written[split], contempt):
            ex = got[item.file]
            x, y, w, h = item.box
            assert ex["image"].shape == (h, w, 3)
            picture = source_rgb(root, item).astype(np.float64)
            errors.append(np.abs(ex["image"] - picture[y : y + h, x : x + w]).mean())
            # The same window moved by a third of the box (inside the picture) does not match.
            dx = w // 3 if x + w + w // 3 <= picture.shape[1] else -min(x, w // 3)
            moved = picture[y : y + h, x + dx : x + dx + w]
            shifted_errors.append(np.abs(ex["image"] - moved).mean())
            assert tuple(ex["face_box"]) == item.box  # the box in the original picture
            tolerances.assert_close(ex["landmarks"], item.landmarks - [x, y], n=2)
    # JPEG at quality 95 (decoded by TensorFlow, the source by PIL) stays within a few levels.
    assert max(errors) < 6.0
    assert np.mean(shifted_errors) > 4 * np.mean(errors)


def test_aligned_config_aligns_by_mtcnn_or_the_csv_landmarks(fake_csv, built):
    """The fake pictures are small cartoons, so MTCNN misses most or all of them: each miss is
    aligned by the CSV's 68 landmarks (every kept fake row has them) and counted, and its stored
    landmarks are exactly the CSV's moved by that alignment."""
    from vit_se.datasets import faces

    _, written = fake_csv
    builder = built("7class_aligned")
    assert split_sizes(builder) == {"train": 29, "validation": 14}
    meta = builder.info.metadata
    from_csv = 0
    for split in ("train", "validation"):
        got = examples(builder, split)
        for item in kept(written[split], False):
            ex = got[item.file]
            assert ex["image"].shape == (affectnet.ALIGNED_SIZE, affectnet.ALIGNED_SIZE, 3)
            m = faces.similarity_transform(
                affectnet.five_points(item.landmarks), faces.template(affectnet.ALIGNED_SIZE)
            )
            # The builder's float64 transform of the same points, stored as float32 (an MTCNN
            # alignment moves them by pixels).
            want = faces.transform_points(m, item.landmarks)
            if np.allclose(
                ex["landmarks"], want, rtol=0, atol=tolerances.atol(np.abs(want).max(), 3)
            ):
                from_csv += 1
    print(f"affectnet/7class_aligned: {meta['face_crop_fallbacks']} of 43 without an MTCNN face")
    assert meta["face_crop_fallbacks"] == meta["face_crop_from_csv_landmarks"] == from_csv
    assert from_csv >= 1


def test_five_points_of_68_landmarks():
    points = np.zeros((68, 2), np.float32)
    points[36:42] = [10, 20]
    points[42:48] = [30, 20]
    points[30] = [20, 30]
    points[48], points[54] = [12, 40], [28, 40]
    tolerances.assert_close(  # means of up to 6 landmarks
        affectnet.five_points(points), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]], n=6
    )
    points[40] = np.nan
    assert affectnet.five_points(points) is None


def test_facebox_reaching_outside_is_clipped_and_one_outside_is_bad(fake_csv, tmp_path, caplog):
    manual = copy_fake(fake_csv, tmp_path)
    root, written = fake_csv
    first, second = kept(written["train"], contempt=False)[:2]
    csv_path = manual / "Manually_Annotated_file_lists" / "training.csv"
    x, y, w, h = first.box
    box = f"{x},{y},{w},{h}"
    edit_line(csv_path, first.line, lambda line: line.replace(box, f"{x - 5},{y},{w + 500},{h}", 1))
    x, y, w, h = second.box
    box = f"{x},{y},{w},{h}"
    edit_line(csv_path, second.line, lambda line: line.replace(box, f"900,{y},{w},{h}", 1))
    with pytest.raises(common.BadImagesError, match="1 unreadable") as e:
        build(manual, tmp_path / "data", "7class_facebox")
    assert f"{second.file}: face box (x=900, y={y}, width={w}, height={h}) lies outside" in str(
        e.value
    )
    builder = build(manual, tmp_path / "data2", "7class_facebox", skip_bad_images=True)
    assert builder.info.metadata["face_boxes_clipped"] == 1
    assert builder.info.metadata["skipped_images"] == 1
    assert split_sizes(builder)["train"] == 28
    picture = source_rgb(root, first)
    x, y, w, h = first.box
    clipped = examples(builder, "train")[first.file]["image"]
    assert clipped.shape == (h, picture.shape[1] - max(0, x - 5), 3)  # right edge clipped


def test_images_read_from_the_zips_as_sent(tmp_path):
    manual = tmp_path / "manual"
    written = fake_data.write_fake_affectnet(manual, layout="csv_zip")
    assert sorted(os.listdir(manual)) == [fake_data.IMAGES_ZIP, fake_data.LISTS_ZIP]
    builder = build(manual, tmp_path / "data", "8class")
    assert split_sizes(builder) == {"train": 31, "validation": 16}
    got = examples(builder, "validation")
    assert {f: int(ex["label"]) for f, ex in got.items()} == {
        i.file: canonical(i.code) for i in kept(written["validation"], contempt=True)
    }
    # The image zip is read member by member: nothing of it was extracted.
    for path, dirs, _ in os.walk(tmp_path / "data"):
        assert "Manually_Annotated_Images" not in dirs, path


def test_missing_image_in_the_zip_is_named(tmp_path):
    import zipfile

    manual = tmp_path / "manual"
    written = fake_data.write_fake_affectnet(manual, layout="csv_zip")
    gone = kept(written["train"], contempt=False)[3]
    archive = manual / fake_data.IMAGES_ZIP
    with zipfile.ZipFile(archive) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in members.items():
            if not name.endswith(gone.file):
                z.writestr(name, data)
    with pytest.raises(common.BadImagesError, match="1 listed image") as e:
        build(manual, tmp_path / "data")
    assert f"training.csv line {gone.line}: " in str(e.value)
    assert f"{fake_data.IMAGES_ZIP}:Manually_Annotated_Images/{gone.file}" in str(e.value)


def test_validation_csv_without_header(tmp_path, caplog):
    manual = tmp_path / "manual"
    written = fake_data.write_fake_affectnet(manual, validation_header=False)
    first = (manual / "Manually_Annotated_file_lists" / "validation.csv").read_text().split(",")[0]
    assert first == written["validation"][0].file  # no header row
    builder = build(manual, tmp_path / "data")
    assert split_sizes(builder) == {"train": 29, "validation": 14}
    assert builder.info.metadata["dropped_rows"]["validation"] == DROPPED_7["validation"]
    assert "affectnet: split 'train' has 29 examples; the official count is 283901" in caplog.text
    assert (
        "affectnet: split 'validation' has 14 examples; the official count is 3500" in caplog.text
    )


@pytest.mark.parametrize("config", ["7class", "8class"])
def test_class_folder_variant(fake_folders, tmp_path, caplog, config):
    root, written = fake_folders
    contempt = config == "8class"
    builder = build(root, tmp_path, config)
    assert split_sizes(builder) == {
        "train": 29 + 2 * contempt,
        "validation": 14 + 2 * contempt,
        "test": 7 + contempt,
    }
    meta = builder.info.metadata
    assert meta["layout"] == "folders"
    assert meta["class_counts"] == {
        "train": TRAIN_8 if contempt else TRAIN_7,
        "validation": VALIDATION_8 if contempt else VALIDATION_7,
        "test": [1] * (8 if contempt else 7),
    }
    assert meta["dropped_rows"] == (
        {"train": {}, "validation": {}, "test": {}}
        if contempt
        else {"train": {"contempt": 2}, "validation": {"contempt": 2}, "test": {"contempt": 1}}
    )
    for split in ("train", "validation", "test"):
        got = examples(builder, split)
        assert per_class(got, 8 if contempt else 7) == meta["class_counts"][split]
        want = {i.file: canonical(i.code) for i in kept(written[split], contempt)}
        assert {f: int(ex["label"]) for f, ex in got.items()} == want
        prefix = {"train": "train/", "validation": "val/", "test": "test/"}[split]
        assert all(f.startswith(prefix) for f in got)
        for ex in got.values():  # the variant carries no annotations: the documented sentinels
            assert np.isnan(ex["valence"]) and np.isnan(ex["arousal"])
            assert tuple(ex["face_box"]) == (-1, -1, -1, -1)
            assert np.isnan(ex["landmarks"]).all() and ex["landmarks"].shape == (68, 2)
    official = 287651 if contempt else 283901
    assert (
        f"split 'train' has {29 + 2 * contempt} examples; the official count is {official}"
        in caplog.text
    )
    assert "split 'test' has" not in caplog.text  # no official size for test/


def test_class_folder_variant_has_no_face_boxes(fake_folders, tmp_path):
    with pytest.raises(
        ValueError, match=r"affectnet/7class_facebox: the class-folder variant .* no face boxes"
    ):
        build(fake_folders[0], tmp_path, "7class_facebox")


def test_class_folder_not_a_code(fake_folders, tmp_path):
    manual = copy_fake(fake_folders, tmp_path)
    shutil.copytree(manual / "train" / "1", manual / "train" / "happy")
    with pytest.raises(
        ValueError, match=r"train/happy: class folder: 'happy' is not an AffectNet code"
    ):
        build(manual, tmp_path / "data")


def test_missing_images_are_named_in_one_error_or_skipped(fake_csv, tmp_path, caplog):
    manual = copy_fake(fake_csv, tmp_path)
    written = fake_csv[1]
    gone = [kept(written["train"], False)[5], kept(written["validation"], False)[0]]
    for item in gone:
        os.remove(manual / "Manually_Annotated_Images" / item.file)
    with pytest.raises(common.BadImagesError, match="affectnet: 2 listed image") as e:
        build(manual, tmp_path / "data")
    message = str(e.value)
    assert "\n" not in message
    for item, csv_file in zip(gone, ("training.csv", "validation.csv"), strict=True):
        assert f"{csv_file} line {item.line}: " in message and item.file in message
    version = str(affectnet.Builder.VERSION)
    assert not (tmp_path / "data" / "affectnet" / "7class" / version).exists()
    builder = build(manual, tmp_path / "data2", skip_bad_images=True)
    assert split_sizes(builder) == {"train": 28, "validation": 13}
    assert builder.info.metadata["skipped_images"] == 2
    assert "affectnet: skipped 2 unreadable image(s)" in caplog.text


def test_unreadable_image_fails_naming_it_or_is_skipped(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    bad = kept(fake_csv[1]["validation"], False)[1]
    path = manual / "Manually_Annotated_Images" / bad.file
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(common.BadImagesError, match=f"1 unreadable.*{bad.file}: cannot decode"):
        build(manual, tmp_path / "data")
    builder = build(manual, tmp_path / "data2", skip_bad_images=True)
    assert split_sizes(builder) == {"train": 29, "validation": 13}


def _fields(line, n, value):
    fields = line.rstrip("\r\n").split(",")
    fields[n] = value
    return ",".join(fields) + "\n"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda line: line.replace(",", ",,", 1), "10 fields, expected 9"),
        (lambda line: _fields(line, 6, "happy"), "expression 'happy' is not an integer code"),
        (lambda line: _fields(line, 6, "11"), "unknown label 11; expected one of 0..10"),
        (
            lambda line: _fields(line, 5, "1.0;2.0;3.0"),
            "facial_landmarks has 3 values, expected 136",
        ),
        (lambda line: _fields(line, 3, "12.5"), "face_width '12.5' is not an integer"),
        (lambda line: _fields(line, 7, "high"), "valence 'high' is not a number"),
    ],
)
def test_malformed_row_is_named_by_line(fake_csv, tmp_path, edit, message):
    manual = copy_fake(fake_csv, tmp_path)
    row = kept(fake_csv[1]["train"], False)[4]
    edit_line(manual / "Manually_Annotated_file_lists" / "training.csv", row.line, edit)
    with pytest.raises(ValueError, match=f"training.csv line {row.line}: {message}"):
        build(manual, tmp_path / "data")


def test_header_lacking_a_column(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    csv_path = manual / "Manually_Annotated_file_lists" / "training.csv"
    edit_line(csv_path, 1, lambda line: line.replace("arousal", "arousals"))
    with pytest.raises(
        ValueError, match=r"training.csv line 1: header .* lacks columns \['arousal'\]"
    ):
        build(manual, tmp_path / "data")


def test_duplicate_rows_are_kept_once(fake_csv, tmp_path, caplog):
    manual = copy_fake(fake_csv, tmp_path)
    csv_path = manual / "Manually_Annotated_file_lists" / "training.csv"
    row = kept(fake_csv[1]["train"], False)[2]
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines + [lines[row.line - 1]]))
    builder = build(manual, tmp_path / "data")
    assert split_sizes(builder)["train"] == 29
    assert builder.info.metadata["duplicate_rows"] == {"train": 1, "validation": 0}
    assert f"skipped lines {len(lines) + 1}" in caplog.text


def test_rar_release_must_be_extracted_first(fake_csv, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(
        fake_csv[0] / "Manually_Annotated_file_lists", manual / "Manually_Annotated_file_lists"
    )
    (manual / "Manually_Annotated.part01.rar").write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(
        FileNotFoundError, match=r"Manually_Annotated.part01.rar .*extract it first \(unrar x"
    ):
        build(manual, tmp_path / "data")


def test_missing_validation_csv(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    os.remove(manual / "Manually_Annotated_file_lists" / "validation.csv")
    with pytest.raises(FileNotFoundError, match=r"validation.csv not found beside the other CSV"):
        build(manual, tmp_path / "data")


def test_missing_and_empty_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="affectnet: manual dir .* does not exist"):
        build(tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="affectnet: manual dir .* is empty"):
        build(tmp_path / "empty", tmp_path / "data")
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=r"neither Manually_Annotated_file_lists/training.csv"
    ):
        build(tmp_path / "other", tmp_path / "data")


def test_fake_data_cli(tmp_path, capsys):
    fake_data.main(["--out", str(tmp_path / "m"), "--layout", "folders", "--test_per_code", "1"])
    out = capsys.readouterr().out
    assert "train: 31 images, per AffectNet code 0..10 [5, 8, 4, 3, 2, 1, 6, 2, 0, 0, 0]" in out
    assert "test: 8 images" in out
    assert sorted(os.listdir(tmp_path / "m" / "val")) == [str(c) for c in range(8)]


def _load_config():
    return importlib.import_module("vit_se.configs.affectnet")


@pytest.mark.parametrize(
    "arg, dataset_config, num_classes, model",
    [
        (None, "7class", 7, "B/16"),
        ("8class", "8class", 8, "B/16"),
        ("8class_facebox", "8class_facebox", 8, "B/16"),
        ("variant=S/16", "7class", 7, "S/16"),
        ("8class,variant=S/16", "8class", 8, "S/16"),
        ("classes=8class_facebox,variant=S/16", "8class_facebox", 8, "S/16"),
    ],
)
def test_config_file(arg, dataset_config, num_classes, model):
    module = _load_config()
    doc = [line.strip() for line in module.__doc__.strip().splitlines()]
    assert any("python -m vit_se.main --config=configs/affectnet.py" in line for line in doc[:4])
    assert "67.49" in module.__doc__ and "63.77" in module.__doc__  # POSTER++ 7 / 8 classes
    config = module.get_config(arg)
    assert config.dataset == "affectnet" and config.dataset_config == dataset_config
    assert config.num_classes == num_classes and config.model.name == model
    assert config.class_balanced
    assert config.test_split == "validation"  # the official validation set, reported
    assert config.val_split.startswith("train[") and config.train_split.startswith("train[")
    assert config.val_split != config.test_split


def test_config_rejects_an_unknown_argument():
    with pytest.raises(ValueError, match="classes='9class': expected one of 7class, 8class"):
        _load_config().get_config("9class")
