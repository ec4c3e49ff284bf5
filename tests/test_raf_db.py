"""The raf_db builder on fake data in the distributed layout: splits, labels, features, errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TIMEOUT

from vit_se.datasets import common, labels
from vit_se.datasets.raf_db import fake_data, raf_db_dataset_builder

tfds.disable_progress_bar()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST, ALIGNED = 14, 7, 24


def write(root, layout="folders"):
    return fake_data.write_fake_raf_db(
        root, NUM_TRAIN, NUM_TEST, aligned_size=ALIGNED, original_size=(28, 40), layout=layout
    )


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("raf_manual")
    return root, write(root)


def build(manual_dir, data_dir, config="aligned", **kwargs):
    builder = tfds.builder("raf_db", data_dir=os.fspath(data_dir), config=config, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


def examples(builder, split):
    return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def copy_fake(fake, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(fake[0], manual)
    return manual


def test_codes_map_to_canonical_labels(tmp_path):
    path = tmp_path / "list_patition_label.txt"
    path.write_text("".join(f"train_{c:05d}.jpg {c}\n" for c in range(1, 8)) + "test_0001.jpg 6\n")
    entries = raf_db_dataset_builder.read_label_file(path)
    names = [labels.CLASS_NAMES[label] for _, label in entries["train"]]
    assert names == ["surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"]
    assert entries["test"] == [("test_0001.jpg", labels.CLASS_NAMES.index("angry"))]


@pytest.mark.parametrize("config", ["aligned", "original"])
def test_configs(fake, tmp_path, caplog, config):
    root, written = fake
    builder = build(root, tmp_path, config)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": NUM_TRAIN,
        "test": NUM_TEST,
    }
    assert builder.info.features["label"].names == list(labels.CLASS_NAMES)
    assert builder.info.metadata["skipped_images"] == 0
    assert "split 'train' has 14 examples; the official count is 12271" in caplog.text
    assert "split 'test' has 7 examples; the official count is 3068" in caplog.text
    for split in ("train", "test"):
        got = examples(builder, split)
        assert {name: int(ex["label"]) for name, ex in got.items()} == dict(written[split])
        for ex in got.values():
            assert ex["image"].dtype == np.uint8 and ex["image"].shape[-1] == 3
            if config == "aligned":
                assert ex["image"].shape == (ALIGNED, ALIGNED, 3)
            else:
                assert (
                    28 <= ex["image"].shape[0] <= 40
                    and ex["image"].shape[1] >= ex["image"].shape[0]
                )
    # train_00006.jpg carries RAF-DB code 6 (anger).
    assert labels.CLASS_NAMES[examples(builder, "train")["train_00006.jpg"]["label"]] == "angry"


@pytest.mark.parametrize("layout", ["image_zips", "basic_zip"])
def test_reads_the_distributed_archives(tmp_path, layout):
    write(tmp_path / "manual", layout)
    builder = build(tmp_path / "manual", tmp_path / "data")
    assert builder.info.splits["train"].num_examples == NUM_TRAIN
    assert builder.info.splits["test"].num_examples == NUM_TEST


def test_nested_basic_folder(fake, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(fake[0] / "basic", manual / "basic" / "basic")
    assert build(manual, tmp_path / "data").info.splits["train"].num_examples == NUM_TRAIN


def test_missing_and_empty_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="raf_db: manual dir .* does not exist"):
        build(tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="raf_db: manual dir .* is empty"):
        build(tmp_path / "empty", tmp_path / "data")


def test_missing_label_file(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    os.remove(manual / "basic" / "EmoLabel" / "list_patition_label.txt")
    with pytest.raises(FileNotFoundError, match=r"label file .*list_patition_label.txt not found"):
        build(manual, tmp_path / "data")


def test_missing_image_folder(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    shutil.rmtree(manual / "basic" / "Image" / "original")
    with pytest.raises(FileNotFoundError, match=r"image folder .*original not found"):
        build(manual, tmp_path / "data", "original")


def test_unknown_code(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    list_file = manual / "basic" / "EmoLabel" / "list_patition_label.txt"
    lines = list_file.read_text().splitlines(keepends=True)
    lines[2] = "train_00003.jpg 9\n"
    list_file.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"list_patition_label.txt line 3: unknown label 9"):
        build(manual, tmp_path / "data")


def test_malformed_label_line(fake, tmp_path):
    manual = copy_fake(fake, tmp_path)
    list_file = manual / "basic" / "EmoLabel" / "list_patition_label.txt"
    list_file.write_text(list_file.read_text() + "train_99999.jpg\n")
    with pytest.raises(ValueError, match=r"line 22: expected \"<name>.jpg <code>\""):
        build(manual, tmp_path / "data")


def test_unreadable_images_fail_naming_each_or_are_skipped_when_asked(fake, tmp_path, caplog):
    manual = copy_fake(fake, tmp_path)
    aligned = manual / "basic" / "Image" / "aligned"
    truncated = aligned / "train_00002_aligned.jpg"
    truncated.write_bytes(truncated.read_bytes()[:100])
    os.remove(aligned / "test_0003_aligned.jpg")
    with pytest.raises(common.BadImagesError, match="2 unreadable") as e:
        build(manual, tmp_path / "data")
    assert "train_00002_aligned.jpg" in str(e.value) and "test_0003_aligned.jpg" in str(e.value)
    builder = build(manual, tmp_path / "data2", skip_bad_images=True)
    assert builder.info.splits["train"].num_examples == NUM_TRAIN - 1
    assert builder.info.splits["test"].num_examples == NUM_TEST - 1
    assert builder.info.metadata["skipped_images"] == 2
    assert "raf_db: skipped 2 unreadable image(s)" in caplog.text


# `tfds build` as in the README. tfds 4.9.10's `tfds` entry point imports apache_beam and
# mlcroissant for other subcommands, so without them the `build` subcommand is run directly.
_BUILD_SUBCOMMAND = """
import sys, simple_parsing
from tensorflow_datasets.scripts.cli import build
simple_parsing.parse(build.Args, args=sys.argv[1:]).execute()
"""


@pytest.mark.slow
def test_tfds_build_cli(fake, tmp_path):
    args = [
        os.path.join(REPO, "vit_se", "datasets", "raf_db"),
        f"--manual_dir={fake[0]}",
        f"--data_dir={tmp_path}",
    ]
    tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
    if all(importlib.util.find_spec(m) for m in ("apache_beam", "mlcroissant")):
        command = [tfds_cli, "build", *args]
    else:
        command = [sys.executable, "-c", _BUILD_SUBCOMMAND, *args]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for config in ("aligned", "original"):  # no --config: every config is built
        info = json.loads(
            (tmp_path / "raf_db" / config / "1.0.0" / "dataset_info.json").read_text()
        )
        lengths = {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]}
        assert lengths == {"train": NUM_TRAIN, "test": NUM_TEST}
