"""FER-2013 (and FER+) tfds builder; importing this package registers `fer2013` with tfds."""

from vit_se.datasets.fer2013.fer2013_dataset_builder import (
    FERPLUS_MODES,
    Builder,
    ferplus_distribution,
    ferplus_label,
)

__all__ = ["FERPLUS_MODES", "Builder", "ferplus_distribution", "ferplus_label"]
