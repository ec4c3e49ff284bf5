"""RAF-DB (basic) tfds builder; importing this package registers `raf_db` with tfds."""

from vit_se.datasets.raf_db.raf_db_dataset_builder import Builder

__all__ = ["Builder"]
