"""Builders by name: the registry imports the right package and hands kwargs to the builder."""

import os

import pytest
import tensorflow_datasets as tfds

from vit_se.datasets import registry
from vit_se.datasets.fer2013 import fake_data

tfds.disable_progress_bar()
DEFAULT_CONFIGS = {
    "jaffe": "original",
    "ck_plus": None,
    "raf_db": "aligned",
    "sfew": "aligned",
    "fer2013": "csv",
    "affectnet": "7class",
}


def test_names():
    assert registry.NAMES == ("jaffe", "ck_plus", "raf_db", "sfew", "fer2013", "affectnet")


def test_unknown_name():
    message = (
        "unknown dataset 'affwild2'; known datasets: jaffe, ck_plus, raf_db, sfew, fer2013, "
        "affectnet"
    )
    with pytest.raises(ValueError, match=message):
        registry.load_builder("affwild2")


@pytest.mark.parametrize("name", registry.NAMES)
def test_load_builder(name, tmp_path):
    builder = registry.load_builder(name, data_dir=tmp_path)
    assert builder.name == name
    if DEFAULT_CONFIGS[name]:
        assert builder.builder_config.name == DEFAULT_CONFIGS[name]
    assert builder.info.features["label"].num_classes >= 7
    assert builder.MANUAL_DOWNLOAD_INSTRUCTIONS and builder.info.citation


def test_config_and_kwargs_reach_the_builder(tmp_path):
    builder = registry.load_builder("raf_db", tmp_path, config="original", skip_bad_images=True)
    assert builder.builder_config.name == "original"
    assert builder._skip_bad_images


def test_build_by_name(tmp_path):
    fake_data.write_fake_fer2013(tmp_path / "manual", 7, 7, 7)
    builder = registry.load_builder("fer2013", data_dir=tmp_path / "data")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(tmp_path / "manual"))
    )
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 7,
        "public_test": 7,
        "private_test": 7,
    }
    images, label = next(iter(builder.as_dataset(split="train", as_supervised=True).batch(7)))
    assert images.shape == (7, 48, 48, 1) and label.shape == (7,)
