"""The fer2013 builder on fake data in the distributed formats: splits, labels, FER+, errors."""

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_se.datasets import common, labels
from vit_se.datasets.fer2013 import fake_data, ferplus_label

tfds.disable_progress_bar()
COUNTS = {"train": 14, "public_test": 7, "private_test": 7}


def write(root, **kwargs):
    return fake_data.write_fake_fer2013(root, *COUNTS.values(), **kwargs)


@pytest.fixture(scope="module")
def fake_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer_csv")
    return root, write(root, ferplus=True)


@pytest.fixture(scope="module")
def fake_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer_folders")
    return root, write(root, layout="folders")


def build(manual_dir, data_dir, config="csv", **kwargs):
    builder = tfds.builder("fer2013", data_dir=os.fspath(data_dir), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


def split_sizes(builder):
    return {k: v.num_examples for k, v in builder.info.splits.items()}


def examples(builder, split, key="row"):
    return {
        ex[key].decode() if key == "file_name" else int(ex[key]): ex
        for ex in tfds.as_numpy(builder.as_dataset(split=split))
    }


def copy_fake(fake, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(fake[0], manual)
    return manual


def edit_line(path, n, edit):
    """Replaces line n (1-based, header is line 1) of a text file by edit(line)."""
    lines = path.read_text().splitlines(keepends=True)
    lines[n - 1] = edit(lines[n - 1])
    path.write_text("".join(lines))


def votes(**counts):
    return [counts.get(c, 0) for c in labels.FERPLUS_COLUMNS]


@pytest.mark.parametrize(
    "row, want",
    [
        (votes(happiness=6, neutral=3, surprise=1), (labels.CLASS_NAMES.index("happy"), None)),
        (votes(anger=4, disgust=3, contempt=3), (labels.CLASS_NAMES.index("angry"), None)),
        (votes(fear=3, sadness=3, neutral=2, unknown=2), (None, "tie")),
        (votes(contempt=5, neutral=4, happiness=1), (None, "contempt")),
        (votes(unknown=6, sadness=4), (None, "unknown")),
        (votes(NF=10), (None, "NF")),
        (votes(), (None, "no votes")),
        (votes(neutral=1), (labels.CLASS_NAMES.index("neutral"), None)),
    ],
)
def test_ferplus_rule(row, want):
    assert ferplus_label(row) == want


def test_ferplus_columns_map_to_canonical_labels():
    expected = {
        "neutral": "neutral",
        "happiness": "happy",
        "surprise": "surprise",
        "sadness": "sad",
    }
    expected |= {"anger": "angry", "disgust": "disgust", "fear": "fear"}
    for column, name in expected.items():
        label, _ = ferplus_label(votes(**{column: 5}))
        assert labels.CLASS_NAMES[label] == name


def test_csv(fake_csv, tmp_path, caplog):
    root, written = fake_csv
    builder = build(root, tmp_path)
    assert split_sizes(builder) == COUNTS
    assert builder.info.features["label"].names == list(labels.CLASS_NAMES)
    assert builder.info.features["image"].shape == (48, 48, 1)
    for split in COUNTS:
        got = examples(builder, split)
        assert {row: int(ex["label"]) for row, ex in got.items()} == {
            row: label for row, label, _ in written[split]
        }
        assert all(ex["image"].dtype == np.uint8 for ex in got.values())
    assert "split 'train' has 14 examples; the official count is 28709" in caplog.text
    assert "split 'private_test' has 7 examples; the official count is 3589" in caplog.text


def test_csv_pixels_round_trip(fake_csv, tmp_path):
    builder = build(fake_csv[0], tmp_path)
    with open(fake_csv[0] / "fer2013.csv") as f:
        second_row = f.read().splitlines()[2].split(",")[1]
    image = examples(builder, "train")[1]["image"]
    np.testing.assert_array_equal(image.ravel(), np.array(second_row.split(), np.uint8))


def test_csv_from_the_tar_gz(tmp_path):
    write(tmp_path / "manual", archive=True)
    assert os.listdir(tmp_path / "manual") == ["fer2013.tar.gz"]
    assert split_sizes(build(tmp_path / "manual", tmp_path / "data")) == COUNTS


def test_ferplus(fake_csv, tmp_path, caplog):
    caplog.set_level("INFO", logger="absl")
    root, written = fake_csv
    builder = build(root, tmp_path, "ferplus")
    for split in COUNTS:
        kept = {row: plus for row, _, plus in written[split] if plus is not None}
        got = examples(builder, split)
        assert {row: int(ex["label"]) for row, ex in got.items()} == kept
        for row, ex in got.items():
            np.testing.assert_array_equal(ex["votes"], fake_data.ferplus_votes(row, ex["label"]))
    # Rows 0..27 in file order: patterns 6, 7, 8, 9 (tie, contempt, unknown, NF) are dropped.
    dropped = builder.info.metadata["dropped_rows"]
    assert dropped["train"] == {"tie": 1, "contempt": 1, "unknown": 1, "NF": 1}
    assert sum(dropped["public_test"].values()) + sum(dropped["private_test"].values()) == 6
    assert "fer2013/ferplus: split 'train': 4 rows dropped" in caplog.text


def test_ferplus_without_fer2013new(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    os.remove(manual / "fer2013new.csv")
    with pytest.raises(FileNotFoundError, match=r"FER\+ labels .*/manual/fer2013new.csv not found"):
        build(manual, tmp_path / "data", "ferplus")


def test_ferplus_row_order_must_match(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    edit_line(manual / "fer2013new.csv", 2, lambda line: line.replace("Training", "PublicTest"))
    with pytest.raises(ValueError, match=r"fer2013new.csv line 2: Usage 'PublicTest' differs"):
        build(manual, tmp_path / "data", "ferplus")


@pytest.mark.parametrize("archive", [False, True])
def test_folders(fake_folders, tmp_path, archive):
    root, written = fake_folders
    if archive:
        root = tmp_path / "manual"
        written = write(root, layout="folders", archive=True)
    builder = build(root, tmp_path / "data", "folders")
    assert split_sizes(builder) == COUNTS
    for split in COUNTS:
        got = examples(builder, split, "file_name")
        assert {k: int(ex["label"]) for k, ex in got.items()} == {
            k: v for k, v, _ in written[split]
        }
        prefix = {"train": "train/", "public_test": "test/", "private_test": "test/"}[split]
        assert all(k.startswith(prefix) for k in got)
        assert all(ex["image"].shape == (48, 48, 1) for ex in got.values())
    names = examples(builder, "public_test", "file_name")
    assert all(os.path.basename(k).startswith("PublicTest_") for k in names)


def test_missing_and_empty_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="fer2013: manual dir .* does not exist"):
        build(tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="fer2013: manual dir .* is empty"):
        build(tmp_path / "empty", tmp_path / "data")


def test_missing_csv(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    os.remove(manual / "fer2013.csv")
    with pytest.raises(FileNotFoundError, match=r"label file .*fer2013.csv not found"):
        build(manual, tmp_path / "data")


def test_unknown_emotion_code(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    edit_line(manual / "fer2013.csv", 3, lambda line: "7" + line[1:])
    with pytest.raises(ValueError, match=r"fer2013.csv line 3 \(row 1\): unknown label 7"):
        build(manual, tmp_path / "data")


def test_unknown_usage(fake_csv, tmp_path):
    manual = copy_fake(fake_csv, tmp_path)
    edit_line(manual / "fer2013.csv", 4, lambda line: line.replace("Training", "Validation"))
    with pytest.raises(ValueError, match=r"line 4 \(row 2\): Usage 'Validation' is not one of"):
        build(manual, tmp_path / "data")


def test_malformed_rows_fail_naming_each_or_are_skipped_when_asked(fake_csv, tmp_path, caplog):
    manual = copy_fake(fake_csv, tmp_path)
    edit_line(manual / "fer2013.csv", 5, lambda line: line.replace(",", ",7 ", 1))  # 2305 values
    edit_line(manual / "fer2013.csv", 20, lambda line: re.sub(r",\d+ ", ",999 ", line, count=1))
    with pytest.raises(common.BadImagesError, match="2 unreadable") as e:
        build(manual, tmp_path / "data")
    assert "fer2013.csv line 5 (row 3): 2305 pixel values, expected 2304" in str(e.value)
    assert "fer2013.csv line 20 (row 18): pixel values outside 0..255" in str(e.value)
    builder = build(manual, tmp_path / "data2", skip_bad_images=True)
    assert split_sizes(builder) == dict(COUNTS, train=COUNTS["train"] - 1, public_test=6)
    assert builder.info.metadata["skipped_images"] == 2
    assert "fer2013: skipped 2 unreadable image(s)" in caplog.text


def test_folders_unknown_class(fake_folders, tmp_path):
    manual = copy_fake(fake_folders, tmp_path)
    shutil.copytree(manual / "train" / "happy", manual / "train" / "contempt")
    with pytest.raises(ValueError, match=r"train/contempt: class folder: unknown label 'contempt'"):
        build(manual, tmp_path / "data", "folders")


def test_folders_test_name_without_prefix(fake_folders, tmp_path):
    manual = copy_fake(fake_folders, tmp_path)
    first = sorted(os.listdir(manual / "test" / "sad"))[0]
    os.rename(manual / "test" / "sad" / first, manual / "test" / "sad" / "Test_1.jpg")
    with pytest.raises(ValueError, match="sad/Test_1.jpg: test image name starts with neither"):
        build(manual, tmp_path / "data", "folders")


def test_folders_unreadable_images(fake_folders, tmp_path, caplog):
    manual = copy_fake(fake_folders, tmp_path)
    path = manual / fake_folders[1]["private_test"][0][0]
    path.write_bytes(path.read_bytes()[:80])
    with pytest.raises(common.BadImagesError, match=f"1 unreadable.*{path.name}"):
        build(manual, tmp_path / "data", "folders")
    builder = build(manual, tmp_path / "data2", "folders", skip_bad_images=True)
    assert split_sizes(builder) == dict(COUNTS, private_test=COUNTS["private_test"] - 1)
    assert "fer2013: split 'private_test' has 6 examples; the official count is 3589" in caplog.text
