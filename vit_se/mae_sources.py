"""The unlabelled image sources a pretraining config names (`config.mae.datasets`, `.folder`).

Pure Python (no TensorFlow, no JAX), so that `vit_se.config_checks` refuses a misspelt dataset,
an unknown face-crop mode or a test split in one line before anything heavy is imported;
`vit_se.unlabelled` reads the images of what is parsed here.

Test splits are kept out: a builder's split other than `train` (RAF-DB's test, FER-2013's
public and private tests, AffectNet's and SFEW's reported validation sets, every fold of CK+ and
JAFFE, each of which is some fold's test split) is refused unless the caller allows it.
"""

from __future__ import annotations

import dataclasses
import os

from vit_se import choices
from vit_se.datasets import registry
from vit_se.errors import Error

TRAIN = "train"


class UnlabelledError(Error, ValueError):
    """A source of unlabelled images that cannot be used as given."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A builder's split (`dataset`, `dataset_config`, `split`) or a `folder` of images."""

    dataset: str = ""
    dataset_config: str | None = None
    split: str = TRAIN
    folder: str = ""
    face_crop: str = "none"

    @property
    def name(self):
        if self.folder:
            return self.folder
        config = f"/{self.dataset_config}" if self.dataset_config else ""
        return f"{self.dataset}{config}:{self.split}"


def parse_datasets(spec, face_crop="none", where="config.mae.datasets"):
    """'NAME[/CONFIG][:SPLIT][@FACE_CROP],...' -> Sources (tfds's name/config spelling).

    SPLIT defaults to train, FACE_CROP to `face_crop`; e.g.
    'fer2013/csv:train,affectnet/7class:train[:98%]@aligned,raf_db/aligned'.
    """
    out = []
    for item in (s.strip() for s in (spec or "").split(",")):
        if not item:
            continue
        rest, _, crop = item.partition("@")
        rest, _, split = rest.partition(":")
        name, _, config = rest.partition("/")
        if name not in registry.NAMES:
            raise UnlabelledError(
                f"{where}: unknown dataset {name!r} in {item!r}; expected one of "
                f"{', '.join(registry.NAMES)} as NAME[/CONFIG][:SPLIT][@FACE_CROP]"
            )
        mode = _face_crop(crop.strip() or face_crop, f"{where} ({item})")
        out.append(
            Source(
                dataset=name,
                dataset_config=config.strip() or None,
                split=split.strip() or TRAIN,
                face_crop=mode,
            )
        )
    return out


def from_config(mae_config):
    """The Sources of a config's `mae` fields: `datasets`, then `folder` when set; each checked
    (names, face crops, test splits) in one line."""
    sources = parse_datasets(mae_config.datasets)
    if mae_config.folder:
        sources.append(folder_source(mae_config.folder, mae_config.folder_face_crop))
    if not sources:
        raise UnlabelledError(
            "config.mae.datasets and config.mae.folder are both empty; name the unlabelled images "
            "to pretrain on (e.g. --config.mae.folder=$HOME/faces)"
        )
    check_splits(sources, mae_config.allow_test_splits)
    return sources


def folder_source(folder, face_crop="none", where="config.mae.folder_face_crop"):
    return Source(folder=os.fspath(folder), face_crop=_face_crop(face_crop, where))


def _face_crop(value, where):
    try:
        return choices.face_crop_mode(value, where)
    except ValueError as e:
        raise UnlabelledError(str(e)) from None


def check_splits(sources, allow_test_splits=False):
    """Refuses, in one line, a builder split other than `train` unless allowed."""
    if allow_test_splits:
        return
    for s in sources:
        if s.folder:
            continue
        others = sorted(split_names(s.split) - {TRAIN})
        if others:
            raise UnlabelledError(
                f"{s.name}: split {', '.join(others)} is a test split (only {TRAIN!r} and its "
                "slices are pretrained on); pass allow_test_splits=True "
                "(--config.mae.allow_test_splits=True) to use it"
            )


def split_names(split):
    """The split names a tfds split string reads: 'train[:90%]+test' -> {'train', 'test'}."""
    return {part.split("[", 1)[0].strip() for part in split.split("+")}
