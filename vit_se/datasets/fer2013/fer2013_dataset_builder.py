"""FER-2013 as a tfds builder: the Kaggle CSV, its FER+ relabelling, or the image-folder variant.

FER-2013's emotion codes (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral) are
the canonical order, so `labels.FER2013_CODES` is the identity; the folder variant's class names
map through `labels.FER2013_FOLDERS`. Splits are the challenge's: `train` (Usage Training),
`public_test` (PublicTest, the usual validation set) and `private_test` (PrivateTest, the usual
test set). Images are 48x48 gray, one channel.

Configs:
  csv (default): fer2013.csv (`emotion,pixels,Usage`; 2304 space-separated ints per row).
  ferplus, ferplus_majority, ferplus_probability: the same images relabelled by FER+
    (`fer2013new.csv` beside the CSV: ten vote counts per row, neutral happiness surprise sadness
    anger disgust fear contempt unknown NF, same row order as fer2013.csv), in the three label
    modes of Barsoum et al. 2016 (their majority voting and their label-distribution targets):
    ferplus (mode plurality, the 1.0.0 config, kept for compatibility): the label is the column
      with the most votes over all ten; a row is dropped when that top count is shared ('tie'),
      when it is contempt, unknown or NF, or when the row has no votes ('no votes').
    ferplus_majority (mode majority): the label is the column holding more than half of all ten
      columns' votes; a row is dropped when no column has ('no majority'), when that column is
      contempt, unknown or NF, or when the row has no votes. Every kept row is also kept by
      plurality, with the same label. FER+'s reference reader (src/ferplus.py) first zeroes
      every single vote, which shrinks the total and so keeps a few more rows than this rule.
    ferplus_probability (mode probability): the rows and labels of plurality, plus
      `label_distribution`, float32 [7] in the canonical order: the seven basic emotions' votes
      divided by their sum, the soft target of cross-entropy training. Contempt, unknown and NF
      votes are left out of it: Barsoum et al. drop unknown and NF, and a 7-class model has no
      contempt output (6 happiness, 2 sadness, 2 contempt gives happy 0.75, sad 0.25). Keeping
      plurality's rows makes `label` the distribution's unique arg-max, so evaluation, which
      counts the arg-max, reads the same test rows as plurality. Single votes are kept (the
      reference reader's 'crossentropy' mode also trims to the top emotions).
    The dropped rows are counted per split and reason in the log and in
    `info.metadata['dropped_rows']`; `votes` keeps the raw counts in every mode.
  folders: the widely shared variant `train/<class>/Training_<n>.jpg`, `test/<class>/PublicTest_<n>
    .jpg` and `test/<class>/PrivateTest_<n>.jpg`; test images are split by their name prefix.
    An image it cannot place (a test image with neither prefix, an image outside the class
    folders) and a split without images fail the build in one line; other files are skipped
    with a warning naming them (`list_folders`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vit_se import media
from vit_se.datasets import common, labels

NAME = "fer2013"
SIZE = 48
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}
PREFIX_TO_SPLIT = {"PublicTest_": "public_test", "PrivateTest_": "private_test"}
# Where the folder variant's images of each split lie, as its errors name them.
FOLDER_SPLIT_FILES = {
    "train": "train/<class>/*.jpg",
    "public_test": "test/<class>/PublicTest_*.jpg",
    "private_test": "test/<class>/PrivateTest_*.jpg",
}
OFFICIAL_COUNTS = {"train": 28709, "public_test": 3589, "private_test": 3589}
FERPLUS_FILE = "fer2013new.csv"
FOLDER_ARCHIVES = ("archive.zip", "fer2013.zip")
_HINT = "fer2013.csv (or fer2013.tar.gz), or train/ and test/ class folders for config folders"

_CITATION = """\
@inproceedings{goodfellow2013challenges,
  title={Challenges in Representation Learning: A Report on Three Machine Learning Contests},
  author={Goodfellow, Ian J. and Erhan, Dumitru and Carrier, Pierre Luc and Courville, Aaron
          and Mirza, Mehdi and Hamner, Ben and Cukierski, Will and Tang, Yichuan and Thaler,
          David and Lee, Dong-Hyun and others},
  booktitle={International Conference on Neural Information Processing (ICONIP)},
  pages={117--124},
  year={2013}
}
@inproceedings{barsoum2016training,
  title={Training Deep Networks for Facial Expression Recognition with Crowd-Sourced Label
         Distribution},
  author={Barsoum, Emad and Zhang, Cha and Canton Ferrer, Cristian and Zhang, Zhengyou},
  booktitle={ACM International Conference on Multimodal Interaction (ICMI)},
  year={2016}
}
"""


FERPLUS_MODES = ("plurality", "majority", "probability")
# fer2013new.csv's column of each canonical class, in canonical order.
_CANONICAL_COLUMNS = [
    labels.FERPLUS_COLUMNS.index(
        next(c for c, i in labels.FERPLUS_TO_CANONICAL.items() if i == label)
    )
    for label in range(len(labels.CLASS_NAMES))
]


@dataclasses.dataclass
class Fer2013Config(tfds.core.BuilderConfig):
    """`source` is 'csv', 'ferplus' or 'folders'; `ferplus_mode` one of FERPLUS_MODES."""

    source: str = "csv"
    ferplus_mode: str = "plurality"


def ferplus_label(votes, mode="plurality"):
    """Returns the canonical label of one FER+ vote row, or the reason it is dropped.

    `votes` are the ten counts in `labels.FERPLUS_COLUMNS` order. The result is (label, None)
    for a kept row, else (None, reason). Plurality (and probability, which keeps the same rows):
    the column with the most votes must be unique ('tie') and a basic emotion ('contempt',
    'unknown', 'NF'). Majority: the column must hold more than half of all votes ('no
    majority') and be a basic emotion. A row without votes is 'no votes' in every mode.
    """
    if mode not in FERPLUS_MODES:
        raise ValueError(f"FER+ mode {mode!r} is not one of {', '.join(FERPLUS_MODES)}")
    votes = np.asarray(votes)
    top = votes.max()
    if top <= 0:
        return None, "no votes"
    winners = np.flatnonzero(votes == top)
    if mode == "majority":
        if 2 * top <= votes.sum():
            return None, "no majority"
    elif len(winners) > 1:
        return None, "tie"
    column = labels.FERPLUS_COLUMNS[winners[0]]
    if column not in labels.FERPLUS_TO_CANONICAL:
        return None, column
    return labels.FERPLUS_TO_CANONICAL[column], None


def ferplus_distribution(votes):
    """The seven basic emotions' share of their votes, float32 [7] in canonical order.

    Contempt, unknown and NF votes are left out (see the module docstring); None when no basic
    emotion has a vote.
    """
    basic = np.asarray(votes, np.float64)[_CANONICAL_COLUMNS]
    total = basic.sum()
    if total <= 0:
        return None
    return (basic / total).astype(np.float32)


def read_csv(path, reader, ferplus_path=None, mode="plurality"):
    """Reads fer2013.csv; returns (examples, rows_read, dropped).

    examples is {split: [(row, label, image, votes)]}; rows_read counts the rows of each split as
    the official counts do (malformed and FER+-dropped rows included); dropped counts the rows
    FER+ leaves out, keyed by (split, reason). Rows are numbered from 0 after the header (FER+'s
    order); messages give the file line too. A row whose pixels are malformed is recorded on
    `reader` like an unreadable image; a bad emotion code or Usage fails at once. With
    `ferplus_path`, labels come from `ferplus_label(votes, mode)` over fer2013new.csv's row of the
    same index.
    """
    out = {split: [] for split in OFFICIAL_COUNTS}
    read = Counter()
    dropped = Counter()
    votes = _read_ferplus(ferplus_path) if ferplus_path else None
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = [h.strip() for h in next(rows, [])]
        missing = {"emotion", "pixels", "Usage"} - set(header)
        if missing:
            raise ValueError(f"{path}: header {header} lacks columns {sorted(missing)}")
        col = {name: header.index(name) for name in ("emotion", "pixels", "Usage")}
        for row, fields in enumerate(rows):
            where = f"{path} line {row + 2} (row {row})"
            if len(fields) != len(header):
                raise ValueError(f"{where}: {len(fields)} fields, expected {len(header)}")
            usage = fields[col["Usage"]].strip()
            if usage not in USAGE_TO_SPLIT:
                raise ValueError(
                    f"{where}: Usage {usage!r} is not one of {', '.join(USAGE_TO_SPLIT)}"
                )
            split = USAGE_TO_SPLIT[usage]
            code = fields[col["emotion"]].strip()
            if not code.lstrip("-").isdigit():
                raise ValueError(f"{where}: emotion {code!r} is not an integer code")
            label = labels.map_code(labels.FER2013_CODES, int(code), where)
            read[split] += 1
            row_votes = np.zeros(len(labels.FERPLUS_COLUMNS), np.int32)
            if votes is not None:
                if row >= len(votes):
                    raise ValueError(
                        f"{ferplus_path} has {len(votes)} rows, {path} has more; they must match"
                    )
                plus_usage, row_votes = votes[row]
                if plus_usage != usage:
                    raise ValueError(
                        f"{ferplus_path} line {row + 2}: Usage {plus_usage!r} differs from {where}"
                    )
                label, reason = ferplus_label(row_votes, mode)
                if label is None:
                    dropped[split, reason] += 1
                    continue
            image = _pixels(fields[col["pixels"]], where, reader)
            if image is not None:
                out[split].append((row, label, image, row_votes))
    if votes is not None and len(votes) != sum(read.values()):
        total = sum(read.values())
        raise ValueError(
            f"{ferplus_path} has {len(votes)} rows, {path} has {total}; they must match"
        )
    return out, read, dropped


def _pixels(text, where, reader):
    values = text.split()
    if len(values) != SIZE * SIZE:
        reader.bad.append(f"{where}: {len(values)} pixel values, expected {SIZE * SIZE}")
        return None
    try:
        pixels = np.array(values, dtype=np.int64)
    except ValueError:
        reader.bad.append(f"{where}: pixel values are not all integers")
        return None
    if pixels.min() < 0 or pixels.max() > 255:
        reader.bad.append(f"{where}: pixel values outside 0..255")
        return None
    return pixels.astype(np.uint8).reshape(SIZE, SIZE, 1)


def _read_ferplus(path):
    """Returns [(Usage, votes)] of fer2013new.csv, in row order."""
    out = []
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        rows.fieldnames = [h.strip() for h in rows.fieldnames or []]
        missing = [c for c in ("Usage", *labels.FERPLUS_COLUMNS) if c not in rows.fieldnames]
        if missing:
            raise ValueError(f"{path}: header {rows.fieldnames} lacks columns {missing}")
        for row, fields in enumerate(rows):
            try:
                counts = [int(fields[c]) for c in labels.FERPLUS_COLUMNS]
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {row + 2}: vote counts are not integers") from None
            out.append((fields["Usage"].strip(), np.array(counts, np.int32)))
    return out


class Builder(common.SkipBadImages, tfds.core.GeneratorBasedBuilder):
    """FER-2013: 35,887 48x48 gray faces, 7 classes, train / public_test / private_test.

    Pass `skip_bad_images=True` to drop unreadable images or malformed CSV rows (counted in a
    warning and in `info.metadata['skipped_images']`) instead of failing the build.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train/public_test/private_test; configs csv, ferplus, folders.",
        "1.1.0": "FER+ label modes: configs ferplus_majority and ferplus_probability (with "
        "label_distribution); ferplus is plurality as before.",
    }
    BUILDER_CONFIGS = [
        Fer2013Config(name="csv", source="csv", description="fer2013.csv with its own labels."),
        Fer2013Config(
            name="ferplus",
            source="ferplus",
            description="fer2013.csv images, FER+ plurality labels (ties, contempt, unknown and "
            "NF dropped).",
        ),
        Fer2013Config(
            name="ferplus_majority",
            source="ferplus",
            ferplus_mode="majority",
            description="fer2013.csv images, FER+ majority labels (a column with more than half "
            "of the votes; other rows dropped).",
        ),
        Fer2013Config(
            name="ferplus_probability",
            source="ferplus",
            ferplus_mode="probability",
            description="FER+ plurality rows and labels plus label_distribution, the basic "
            "emotions' normalised votes (soft targets).",
        ),
        Fer2013Config(
            name="folders",
            source="folders",
            description="The image-folder variant train/<class>/, test/<class>/.",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
FER-2013 is the data of the Kaggle competition "Challenges in Representation Learning: Facial
Expression Recognition Challenge" (https://www.kaggle.com/c/challenges-in-representation-
learning-facial-expression-recognition-challenge/data); accept the competition rules to download.
Place in the manual dir (default ~/tensorflow_datasets/downloads/manual/, or --manual_dir=DIR):
  csv config:      DIR/fer2013.csv, or DIR/fer2013/fer2013.csv, or the archive as downloaded,
                   DIR/fer2013.tar.gz (holding fer2013/fer2013.csv).
  ferplus* configs: the above plus fer2013new.csv from https://github.com/microsoft/FERPlus,
                   beside fer2013.csv (DIR/fer2013new.csv or DIR/fer2013/fer2013new.csv).
  folders config:  the image-folder variant (e.g. Kaggle dataset msambare/fer2013) as
                   DIR/train/<class>/Training_<n>.jpg and DIR/test/<class>/PublicTest_<n>.jpg,
                   DIR/test/<class>/PrivateTest_<n>.jpg, with <class> one of angry disgust fear
                   happy neutral sad surprise; or its zip, DIR/archive.zip or DIR/fer2013.zip.
"""

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(SIZE, SIZE, 1)),
            "label": tfds.features.ClassLabel(names=labels.CLASS_NAMES),
        }
        source = self.builder_config.source
        if source == "folders":
            features["file_name"] = tfds.features.Text()
        else:
            features["row"] = tfds.features.Scalar(np.int32, doc="Row in fer2013.csv, from 0.")
        if source == "ferplus":
            features["votes"] = tfds.features.Tensor(
                shape=(len(labels.FERPLUS_COLUMNS),),
                dtype=np.int32,
                doc="FER+ vote counts: " + " ".join(labels.FERPLUS_COLUMNS),
            )
        if source == "ferplus" and self.builder_config.ferplus_mode == "probability":
            features["label_distribution"] = tfds.features.Tensor(
                shape=(len(labels.CLASS_NAMES),),
                dtype=np.float32,
                doc="The basic emotions' votes over their sum, canonical order; label is its "
                "arg-max.",
            )
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/c/challenges-in-representation-learning-facial-"
            "expression-recognition-challenge",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = common.manual_dir(dl_manager, NAME, _HINT)
        reader = media.ImageReader(NAME, self._skip_bad_images)
        source = self.builder_config.source
        if source == "folders":
            items = list_folders(_find_folders(manual_dir, dl_manager))
            return {
                split: self._generate_examples(split, items[split], reader, last)
                for split, last in zip(OFFICIAL_COUNTS, (False, False, True), strict=True)
            }
        csv_path = _find_csv(manual_dir, dl_manager)
        ferplus_path = None
        if source == "ferplus":
            ferplus_path = _find_ferplus(manual_dir, csv_path)
        rows, read, dropped = read_csv(
            csv_path, reader, ferplus_path, self.builder_config.ferplus_mode
        )
        self.info.metadata["skipped_images"] = reader.finish()  # every bad row, before writing
        for split, expected in OFFICIAL_COUNTS.items():
            common.check_count(NAME, split, read[split], expected)
        if ferplus_path:
            self._log_dropped(dropped)
        return {split: self._generate_from_rows(rows[split]) for split in OFFICIAL_COUNTS}

    def _log_dropped(self, dropped):
        where = f"{NAME}/{self.builder_config.name}"
        per_split = Counter()
        for (split, reason), n in sorted(dropped.items()):
            per_split[split] += n
            logging.info("%s: dropped %d %s rows of split %r", where, n, reason, split)
        for split in OFFICIAL_COUNTS:
            logging.info("%s: split %r: %d rows dropped", where, split, per_split[split])
        self.info.metadata["dropped_rows"] = {
            split: {r: n for (s, r), n in sorted(dropped.items()) if s == split}
            for split in OFFICIAL_COUNTS
        }

    def _generate_from_rows(self, rows):
        for row, label, image, votes in rows:
            example = {"image": image, "label": label, "row": row}
            if self.builder_config.source == "ferplus":
                example["votes"] = votes
            if self.builder_config.ferplus_mode == "probability":
                example["label_distribution"] = ferplus_distribution(votes)
            yield row, example

    def _generate_examples(self, split, items, reader, last):
        count = 0
        for key, path, label in items:
            image = reader.read(path)
            if image is None:
                continue
            image = common.to_gray(image)
            if image.shape != (SIZE, SIZE, 1):
                reader.bad.append(f"{path}: {image.shape[1]}x{image.shape[0]}, expected 48x48")
                continue
            count += 1
            yield key, {"image": image, "label": label, "file_name": key}
        if last:  # Splits are generated in order: report every bad file of the build at once.
            self.info.metadata["skipped_images"] = reader.finish()
        if reader.skip_bad or not reader.bad:
            common.check_count(NAME, split, count, OFFICIAL_COUNTS[split])


def list_folders(root):
    """Returns {split: [(train|test/<class>/<file>, path, label)]} of the folder variant.

    Every image must find a split and a class: train/<class>/ images are training images
    whatever their name; test/<class>/ images are split by their name prefix, PublicTest_ or
    PrivateTest_. An image the layout cannot place (a test image with neither prefix, an image
    outside the class folders) fails the build, naming the count and the first of them: the
    two test splits are the benchmark's, so neither guessing a split nor dropping images is
    safe. So does a split with no image at all (instead of tfds' "No examples were yielded").
    Files without an image extension (Thumbs.db, notes) and folders inside the class folders
    are not the layout's data: skipped, with one warning that counts and names them. An unknown
    class folder is a ValueError naming it.
    """
    items = {split: [] for split in OFFICIAL_COUNTS}
    unplaced, ignored = [], []
    for part in ("train", "test"):
        base = os.path.join(root, part)
        for name in sorted(os.listdir(base)):
            folder = os.path.join(base, name)
            if name.startswith("."):
                continue
            if not os.path.isdir(folder):
                (unplaced if media.is_image(name) else ignored).append(f"{part}/{name}")
                continue
            label = labels.map_code(labels.FER2013_FOLDERS, name, f"{folder}: class folder")
            for file in sorted(os.listdir(folder)):
                key = f"{part}/{name}/{file}"
                if file.startswith("."):
                    continue
                if os.path.isdir(os.path.join(folder, file)):
                    ignored.append(key + "/")
                    continue
                if not media.is_image(file):
                    ignored.append(key)
                    continue
                split = "train"
                if part == "test":
                    split = next((s for p, s in PREFIX_TO_SPLIT.items() if file.startswith(p)), "")
                    if not split:
                        unplaced.append(key)
                        continue
                items[split].append((key, os.path.join(folder, file), label))
    if unplaced:
        raise common.LayoutError(
            f"{NAME}/folders: {len(unplaced)} image(s) under {root} that the layout cannot "
            f"place (test/<class>/ images must be named PublicTest_* or PrivateTest_*, and "
            f"every image must be in a class folder): {_first(unplaced)}"
        )
    if ignored:
        logging.warning(
            "%s/folders: skipped %d file(s) or folder(s) that are not images in class "
            "folders under %s: %s",
            NAME,
            len(ignored),
            root,
            _first(ignored),
        )
    for split, where in FOLDER_SPLIT_FILES.items():
        if not items[split]:
            raise common.LayoutError(
                f"{NAME}/folders: split {split!r} has no images: expected {where} under {root}"
            )
    return items


def _first(names, shown=5):
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _find_csv(manual_dir, dl_manager):
    for cand in ("fer2013.csv", os.path.join("fer2013", "fer2013.csv")):
        if os.path.isfile(os.path.join(manual_dir, cand)):
            return os.path.join(manual_dir, cand)
    archive = os.path.join(manual_dir, "fer2013.tar.gz")
    if os.path.isfile(archive):
        root = os.fspath(dl_manager.extract(archive))
        for cand in (
            os.path.join(root, "fer2013", "fer2013.csv"),
            os.path.join(root, "fer2013.csv"),
        ):
            if os.path.isfile(cand):
                return cand
        raise FileNotFoundError(f"{NAME}: {archive} holds no fer2013/fer2013.csv")
    raise FileNotFoundError(
        f"{NAME}: label file {os.path.join(manual_dir, 'fer2013.csv')} not found (nor "
        f"fer2013/fer2013.csv, nor fer2013.tar.gz)"
    )


def _find_ferplus(manual_dir, csv_path):
    """fer2013new.csv beside fer2013.csv, or at the top of the manual dir (archive case)."""
    candidates = [os.path.join(os.path.dirname(csv_path), FERPLUS_FILE)]
    candidates += [os.path.join(manual_dir, FERPLUS_FILE)]
    candidates += [os.path.join(manual_dir, "fer2013", FERPLUS_FILE)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{NAME}/ferplus: FER+ labels {candidates[0]} not found; put fer2013new.csv from "
        "https://github.com/microsoft/FERPlus beside fer2013.csv (tfds build without --config "
        "builds every config, the FER+ ones too; --config=csv builds the Kaggle labels alone)"
    )


def _find_folders(manual_dir, dl_manager):
    """The folder holding train/ and test/: DIR, its only sub-folder, or an extracted zip's."""

    def holding(root):
        for cand in [root] + [os.path.join(root, n) for n in sorted(os.listdir(root))]:
            if all(os.path.isdir(os.path.join(cand, p)) for p in ("train", "test")):
                return cand
        return None

    found = holding(manual_dir)
    for name in FOLDER_ARCHIVES:
        archive = os.path.join(manual_dir, name)
        if found is None and os.path.isfile(archive):
            found = holding(os.fspath(dl_manager.extract(archive)))
    if found is None:
        raise FileNotFoundError(
            f"{NAME}/folders: no train/ and test/ class folders under {manual_dir} (nor in "
            f"{' or '.join(FOLDER_ARCHIVES)})"
        )
    return found
