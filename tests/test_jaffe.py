"""The jaffe builder on fake data in the original layout: splits, labels, features, errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TIMEOUT
from PIL import Image

from vit_se.datasets import common, labels
from vit_se.datasets.jaffe import fake_data, fold_splits, jaffe_dataset_builder, parse_file_name

tfds.disable_progress_bar()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES_PER_CLASS = 3  # 21 images over 10 posers round-robin: KA gets 3, the others 2.
SIZE = 40


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("jaffe_manual")
    written = fake_data.write_fake_jaffe(root, images_per_class=IMAGES_PER_CLASS, size=SIZE)
    return root, written


def build(manual_dir, data_dir, config="original", **kwargs):
    builder = tfds.builder("jaffe", data_dir=os.fspath(data_dir), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


def examples(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


def poser_folds():
    with open(jaffe_dataset_builder.FOLDS_FILE) as f:
        return {s: k for k, fold in enumerate(json.load(f)["folds"]) for s in fold}


def test_file_names_map_to_canonical_labels():
    expected = {"AN": "angry", "DI": "disgust", "FE": "fear", "HA": "happy", "SA": "sad"}
    expected |= {"SU": "surprise", "NE": "neutral"}
    for code, name in expected.items():
        poser, got_code, label = parse_file_name(f"KA.{code}1.39.tiff")
        assert (poser, got_code, labels.CLASS_NAMES[label]) == ("KA", code, name)


def test_fold_file_is_one_poser_per_fold():
    folds = poser_folds()
    assert sorted(folds) == list(fake_data.POSERS)
    assert sorted(folds.values()) == list(range(10))


def test_fold_splits():
    train, test = fold_splits(3)
    assert test == "fold3"
    assert train.split("+") == [f"fold{k}" for k in range(10) if k != 3]
    with pytest.raises(ValueError, match="out of range"):
        fold_splits(10)


def test_original_config(fake, tmp_path, caplog):
    root, written = fake
    builder = build(root, tmp_path)
    folds = poser_folds()
    want = {f"fold{k}": 0 for k in range(10)}
    for image in written:
        want[f"fold{folds[image.poser]}"] += 1
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == want
    assert builder.info.features["label"].names == list(labels.CLASS_NAMES)
    assert builder.info.metadata["skipped_images"] == 0

    by_name = {w.file_name: w for w in written}
    seen = {}
    for k in range(10):
        for ex in examples(builder, f"fold{k}"):
            name = ex["file_name"].decode()
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (SIZE, SIZE, 1)
            assert ex["label"] == by_name[name].label
            assert ex["subject_id"].decode() == by_name[name].poser
            assert folds[by_name[name].poser] == k  # every poser in its own fold only
            seen[name] = ex
    assert set(seen) == set(by_name)

    # A palette tiff decodes to the gray levels its palette names.
    palette = next(w for w in written if w.palette)
    stored = np.asarray(Image.open(root / "jaffe" / palette.file_name).convert("L"))
    np.testing.assert_array_equal(seen[palette.file_name]["image"][..., 0], stored)

    # Fewer images than published: warned with both numbers, per class and in total.
    assert "split 'all' has 21 examples; the official count is 213" in caplog.text
    assert "split 'all, class AN' has 3 examples; the official count is 30" in caplog.text


def test_train_test_of_a_fold_through_the_split_api(fake, tmp_path):
    root, written = fake
    builder = build(root, tmp_path)
    train, test = fold_splits(0)
    train_subjects = {ex["subject_id"] for ex in examples(builder, train)}
    test_subjects = {ex["subject_id"] for ex in examples(builder, test)}
    assert test_subjects == {b"KA"}
    assert not train_subjects & test_subjects
    assert builder.info.splits[train].num_examples + builder.info.splits[test].num_examples == len(
        written
    )


def test_face_crop_config(fake, tmp_path):
    root, written = fake
    builder = build(root, tmp_path, config="face224")
    assert sum(s.num_examples for s in builder.info.splits.values()) == len(written)
    ex = examples(builder, "fold0")[0]
    assert ex["image"].shape == (224, 224, 1)


def test_aligned_config_aligns_a_real_face_and_counts_the_rest(fake, tmp_path):
    """The drawn fake faces are cartoons; one real photograph (skimage's astronaut, gray, at
    JAFFE's 256x256) is added, and its face must be found and aligned (eyes on the template
    within 6 px), while every image the detector misses is counted and centre-cropped."""
    skimage_data = pytest.importorskip("skimage.data")
    from vit_se.datasets import faces

    manual = copy_fake(fake, tmp_path)
    photo = common.to_gray(skimage_data.astronaut())
    photo = common.resize(photo[:400, 50:450], 256)
    Image.fromarray(photo[..., 0]).save(manual / "jaffe" / "KA.HA9.999.tiff")
    builder = build(manual, tmp_path / "data", config="aligned224")
    total = len(fake[1]) + 1
    assert sum(s.num_examples for s in builder.info.splits.values()) == total
    fallbacks = builder.info.metadata["face_crop_fallbacks"]
    print(f"jaffe/aligned224: no face found in {fallbacks} of {total} images (1 real photo)")
    assert 0 <= fallbacks <= total - 1
    (real,) = [e for e in examples(builder, "fold0") if e["file_name"] == b"KA.HA9.999.tiff"]
    assert real["image"].shape == (224, 224, 1)
    eyes = faces.detect_mtcnn(real["image"])[0].landmarks[:2]
    assert np.abs(eyes - faces.template(224)[:2]).max() <= 6


def test_reads_the_original_archive(fake, tmp_path):
    root, written = fake
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "jaffedbase.zip", "w") as z:
        for w in written:
            z.write(root / "jaffe" / w.file_name, f"jaffe/{w.file_name}")
        z.writestr("__MACOSX/jaffe/._KA.AN1.1.tiff", b"resource fork")
    builder = build(manual, tmp_path / "data")
    assert sum(s.num_examples for s in builder.info.splits.values()) == len(written)


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
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.txt").write_text("not jaffe")
    with pytest.raises(FileNotFoundError, match="no .tiff files"):
        build(tmp_path / "other", tmp_path / "data")


def test_unknown_expression_code(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    shutil.copy(manual / "jaffe" / "KL.AN1.2.tiff", manual / "jaffe" / "KA.XX1.1.tiff")
    with pytest.raises(
        ValueError, match=r"KA\.XX1\.1\.tiff: unknown label 'XX'; expected one of AN"
    ):
        build(manual, tmp_path / "data")


def test_file_name_not_in_jaffe_pattern(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    shutil.copy(manual / "jaffe" / "KL.AN1.2.tiff", manual / "jaffe" / "KA_AN1.tiff")
    with pytest.raises(ValueError, match=r"KA_AN1\.tiff: not a JAFFE file name"):
        build(manual, tmp_path / "data")


def test_unreadable_images_fail_naming_each_or_are_skipped_when_asked(fake, tmp_path, caplog):
    manual = copy_fake(fake, tmp_path)
    good = (manual / "jaffe" / "KL.AN1.2.tiff").read_bytes()
    (manual / "jaffe" / "KL.AN1.2.tiff").write_bytes(good[: len(good) // 3])  # truncated
    (manual / "jaffe" / "UY.SU1.19.tiff").write_bytes(b"not a tiff at all")
    with pytest.raises(common.BadImagesError, match="2 unreadable") as err:
        build(manual, tmp_path / "data")
    assert "KL.AN1.2.tiff" in str(err.value) and "UY.SU1.19.tiff" in str(err.value)

    builder = build(manual, tmp_path / "data2", skip_bad_images=True)
    total = sum(s.num_examples for s in builder.info.splits.values())
    assert total == len(fake[1]) - 2
    assert builder.info.metadata["skipped_images"] == 2
    assert "skipped 2 unreadable image(s)" in caplog.text


def test_poser_missing_from_fold_file_is_warned(fake, tmp_path, caplog):
    manual = copy_fake(fake, tmp_path)
    shutil.copy(manual / "jaffe" / "KL.AN1.2.tiff", manual / "jaffe" / "ZZ.AN1.300.tiff")
    builder = build(manual, tmp_path / "data")
    assert "subject ZZ is not in the shipped fold file; assigned to fold" in caplog.text
    assert sum(s.num_examples for s in builder.info.splits.values()) == len(fake[1]) + 1


# `tfds build` with everything after the subcommand; run as the real CLI when its imports are
# there. tfds 4.9.10's `tfds` entry point imports apache_beam and mlcroissant for other
# subcommands, which vit_se does not install, so otherwise the `build` subcommand is parsed and run
# directly: the same code that resolves the folder to `jaffe.jaffe_dataset_builder` and builds it.
_BUILD_SUBCOMMAND = """
import sys, simple_parsing
from tensorflow_datasets.scripts.cli import build
simple_parsing.parse(build.Args, args=sys.argv[1:]).execute()
"""


@pytest.mark.slow
def test_tfds_build_cli(fake, tmp_path):
    args = [
        os.path.join(REPO, "vit_se", "datasets", "jaffe"),
        "--config=original",
        f"--manual_dir={fake[0]}",
        f"--data_dir={tmp_path}",
    ]
    full_cli = all(importlib.util.find_spec(m) for m in ("apache_beam", "mlcroissant"))
    tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
    if full_cli and os.path.exists(tfds_cli):
        command = [tfds_cli, "build", *args]
    else:
        command = [sys.executable, "-c", _BUILD_SUBCOMMAND, *args]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version = str(jaffe_dataset_builder.Builder.VERSION)
    info = json.loads((tmp_path / "jaffe" / "original" / version / "dataset_info.json").read_text())
    assert sum(int(s.get("shardLengths", ["0"])[0]) for s in info["splits"]) == len(fake[1])
