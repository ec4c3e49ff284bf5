"""The fer2013 builder on fake data in the distributed formats: splits, labels, FER+, errors."""

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tolerances

from vit_se.datasets import common, labels
from vit_se.datasets.fer2013 import fake_data, ferplus_distribution, ferplus_label
from vit_se.datasets.fer2013 import fer2013_dataset_builder as fer2013_builder

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


HAPPY, SAD, ANGRY = (labels.CLASS_NAMES.index(n) for n in ("happy", "sad", "angry"))


@pytest.mark.parametrize(
    "row, plurality, majority",
    [
        (votes(happiness=6, neutral=3, surprise=1), (HAPPY, None), (HAPPY, None)),
        (votes(happiness=5, neutral=4), (HAPPY, None), (HAPPY, None)),  # 5 of 9 > half
        (votes(anger=4, disgust=3, contempt=3), (ANGRY, None), (None, "no majority")),
        (votes(sadness=5, neutral=5), (None, "tie"), (None, "no majority")),  # 5 of 10 = half
        (votes(contempt=6, happiness=4), (None, "contempt"), (None, "contempt")),
        (votes(unknown=6, sadness=4), (None, "unknown"), (None, "unknown")),
        (votes(NF=10), (None, "NF"), (None, "NF")),
        (votes(), (None, "no votes"), (None, "no votes")),
    ],
)
def test_ferplus_modes_rule(row, plurality, majority):
    assert ferplus_label(row, "plurality") == plurality
    assert ferplus_label(row, "majority") == majority
    assert ferplus_label(row, "probability") == plurality  # probability keeps plurality's rows
    with pytest.raises(ValueError, match="FER\\+ mode 'mean' is not one of plurality"):
        ferplus_label(row, "mean")


@pytest.mark.parametrize(
    "row, want",
    [
        # contempt votes are left out: 6 happy + 2 sad of the 8 basic votes
        (votes(happiness=6, sadness=2, contempt=2), {"happy": 0.75, "sad": 0.25}),
        # unknown and NF too
        (votes(unknown=5, NF=2, fear=1, anger=1), {"fear": 0.5, "angry": 0.5}),
        (
            votes(neutral=7, surprise=2, disgust=1),
            {"neutral": 0.7, "surprise": 0.2, "disgust": 0.1},
        ),
    ],
)
def test_ferplus_distribution(row, want):
    got = ferplus_distribution(row)
    assert got.dtype == np.float32 and got.shape == (7,)
    expected = [want.get(name, 0.0) for name in labels.CLASS_NAMES]
    tolerances.assert_close(got, expected, n=10, scale=1.0)  # float32 shares of <= 10 votes


def test_ferplus_distribution_without_basic_votes():
    assert ferplus_distribution(votes(contempt=4, unknown=3, NF=3)) is None


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


# Rows 0..27 of the fake (train 0-13, public 14-20, private 21-27; label = index in split % 7),
# by vote pattern row % 10 (fake_data.ferplus_votes): 0-4 majority winner, 5 plurality winner
# without a majority, 6 tie, 7 contempt, 8 unknown, 9 NF winner.
MODE_ROWS = {
    "ferplus": {
        "train": [0, 1, 2, 3, 4, 5, 10, 11, 12, 13],
        "public_test": [14, 15, 20],
        "private_test": [21, 22, 23, 24, 25],
    },
    "ferplus_majority": {
        "train": [0, 1, 2, 3, 4, 10, 11, 12, 13],
        "public_test": [14, 20],
        "private_test": [21, 22, 23, 24],
    },
}
MODE_ROWS["ferplus_probability"] = MODE_ROWS["ferplus"]
MODE_DROPPED = {
    "ferplus": {
        "train": {"tie": 1, "contempt": 1, "unknown": 1, "NF": 1},
        "public_test": {"tie": 1, "contempt": 1, "unknown": 1, "NF": 1},
        "private_test": {"tie": 1, "contempt": 1},
    },
    "ferplus_majority": {
        "train": {"no majority": 2, "contempt": 1, "unknown": 1, "NF": 1},
        "public_test": {"no majority": 2, "contempt": 1, "unknown": 1, "NF": 1},
        "private_test": {"no majority": 2, "contempt": 1},
    },
}
MODE_DROPPED["ferplus_probability"] = MODE_DROPPED["ferplus"]


@pytest.mark.parametrize("config", ["ferplus", "ferplus_majority", "ferplus_probability"])
def test_ferplus_modes_keep_exact_rows(fake_csv, tmp_path, config):
    builder = build(fake_csv[0], tmp_path, config)
    assert split_sizes(builder) == {"train": 10, "public_test": 3, "private_test": 5} | (
        {"train": 9, "public_test": 2, "private_test": 4} if config == "ferplus_majority" else {}
    )
    for split, rows in MODE_ROWS[config].items():
        got = examples(builder, split)
        offset = {"train": 0, "public_test": 14, "private_test": 21}[split]
        assert {row: int(ex["label"]) for row, ex in got.items()} == {
            row: (row - offset) % 7 for row in rows
        }
    assert builder.info.metadata["dropped_rows"] == MODE_DROPPED[config]
    has_distribution = "label_distribution" in builder.info.features
    assert has_distribution == (config == "ferplus_probability")


def test_ferplus_probability_distributions(fake_csv, tmp_path):
    builder = build(fake_csv[0], tmp_path, "ferplus_probability")
    feature = builder.info.features["label_distribution"]
    assert feature.shape == (7,) and feature.dtype == np.float32
    got = {row: ex for split in COUNTS for row, ex in examples(builder, split).items()}
    for ex in got.values():
        dist = ex["label_distribution"]
        assert dist.dtype == np.float32 and float(dist.sum()) == tolerances.approx(1.0, n=7)
        assert int(np.argmax(dist)) == int(ex["label"]) and np.sum(dist == dist.max()) == 1
    # By hand from fake_data.ferplus_votes (order angry disgust fear happy sad surprise neutral):
    want = {
        0: [6, 2, 0, 0, 0, 0, 0],  # angry 6, disgust 2 (unknown 1 left out)
        1: [0, 7, 2, 0, 0, 0, 0],  # disgust 7, fear 2
        5: [0, 0, 0, 0, 0, 4, 3],  # surprise 4, neutral 3 (contempt 2, unknown 1 left out)
        13: [2, 0, 0, 0, 0, 0, 6],  # neutral 6, angry 2
        15: [0, 4, 3, 0, 0, 0, 0],  # disgust 4, fear 3 (contempt 2, unknown 1 left out)
    }
    for row, counts in want.items():
        want = np.array(counts) / sum(counts)
        tolerances.assert_close(got[row]["label_distribution"], want, n=10, scale=1.0)


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
    sad = sorted(os.listdir(manual / "test" / "sad"))
    os.rename(manual / "test" / "sad" / sad[0], manual / "test" / "sad" / "Test_1.jpg")
    os.rename(manual / "test" / "sad" / sad[1], manual / "test" / "sad" / "img2.png")
    with pytest.raises(common.LayoutError) as e:
        build(manual, tmp_path / "data", "folders")
    assert str(e.value) == (
        f"fer2013/folders: 2 image(s) under {manual} that the layout cannot place "
        "(test/<class>/ images must be named PublicTest_* or PrivateTest_*, and every image "
        "must be in a class folder): test/sad/Test_1.jpg, test/sad/img2.png"
    )


def test_folders_name_at_most_five_unplaceable_images_in_one_line(fake_folders, tmp_path):
    manual = copy_fake(fake_folders, tmp_path)
    for i in range(7):
        shutil.copy(
            manual / fake_folders[1]["train"][0][0], manual / "test" / "happy" / f"x{i}.jpg"
        )
    shutil.copy(manual / fake_folders[1]["train"][0][0], manual / "train" / "loose.jpg")
    with pytest.raises(common.LayoutError) as e:
        fer2013_builder.list_folders(str(manual))
    text = str(e.value)
    assert "\n" not in text and text.startswith("fer2013/folders: 8 image(s) under ")
    assert text.endswith(
        ": train/loose.jpg, test/happy/x0.jpg, test/happy/x1.jpg, test/happy/x2.jpg, "
        "test/happy/x3.jpg and 3 more"
    )
    os.remove(manual / "train" / "loose.jpg")
    for i in range(7):
        os.remove(manual / "test" / "happy" / f"x{i}.jpg")
    assert len(fer2013_builder.list_folders(str(manual))["public_test"]) == COUNTS["public_test"]


def test_folders_other_files_are_skipped_with_one_warning_naming_them(
    fake_folders, tmp_path, caplog
):
    manual = copy_fake(fake_folders, tmp_path)
    (manual / "train" / "angry" / "Thumbs.db").write_bytes(b"")
    (manual / "test" / "README.txt").write_text("")
    (manual / "test" / "fear" / "more").mkdir()
    (manual / "test" / "sad" / ".DS_Store").write_bytes(b"")  # hidden: not even named
    with caplog.at_level("WARNING"):
        items = fer2013_builder.list_folders(str(manual))
    assert {split: len(v) for split, v in items.items()} == COUNTS
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"fer2013/folders: skipped 3 file(s) or folder(s) that are not images in class folders "
        f"under {manual}: train/angry/Thumbs.db, test/README.txt, test/fear/more/"
    ]


@pytest.mark.parametrize(
    "prefix, split", [("PublicTest_", "public_test"), ("PrivateTest_", "private_test")]
)
def test_folders_missing_test_split_is_named(fake_folders, tmp_path, prefix, split):
    manual = copy_fake(fake_folders, tmp_path)
    for path in (manual / "test").glob(f"*/{prefix}*"):
        path.unlink()
    with pytest.raises(common.LayoutError) as e:
        build(manual, tmp_path / "data", "folders")  # not tfds' "No examples were yielded"
    assert str(e.value) == (
        f"fer2013/folders: split {split!r} has no images: expected test/<class>/{prefix}*.jpg "
        f"under {manual}"
    )


def test_folders_unreadable_images(fake_folders, tmp_path, caplog):
    manual = copy_fake(fake_folders, tmp_path)
    path = manual / fake_folders[1]["private_test"][0][0]
    path.write_bytes(path.read_bytes()[:80])
    with pytest.raises(common.BadImagesError, match=f"1 unreadable.*{path.name}"):
        build(manual, tmp_path / "data", "folders")
    builder = build(manual, tmp_path / "data2", "folders", skip_bad_images=True)
    assert split_sizes(builder) == dict(COUNTS, private_test=COUNTS["private_test"] - 1)
    assert "fer2013: split 'private_test' has 6 examples; the official count is 3589" in caplog.text
