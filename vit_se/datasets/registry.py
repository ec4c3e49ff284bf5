"""Builders by name, so the input pipeline and scripts can say `raf_db` instead of a module path.

Each builder registers itself with tfds when its package is imported; importing all six up front
would pull in OpenCV and every builder for a run that needs one, hence the import on demand.
"""

from __future__ import annotations

import importlib

NAMES = ("jaffe", "ck_plus", "raf_db", "sfew", "fer2013", "affectnet")
# How result tables name each database.
TITLES = {
    "jaffe": "JAFFE",
    "ck_plus": "CK+",
    "raf_db": "RAF-DB",
    "sfew": "SFEW",
    "fer2013": "FER-2013",
    "affectnet": "AffectNet",
}


def load_builder(name, data_dir=None, config=None, **kwargs):
    """Returns the tfds builder of one of NAMES; kwargs (e.g. skip_bad_images) go to it."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(NAMES)}")
    import tensorflow_datasets as tfds  # here, not above: NAMES and TITLES need no TensorFlow

    importlib.import_module(f"vit_se.datasets.{name}")
    return tfds.builder(name, data_dir=data_dir, config=config, **kwargs)


def config_names(name):
    """The names of the builder's configs (its BUILDER_CONFIGS), default first."""
    builder = importlib.import_module(f"vit_se.datasets.{name}").Builder
    return [c.name for c in builder.BUILDER_CONFIGS]


def has_folds(name):
    """Whether the builder's splits are cross-validation folds (fold0..fold{n-1})."""
    return hasattr(importlib.import_module(f"vit_se.datasets.{name}"), "fold_splits")


def fold_splits(name, fold, num_folds=10):
    """(train, test) split strings of fold `fold` of a k-fold builder (CK+, JAFFE)."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(NAMES)}")
    if not has_folds(name):
        raise ValueError(f"dataset {name!r} has no cross-validation folds")
    return importlib.import_module(f"vit_se.datasets.{name}").fold_splits(fold, num_folds)


def write_fake_data(name, root, **kwargs):
    """Writes a synthetic copy of the dataset in its distributed layout (`<name>/fake_data.py`)."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(NAMES)}")
    module = importlib.import_module(f"vit_se.datasets.{name}.fake_data")
    return getattr(module, f"write_fake_{name}")(root, **kwargs)
