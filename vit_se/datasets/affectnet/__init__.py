"""AffectNet (manually annotated) tfds builder; importing this package registers `affectnet`."""

from vit_se.datasets.affectnet.affectnet_dataset_builder import Builder, read_csv

__all__ = ["Builder", "read_csv"]
