"""JAFFE as a tfds builder: the 213 original tiffs, split into 10 leave-one-poser-out folds.

Labels come from the file names (`KA.AN1.39.tiff`: poser KA, expression AN) and are mapped once,
through `labels.JAFFE_CODES`, into the canonical order angry, disgust, fear, happy, sad, surprise,
neutral (AN DI FE HA SA SU NE). Images are emitted as stored, 256x256 gray with one channel;
palette tiffs are expanded by their gray palette and any 3-channel file is reduced to luma, so
every example has the same encoding. The `face224` config crops the largest face (OpenCV's Haar
cascade, shipped inside the cv2 wheel) and resizes it to 224x224; `aligned224` aligns the largest
MTCNN face by its 5 landmarks to the template of `vit_se.datasets.faces` at 224x224. Images with
no face found get the centre square (resized to 224), counted in a warning and in
`info.metadata['face_crop_fallbacks']`. Per-class
counts that differ from the published ones (AN 30, DI 29, FE 32, HA 31, NE 30, SA 31, SU 30) are
warned with both numbers.

Evaluation on JAFFE is subject-independent 10-fold cross-validation. JAFFE has exactly 10
posers, so fold i holds poser i of the sorted list in `folds.json`: no poser is in two folds,
and the splits `fold0` ... `fold9` are each one poser's images. `fold_splits(k)` gives the
(train, test) split strings of fold k for `tfds.load`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter

import tensorflow_datasets as tfds

from vit_se import media
from vit_se.datasets import common, labels

NAME = "jaffe"
NUM_FOLDS = 10
FOLDS_FILE = os.path.join(os.path.dirname(__file__), "folds.json")
# Published per-class counts of the 213 images.
OFFICIAL_CLASS_COUNTS = {"AN": 30, "DI": 29, "FE": 32, "HA": 31, "NE": 30, "SA": 31, "SU": 30}
FILE_RE = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)\.tiff?$")
_HINT = "the JAFFE tiffs named like KA.AN1.39.tiff (or the archive they came in)"

_CITATION = """\
@inproceedings{lyons1998coding,
  title={Coding facial expressions with {G}abor wavelets},
  author={Lyons, Michael and Akamatsu, Shigeru and Kamachi, Miyuki and Gyoba, Jiro},
  booktitle={Proceedings Third IEEE International Conference on Automatic Face and Gesture
             Recognition},
  pages={200--205},
  year={1998}
}
"""


def fold_splits(k, num_folds=NUM_FOLDS):
    """Returns the (train, test) split strings of fold k, e.g. ('fold1+...+fold9', 'fold0')."""
    return common.fold_splits(k, num_folds)


def parse_file_name(name, where=None):
    """Returns (poser, expression code, canonical label) of a JAFFE file name.

    Raises a ValueError naming the file when the name does not follow `<poser>.<EXPR><n>.<id>.tiff`
    or the expression code is not one of JAFFE's seven.
    """
    where = where or name
    m = FILE_RE.match(name)
    if not m:
        raise ValueError(f"{where}: not a JAFFE file name like KA.AN1.39.tiff")
    poser, code = m.group(1), m.group(2)
    return poser, code, labels.map_code(labels.JAFFE_CODES, code, where)


@dataclasses.dataclass
class JaffeConfig(tfds.core.BuilderConfig):
    """face_size > 0 crops the face by `face_method` ('haar' or 'aligned', centre-square
    fallback) to face_size x face_size."""

    face_size: int = 0
    face_method: str = "haar"

    @property
    def face_crop(self):
        return self.face_method if self.face_size else "none"


class Builder(common.SkipBadImages, tfds.core.GeneratorBasedBuilder):
    """JAFFE, 213 gray tiffs of 10 Japanese female posers, in leave-one-poser-out folds.

    Pass `skip_bad_images=True` to drop unreadable files (counted in a warning and in
    `info.metadata['skipped_images']`) instead of failing the build.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: splits fold0..fold9 (one poser each), configs original and "
        "face224.",
        "1.1.0": "Config aligned224 (MTCNN 5-point alignment); other configs unchanged.",
    }
    BUILDER_CONFIGS = [
        JaffeConfig(name="original", description="Images as stored (256x256, 1 channel)."),
        JaffeConfig(
            name="face224",
            face_size=224,
            description="Largest face (OpenCV Haar; centre crop when none is found), 224x224.",
        ),
        JaffeConfig(
            name="aligned224",
            face_size=224,
            face_method="aligned",
            description="Largest face aligned by its 5 MTCNN landmarks (centre crop when none "
            "is found), 224x224.",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
JAFFE is distributed by its authors on request, for non-commercial research only: ask for it at
https://zenodo.org/record/3451524 (the JAFFE dataset record; accept the terms of use).
Place in the manual dir (default ~/tensorflow_datasets/downloads/manual/, or --manual_dir=DIR)
either the archive you received (a .zip, .tar, .tar.gz or .tgz, e.g. jaffedbase.zip) or its
extracted folder, e.g. DIR/jaffe/KA.AN1.39.tiff ... DIR/jaffe/YM.SU3.60.tiff: the 213 files
`<poser>.<EXPR><n>.<id>.tiff` unchanged. Folders are searched recursively; other files (README,
__MACOSX) are ignored.
"""

    def _info(self):
        size = self.builder_config.face_size or None
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1)),
                    "label": tfds.features.ClassLabel(names=labels.CLASS_NAMES),
                    "subject_id": tfds.features.Text(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://zenodo.org/record/3451524",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = common.manual_dir(dl_manager, NAME, _HINT)
        paths = _find_tiffs(manual_dir)
        if not paths:
            for root in common.extract_archives(dl_manager, manual_dir):
                paths.update(_find_tiffs(root))
        if not paths:
            raise FileNotFoundError(
                f"{NAME}: no .tiff files under {manual_dir!r} nor in archives there; "
                f"expected {_HINT}"
            )
        assigner = common.FoldAssigner(NAME, FOLDS_FILE)
        folds = [[] for _ in range(NUM_FOLDS)]
        codes = Counter()
        for name, path in sorted(paths.items()):
            poser, code, label = parse_file_name(name, where=path)
            codes[code] += 1
            folds[assigner(poser)].append((name, path, poser, label))
        for code, expected in OFFICIAL_CLASS_COUNTS.items():
            common.check_count(NAME, f"all, class {code}", codes[code], expected)
        common.check_count(NAME, "all", len(paths), sum(OFFICIAL_CLASS_COUNTS.values()))
        empty = [k for k in range(NUM_FOLDS) if not folds[k]]
        if empty:
            raise ValueError(f"{NAME}: folds {empty} have no images under {manual_dir!r}")

        state = _BuildState(
            media.ImageReader(NAME, self._skip_bad_images),
            common.FaceCropper(
                NAME, self.builder_config.face_crop, self.builder_config.face_size or None
            ),
        )
        return {
            f"fold{k}": self._generate_examples(folds[k], state, last=k == NUM_FOLDS - 1)
            for k in range(NUM_FOLDS)
        }

    def _generate_examples(self, items, state, last):
        for name, path, poser, label in items:
            image = state.reader.read(path)
            if image is None:
                continue
            image = state.cropper(common.to_gray(image))
            yield name, {"image": image, "label": label, "subject_id": poser, "file_name": name}
        if last:  # Splits are generated in order: report every bad file of the build at once.
            self.info.metadata["skipped_images"] = state.reader.finish()
            self.info.metadata["face_crop_fallbacks"] = state.cropper.finish()


@dataclasses.dataclass
class _BuildState:
    reader: media.ImageReader
    cropper: common.FaceCropper


def _find_tiffs(root):
    """Maps file name -> path for every .tif(f) under root; a name found twice is an error."""
    found = {}
    for folder in common.iter_dirs(root):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.startswith(".") or not name.lower().endswith((".tif", ".tiff")):
                continue
            if not os.path.isfile(path):
                continue
            if name in found:
                raise ValueError(f"{NAME}: {name} found twice: {found[name]} and {path}")
            found[name] = path
    return found
