"""The ck_plus builder on fake data in the original layout: protocol, splits, folds, errors."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vit_se.datasets import common, labels
from vit_se.datasets.ck_plus import (
    Builder,
    ck_plus_dataset_builder,
    fake_data,
    fold_splits,
    read_emotion_file,
    select_frames,
)

tfds.disable_progress_bar()
CONFIGS = {c.name: c for c in Builder.BUILDER_CONFIGS}
NEUTRAL = labels.CLASS_NAMES.index("neutral")
CONTEMPT = 2  # CK+ code


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck_manual")
    return root, fake_data.write_fake_ck_plus(root)


def build(manual_dir, data_dir, config="7class", **kwargs):
    builder = tfds.builder("ck_plus", data_dir=os.fspath(data_dir), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


def all_examples(builder):
    out = {}
    for k in range(10):
        for ex in tfds.as_numpy(builder.as_dataset(split=f"fold{k}")):
            out[ex["file_name"].decode()] = dict(ex, fold=k)
    return out


def subject_folds():
    with open(ck_plus_dataset_builder.FOLDS_FILE) as f:
        return {s: k for k, fold in enumerate(json.load(f)["folds"]) for s in fold}


def expected_frames(sequences, config):
    """{file name: canonical label} the protocol should produce, written out independently."""
    out = {}
    for s in sequences:
        if s.code is None or (s.code == CONTEMPT and not config.contempt):
            continue
        label = labels.CK_PLUS_CODES[s.code]
        frames = {f: label for f in range(s.num_frames - 2, s.num_frames + 1)}
        if config.first_frame_neutral and s.num_frames >= 4:
            frames[1] = NEUTRAL
        for f, lab in frames.items():
            out[f"{s.subject}_{s.sequence}_{f:08d}.png"] = lab
    return out


def test_frame_protocol_on_a_sequence_of_known_length():
    assert select_frames(10, first_frame_neutral=False) == [(7, False), (8, False), (9, False)]
    assert select_frames(10, first_frame_neutral=True) == [
        (0, True),
        (7, False),
        (8, False),
        (9, False),
    ]
    # Too short for a separate neutral frame: no frame gets two labels.
    assert select_frames(3, first_frame_neutral=True) == [(0, False), (1, False), (2, False)]
    assert select_frames(2, first_frame_neutral=False) == [(0, False), (1, False)]


def test_emotion_codes_map_to_canonical_labels(tmp_path):
    want = {0: "neutral", 1: "angry", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy"}
    want |= {6: "sad", 7: "surprise"}
    for code, name in want.items():
        path = tmp_path / f"S005_001_00000011_emotion_{code}.txt"
        path.write_text(f"   {float(code):.7e}\n")
        got = labels.CK_PLUS_CODES[read_emotion_file(path)]
        assert labels.CLASS_NAMES_WITH_CONTEMPT[got] == name


def test_fold_file_has_123_subjects_each_in_one_fold():
    folds = subject_folds()
    assert len(folds) == 123
    assert sorted(folds)[:3] == ["S005", "S010", "S011"]
    ordered = sorted(folds)
    assert all(folds[s] == i % 10 for i, s in enumerate(ordered))


def test_fold_splits():
    assert fold_splits(9) == ("+".join(f"fold{k}" for k in range(9)), "fold9")


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.grid
def test_config_builds_from_fake_layout(fake, tmp_path, config_name):
    root, sequences = fake
    config = CONFIGS[config_name]
    builder = build(root, tmp_path, config_name)
    want = expected_frames(sequences, config)
    got = all_examples(builder)
    assert {name: int(ex["label"]) for name, ex in got.items()} == want

    names = labels.CLASS_NAMES_WITH_CONTEMPT if config.contempt else labels.CLASS_NAMES
    assert builder.info.features["label"].names == list(names)
    shape = (config.face_size,) * 2 if config.face_size else (48, 48) if config.ck48 else (49, 64)
    folds = subject_folds()
    for name, ex in got.items():
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == shape + (1,)
        subject, sequence, frame = name[:-4].split("_")
        assert ex["subject_id"].decode() == subject
        assert ex["sequence_id"].decode() == f"{subject}_{sequence}"
        assert ex["frame_index"] == int(frame)
        assert ex["fold"] == folds[subject]  # so no subject is in two folds
    per_fold = {f"fold{k}": 0 for k in range(10)}
    for ex in got.values():
        per_fold[f"fold{ex['fold']}"] += 1
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == per_fold
    if config.face_size:  # every frame went through the cropper; misses are counted
        fallbacks = builder.info.metadata["face_crop_fallbacks"]
        print(f"{config_name}: no face found in {fallbacks} of {len(got)} fake frames")
        assert 0 <= fallbacks <= len(got)


def test_known_sequence_frames_and_rgb_frames_as_gray(fake, tmp_path):
    root, sequences = fake
    first = sequences[0]
    assert (first.subject, first.sequence, first.num_frames, first.code) == ("S005", "001", 10, 1)
    got = all_examples(build(root, tmp_path, "7class_neutral"))
    frames = {
        int(ex["frame_index"]): int(ex["label"])
        for ex in got.values()
        if ex["sequence_id"] == b"S005_001"
    }
    assert frames == {1: NEUTRAL, 8: 0, 9: 0, 10: 0}  # code 1 = anger -> angry (0)
    rgb = next(s for s in sequences if s.rgb and s.code not in (None, CONTEMPT))
    name = f"{rgb.subject}_{rgb.sequence}_{rgb.num_frames:08d}.png"
    with Image.open(root / "cohn-kanade-images" / rgb.subject / rgb.sequence / name) as stored:
        assert stored.mode == "RGB"
        luma = np.asarray(stored.convert("L"))
    np.testing.assert_array_equal(got[name]["image"][..., 0], luma)


def test_train_test_of_a_fold_are_subject_disjoint(fake, tmp_path):
    builder = build(fake[0], tmp_path, "8class")
    train, test = fold_splits(4)
    subjects = {
        split: {ex["subject_id"] for ex in tfds.as_numpy(builder.as_dataset(split=split))}
        for split in (train, test)
    }
    assert subjects[test] and not subjects[train] & subjects[test]


def test_count_warnings_state_both_numbers(fake, tmp_path, caplog):
    build(fake[0], tmp_path, "7class")
    labelled = sum(s.code is not None for s in fake[1])
    assert f"'labelled sequences' has {labelled} examples; the official count is 327" in caplog.text
    assert "'all (7class)' has 51 examples; the official count is 927" in caplog.text


def test_reads_the_original_archives(fake, tmp_path):
    root, _ = fake
    manual = tmp_path / "manual"
    manual.mkdir()
    for archive, folder in [
        ("extended-cohn-kanade-images.zip", "cohn-kanade-images"),
        ("Emotion_labels.zip", "Emotion"),
    ]:
        with zipfile.ZipFile(manual / archive, "w") as z:
            for dirpath, _, files in os.walk(root / folder):
                for name in files:
                    path = os.path.join(dirpath, name)
                    z.write(path, os.path.relpath(path, root))
    want = build(root, tmp_path / "a").info.splits
    got = build(manual, tmp_path / "b").info.splits
    assert {k: v.num_examples for k, v in got.items()} == {
        k: v.num_examples for k, v in want.items()
    }


def copy_fake(fake, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(fake[0], manual)
    return manual


def test_missing_and_empty_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual dir .*nowhere.* does not exist"):
        build(tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        build(tmp_path / "empty", tmp_path / "data")


def test_missing_emotion_folder(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    shutil.rmtree(manual / "Emotion")
    with pytest.raises(FileNotFoundError, match="no Emotion/ label folder .*Emotion_labels.zip"):
        build(manual, tmp_path / "data")


def test_missing_image_folder(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    shutil.rmtree(manual / "cohn-kanade-images")
    with pytest.raises(FileNotFoundError, match="no cohn-kanade-images/ folder"):
        build(manual, tmp_path / "data")


def test_emotion_code_outside_known_codes(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    path = manual / "Emotion" / "S005" / "001" / "S005_001_00000010_emotion.txt"
    path.write_text("   9.0000000e+00\n")
    with pytest.raises(
        ValueError, match=r"S005_001_00000010_emotion\.txt: unknown label 9; expected"
    ):
        build(manual, tmp_path / "data")
    path.write_text("three\n")
    with pytest.raises(ValueError, match=r"S005_001_00000010_emotion\.txt: expected one float"):
        build(manual, tmp_path / "data")


def test_unknown_ck48_class_folder(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    shutil.copytree(manual / "CK+48" / "happy", manual / "CK+48" / "neutral")
    with pytest.raises(ValueError, match=r"CK\+48/neutral: unknown label 'neutral'"):
        build(manual, tmp_path / "data", "ck48_7class")


def test_unreadable_frames_fail_naming_each_or_are_skipped_when_asked(fake, tmp_path, caplog):
    manual = copy_fake(fake, tmp_path)
    seq = manual / "cohn-kanade-images" / "S005" / "001"
    good = (seq / "S005_001_00000010.png").read_bytes()
    (seq / "S005_001_00000010.png").write_bytes(good[: len(good) // 2])  # truncated
    (seq / "S005_001_00000009.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(common.BadImagesError, match="2 unreadable") as err:
        build(manual, tmp_path / "data")
    assert "S005_001_00000010.png" in str(err.value) and "S005_001_00000009.png" in str(err.value)

    builder = build(manual, tmp_path / "data2", skip_bad_images=True)
    assert sum(s.num_examples for s in builder.info.splits.values()) == 51 - 2
    assert builder.info.metadata["skipped_images"] == 2
    assert "skipped 2 unreadable image(s)" in caplog.text


def test_subject_missing_from_fold_file_is_warned(fake, tmp_path, caplog):
    manual = copy_fake(fake, tmp_path)
    for top in ("cohn-kanade-images", "Emotion"):
        src, dst = manual / top / "S005" / "001", manual / top / "S777" / "001"
        dst.mkdir(parents=True)
        for f in os.listdir(src):
            shutil.copy(src / f, dst / f.replace("S005", "S777"))
    builder = build(manual, tmp_path / "data")
    assert "subject S777 is not in the shipped fold file; assigned to fold" in caplog.text
    assert sum(s.num_examples for s in builder.info.splits.values()) == 51 + 3
