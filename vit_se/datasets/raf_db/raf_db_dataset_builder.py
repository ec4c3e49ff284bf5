"""RAF-DB (basic, single-label) as a tfds builder, read from the distribution as it comes.

Labels come from `basic/EmoLabel/list_patition_label.txt` (lines `train_00001.jpg 5`, spelling as
distributed) and are mapped once, through `labels.RAF_DB_CODES`, from RAF-DB's codes (1 surprise,
2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral) into the canonical order angry,
disgust, fear, happy, sad, surprise, neutral. The split is the official one, read from the file
name prefix (`train_` / `test_`), so results are comparable with the literature.

Config `aligned` (default) reads `basic/Image/aligned/<name>_aligned.jpg` (100x100 faces aligned
by the authors); `original` reads `basic/Image/original/<name>.jpg` (whole pictures, sizes vary).
Images are RGB as stored; a gray JPEG is repeated to three channels so the feature has one shape.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vit_se import media
from vit_se.datasets import common, labels

NAME = "raf_db"
LIST_FILE = os.path.join("EmoLabel", "list_patition_label.txt")
OFFICIAL_COUNTS = {"train": 12271, "test": 3068}
_HINT = "basic/EmoLabel/list_patition_label.txt and basic/Image/ (or basic.zip)"

_CITATION = """\
@inproceedings{li2017reliable,
  title={Reliable Crowdsourcing and Deep Locality-Preserving Learning for Expression Recognition
         in the Wild},
  author={Li, Shan and Deng, Weihong and Du, JunPing},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2017}
}
@article{li2019reliable,
  title={Reliable Crowdsourcing and Deep Locality-Preserving Learning for Unconstrained Facial
         Expression Recognition},
  author={Li, Shan and Deng, Weihong},
  journal={IEEE Transactions on Image Processing},
  volume={28},
  number={1},
  pages={356--370},
  year={2019}
}
"""


@dataclasses.dataclass
class RafDbConfig(tfds.core.BuilderConfig):
    """`images` is the folder under basic/Image/ the images are read from."""

    images: str = "aligned"


def read_label_file(path):
    """Parses list_patition_label.txt into {'train': [(name, label)], 'test': [...]}.

    Raises a ValueError naming the file and line for a malformed line, an unknown code or a name
    that is neither `train_*` nor `test_*`.
    """
    entries = {"train": [], "test": []}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path} line {n}"
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f'{where}: expected "<name>.jpg <code>", got {line.strip()!r}')
            name, code = fields
            label = labels.map_code(labels.RAF_DB_CODES, int(code), where)
            split = name.split("_", 1)[0]
            if split not in entries:
                raise ValueError(f"{where}: {name!r} starts with neither train_ nor test_")
            entries[split].append((name, label))
    return entries


def image_file_name(name, images):
    """`train_00001.jpg` -> `train_00001_aligned.jpg` for the aligned images, else unchanged."""
    if images != "aligned":
        return name
    stem, ext = os.path.splitext(name)
    return f"{stem}_aligned{ext}"


class Builder(common.SkipBadImages, tfds.core.GeneratorBasedBuilder):
    """RAF-DB basic: 15,339 in-the-wild faces, official train/test split, 7 classes.

    Pass `skip_bad_images=True` to drop unreadable or missing images (counted in a warning and in
    `info.metadata['skipped_images']`) instead of failing the build.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: official train/test split, configs aligned and original.",
    }
    BUILDER_CONFIGS = [
        RafDbConfig(
            name="aligned",
            images="aligned",
            description="The authors' aligned faces, basic/Image/aligned/*_aligned.jpg (100x100).",
        ),
        RafDbConfig(
            name="original",
            images="original",
            description="The original pictures, basic/Image/original/*.jpg (sizes vary).",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
RAF-DB is released for non-commercial research by its authors on request: fill in the agreement
linked from http://www.whdeng.cn/RAF/model1.html and use the "basic" part you are sent.
Place in the manual dir (default ~/tensorflow_datasets/downloads/manual/, or --manual_dir=DIR)
the `basic` folder unchanged:
  DIR/basic/EmoLabel/list_patition_label.txt   (lines like `train_00001.jpg 5`)
  DIR/basic/Image/aligned.zip and/or DIR/basic/Image/original.zip   (as distributed), or their
  extracted folders DIR/basic/Image/aligned/train_00001_aligned.jpg ...
  and DIR/basic/Image/original/train_00001.jpg ...
A zip of the whole folder, DIR/basic.zip holding basic/..., is accepted too, and so is
DIR/basic/basic/... (some downloads nest it). Config `aligned` needs only the aligned images,
`original` only the original ones. Zips protected by a password must be extracted by hand.
"""

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=labels.CLASS_NAMES),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://www.whdeng.cn/RAF/model1.html",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = common.manual_dir(dl_manager, NAME, _HINT)
        basic = _find_basic(manual_dir, dl_manager)
        entries = read_label_file(os.path.join(basic, LIST_FILE))
        image_dir = _find_images(basic, self.builder_config.images, dl_manager)
        reader = media.ImageReader(NAME, self._skip_bad_images)
        return {
            split: self._generate_examples(split, entries[split], image_dir, reader, last)
            for split, last in (("train", False), ("test", True))
        }

    def _generate_examples(self, split, entries, image_dir, reader, last):
        count = 0
        for name, label in entries:
            path = os.path.join(image_dir, image_file_name(name, self.builder_config.images))
            image = reader.read(path)
            if image is None:
                continue
            if image.shape[-1] == 1:
                image = np.repeat(image, 3, axis=-1)
            count += 1
            yield name, {"image": image, "label": label, "file_name": name}
        if last:  # Splits are generated in order: report every bad file of the build at once.
            self.info.metadata["skipped_images"] = reader.finish()
        if reader.skip_bad or not reader.bad:
            common.check_count(NAME, split, count, OFFICIAL_COUNTS[split])


def _find_basic(manual_dir, dl_manager):
    """Returns the folder holding EmoLabel/: DIR, DIR/basic, DIR/basic/basic, or basic.zip's."""
    found = _basic_under(manual_dir)
    archive = os.path.join(manual_dir, "basic.zip")
    if found is None and os.path.isfile(archive):
        logging.info("%s: reading %s", NAME, archive)
        found = _basic_under(os.fspath(dl_manager.extract(archive)))
    if found is None:
        raise FileNotFoundError(
            f"{NAME}: label file {os.path.join(manual_dir, 'basic', LIST_FILE)} not found (nor in "
            f"basic.zip); expected {_HINT}"
        )
    return found


def _basic_under(root):
    for cand in (root, os.path.join(root, "basic"), os.path.join(root, "basic", "basic")):
        if os.path.isfile(os.path.join(cand, LIST_FILE)):
            return cand
    return None


def _find_images(basic, images, dl_manager):
    """Returns basic/Image/<images>/, extracting basic/Image/<images>.zip when only it is there."""
    folder = os.path.join(basic, "Image", images)
    if os.path.isdir(folder):
        return folder
    archive = folder + ".zip"
    if os.path.isfile(archive):
        root = os.fspath(dl_manager.extract(archive))
        nested = os.path.join(root, images)
        return nested if os.path.isdir(nested) else root
    raise FileNotFoundError(f"{NAME}: image folder {folder} not found (nor {archive})")
