"""SFEW 2.0 tfds builder; importing this package registers `sfew` with tfds."""

from vit_se.datasets.sfew.sfew_dataset_builder import Builder

__all__ = ["Builder"]
