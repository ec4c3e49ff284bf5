"""CK+ builder; importing this package registers `ck_plus` with tfds."""

from .ck_plus_dataset_builder import Builder, fold_splits, read_emotion_file, select_frames

__all__ = ["Builder", "fold_splits", "read_emotion_file", "select_frames"]
