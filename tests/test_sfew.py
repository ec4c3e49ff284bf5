"""The sfew builder on fake data in the distributed layouts: splits, labels, features, errors."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_se.datasets import common, labels
from vit_se.datasets.sfew import fake_data

tfds.disable_progress_bar()
NUM_TRAIN, NUM_VAL, FRAME, FACE = 7, 7, 40, 24
SPLITS = {"train": NUM_TRAIN, "validation": NUM_VAL}


def write(root, variant="frames", archive=False):
    size = FRAME if variant == "frames" else FACE
    return fake_data.write_fake_sfew(
        root, NUM_TRAIN, NUM_VAL, num_test=2, size=size, variant=variant, archive=archive
    )


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfew_frames")
    return root, write(root)


def build(manual_dir, data_dir, config, **kwargs):
    builder = tfds.builder("sfew", data_dir=os.fspath(data_dir), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


def split_sizes(builder):
    return {k: v.num_examples for k, v in builder.info.splits.items()}


def examples(builder, split):
    return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def check_labels(builder, written):
    for split in SPLITS:
        got = examples(builder, split)
        assert {name: int(ex["label"]) for name, ex in got.items()} == dict(written[split])
        for name, ex in got.items():  # the folder name decides, through SFEW_FOLDERS
            assert labels.CLASS_NAMES[ex["label"]] == name.split("/")[0].lower()


def copy_frames(frames, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(frames[0], manual)
    return manual


def test_frames(frames, tmp_path, caplog):
    builder = build(frames[0], tmp_path, "frames")
    assert split_sizes(builder) == SPLITS  # Test/ (unlabelled) is not read
    assert builder.info.features["label"].names == list(labels.CLASS_NAMES)
    check_labels(builder, frames[1])
    image = examples(builder, "train")[frames[1]["train"][0][0]]["image"]
    assert image.dtype == np.uint8 and image.shape == (FRAME, FRAME * 5 // 4, 3)
    assert "split 'train' has 7 examples; the official count is 958" in caplog.text
    assert "split 'validation' has 7 examples; the official count is 436" in caplog.text


def test_frames_face_crop(frames, tmp_path):
    builder = build(frames[0], tmp_path, "frames_face_crop")
    assert split_sizes(builder) == SPLITS
    assert builder.info.features["image"].shape == (224, 224, 3)
    check_labels(builder, frames[1])
    assert 0 <= builder.info.metadata["face_crop_fallbacks"] <= NUM_TRAIN + NUM_VAL


def test_frames_aligned(frames, tmp_path):
    builder = build(frames[0], tmp_path, "frames_aligned")
    assert split_sizes(builder) == SPLITS
    assert builder.info.features["image"].shape == (224, 224, 3)
    check_labels(builder, frames[1])
    fallbacks = builder.info.metadata["face_crop_fallbacks"]
    print(f"sfew/frames_aligned: no face found in {fallbacks} of {NUM_TRAIN + NUM_VAL} fake frames")
    assert 0 <= fallbacks <= NUM_TRAIN + NUM_VAL


def test_aligned_from_the_distributed_zips(tmp_path, caplog):
    written = write(tmp_path / "manual", "aligned", archive=True)
    assert sorted(os.listdir(tmp_path / "manual")) == [
        "Test_Aligned_Faces.zip",
        "Train_Aligned_Faces.zip",
        "Val_Aligned_Faces_new.zip",
    ]
    builder = build(tmp_path / "manual", tmp_path / "data", "aligned")
    assert split_sizes(builder) == SPLITS
    check_labels(builder, written)
    assert builder.info.features["image"].shape == (None, None, 3)
    image = examples(builder, "validation")[written["validation"][0][0]]["image"]
    assert image.shape == (FACE, FACE, 3)
    assert "split 'train' has 7 aligned faces; the official count is 958 frames" in caplog.text
    assert "aligned release legitimately has fewer" in caplog.text


def test_aligned_folders_inside_the_split_folders(frames, tmp_path):
    """Train/Train_Aligned_Faces/<Class> beside Train/<Class>: each config reads its own."""
    manual = copy_frames(frames, tmp_path)
    write(tmp_path / "faces", "aligned")
    shutil.move(tmp_path / "faces" / "Train_Aligned_Faces", manual / "Train")
    shutil.move(tmp_path / "faces" / "Val_Aligned_Faces_new", manual / "Val")
    aligned = build(manual, tmp_path / "data", "aligned")
    assert split_sizes(aligned) == SPLITS
    assert {ex["image"].shape for ex in examples(aligned, "train").values()} == {(FACE, FACE, 3)}
    frames_builder = build(manual, tmp_path / "data", "frames")
    assert split_sizes(frames_builder) == SPLITS
    shapes = {ex["image"].shape for ex in examples(frames_builder, "train").values()}
    assert shapes == {(FRAME, FRAME * 5 // 4, 3)}


def test_aligned_falls_back_to_plain_split_folders(frames, tmp_path):
    assert split_sizes(build(frames[0], tmp_path, "aligned")) == SPLITS


def test_frames_from_zips(tmp_path):
    write(tmp_path / "manual", "frames", archive=True)
    assert split_sizes(build(tmp_path / "manual", tmp_path / "data", "frames")) == SPLITS


def test_missing_and_empty_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="sfew: manual dir .* does not exist"):
        build(tmp_path / "nowhere", tmp_path / "data", "frames")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="sfew: manual dir .* is empty"):
        build(tmp_path / "empty", tmp_path / "data", "frames")


def test_missing_split_folder(frames, tmp_path):
    manual = copy_frames(frames, tmp_path)
    shutil.rmtree(manual / "Val")
    with pytest.raises(
        FileNotFoundError, match=r"no class folders for Val: expected .*Val/<Class>"
    ):
        build(manual, tmp_path / "data", "frames")
    with pytest.raises(FileNotFoundError, match=r"expected .*Val_Aligned_Faces_new/<Class>"):
        build(manual, tmp_path / "data", "aligned")


def test_unknown_class_folder(frames, tmp_path):
    manual = copy_frames(frames, tmp_path)
    shutil.copytree(manual / "Train" / "Happy", manual / "Train" / "Contempt")
    with pytest.raises(ValueError, match=r"Train/Contempt: class folder: unknown label 'Contempt'"):
        build(manual, tmp_path / "data", "frames")


def test_unreadable_images_fail_naming_each_or_are_skipped_when_asked(frames, tmp_path, caplog):
    manual = copy_frames(frames, tmp_path)
    bad = [
        manual / "Train" / frames[1]["train"][1][0],
        manual / "Val" / frames[1]["validation"][0][0],
    ]
    bad[0].write_bytes(bad[0].read_bytes()[:60])  # truncated
    bad[1].write_bytes(b"not a png")
    with pytest.raises(common.BadImagesError, match="2 unreadable") as e:
        build(manual, tmp_path / "data", "frames")
    assert all(os.fspath(path) in str(e.value) for path in bad)
    builder = build(manual, tmp_path / "data2", "frames", skip_bad_images=True)
    assert split_sizes(builder) == {"train": NUM_TRAIN - 1, "validation": NUM_VAL - 1}
    assert builder.info.metadata["skipped_images"] == 2
    assert "sfew: skipped 2 unreadable image(s)" in caplog.text
