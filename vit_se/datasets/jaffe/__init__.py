"""JAFFE builder; importing this package registers `jaffe` with tfds."""

from .jaffe_dataset_builder import Builder, fold_splits, parse_file_name

__all__ = ["Builder", "fold_splits", "parse_file_name"]
