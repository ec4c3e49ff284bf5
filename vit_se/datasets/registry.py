"""Builders by name, so the input pipeline and scripts can say `raf_db` instead of a module path.

Each builder registers itself with tfds when its package is imported; importing all six up front
would pull in OpenCV and every builder for a run that needs one, hence the import on demand.
"""

from __future__ import annotations

import importlib

import tensorflow_datasets as tfds

NAMES = ("jaffe", "ck_plus", "raf_db", "sfew", "fer2013", "affectnet")


def load_builder(name, data_dir=None, config=None, **kwargs):
    """Returns the tfds builder of one of NAMES; kwargs (e.g. skip_bad_images) go to it."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(NAMES)}")
    importlib.import_module(f"vit_se.datasets.{name}")
    return tfds.builder(name, data_dir=data_dir, config=config, **kwargs)
