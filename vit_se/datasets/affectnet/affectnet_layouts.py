"""AffectNet's two distributed layouts, read without writing anything: CSV rows, image sources
(an extracted folder or the zip as shipped), and the class-folder variant.

The builder (`affectnet_dataset_builder`) turns what these find into examples; keeping the file
formats here lets it read as the tfds builder it is, and lets a script check a download (count
rows, find missing images) without tfds. Every error names the file, line or folder and what was
expected.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import zipfile

import numpy as np
from absl import logging

from vit_se import media
from vit_se.datasets import common, labels

NAME = "affectnet"
LISTS_DIR = "Manually_Annotated_file_lists"
LISTS_ARCHIVE = LISTS_DIR + ".zip"
IMAGES_DIR = "Manually_Annotated_Images"
CSV_FILES = {"train": "training.csv", "validation": "validation.csv"}
COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
NUM_LANDMARKS = 68
# Split folders of the class-folder variant and the split each becomes.
FOLDER_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
_MAX_DEPTH = 4


@dataclasses.dataclass(frozen=True)
class Row:
    """One kept CSV row (an expression label), parsed."""

    line: int
    file: str
    label: int
    box: tuple
    landmarks: np.ndarray | None  # (68, 2) float32, None when the CSV field is empty
    valence: float
    arousal: float


def _number(text, where, column, integral=False):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not a number") from None
    if integral:
        if not value.is_integer():
            raise ValueError(f"{where}: {column} {text!r} is not an integer")
        return int(value)
    return value


def parse_landmarks(text, where):
    """The CSV's `x1;y1;...;x68;y68` as float32 [68, 2]; None for an empty field."""
    text = text.strip()
    if not text:
        return None
    values = text.split(";")
    if len(values) != 2 * NUM_LANDMARKS:
        raise ValueError(
            f"{where}: facial_landmarks has {len(values)} values, expected {2 * NUM_LANDMARKS} "
            "(68 x;y pairs separated by ';')"
        )
    try:
        points = np.array(values, dtype=np.float32)
    except ValueError:
        raise ValueError(f"{where}: facial_landmarks values are not all numbers") from None
    return points.reshape(NUM_LANDMARKS, 2)


def read_csv(path, contempt):
    """Yields (Row, None) for each kept row of an AffectNet CSV and (None, reason) for each drop.

    Streams the file. A header row (first field `subDirectory_filePath`) maps the columns by
    name; without one the columns are taken in the distributed order (COLUMNS). Raises a
    ValueError naming the file and line for a row with the wrong number of fields, a
    non-integer or unknown expression code, or a malformed kept row (box, landmarks, valence,
    arousal). Only the file name and code of a dropped row are checked: no-face rows carry
    placeholders (valence and arousal -2) in the real files.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        col = {name: i for i, name in enumerate(COLUMNS)}
        num_fields = len(COLUMNS)
        for line, fields in enumerate(rows, 1):
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if line == 1 and fields[0].strip() == COLUMNS[0]:
                header = [h.strip() for h in fields]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise ValueError(f"{path} line 1: header {header} lacks columns {missing}")
                col = {name: header.index(name) for name in COLUMNS}
                num_fields = len(header)
                continue
            where = f"{path} line {line}"
            if len(fields) != num_fields:
                raise ValueError(
                    f"{where}: {len(fields)} fields, expected {num_fields} ({', '.join(COLUMNS)})"
                )
            file = fields[col["subDirectory_filePath"]].strip()
            if not file:
                raise ValueError(f"{where}: subDirectory_filePath is empty")
            code = fields[col["expression"]].strip()
            if not code.lstrip("-").isdigit():
                raise ValueError(f"{where}: expression {code!r} is not an integer code")
            code = int(code)
            if code in labels.AFFECTNET_NON_EXPRESSION_CODES:
                yield None, labels.AFFECTNET_NON_EXPRESSION_CODES[code]
                continue
            if code not in labels.AFFECTNET_CODES:
                raise ValueError(f"{where}: unknown label {code}; expected one of 0..10")
            label = labels.AFFECTNET_CODES[code]
            if code == labels.AFFECTNET_CONTEMPT_CODE and not contempt:
                yield None, "contempt"
                continue
            box = tuple(
                _number(fields[col[c]], where, c, integral=True)
                for c in ("face_x", "face_y", "face_width", "face_height")
            )
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"{where}: face box {box} has no area")
            yield (
                Row(
                    line=line,
                    file=file,
                    label=label,
                    box=box,
                    landmarks=parse_landmarks(fields[col["facial_landmarks"]], where),
                    valence=_number(fields[col["valence"]], where, "valence"),
                    arousal=_number(fields[col["arousal"]], where, "arousal"),
                ),
                None,
            )


@dataclasses.dataclass
class _Scan:
    """What one pass over a split's listing found: counts only, no images."""

    listed: int = 0
    per_class: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    duplicates: list = dataclasses.field(default_factory=list)  # CSV lines to skip
    missing: list = dataclasses.field(default_factory=list)  # (CSV line or key, where)


class _FolderImages:
    """Images of the CSV layout read from an extracted Manually_Annotated_Images/."""

    def __init__(self, root):
        self.root = root

    def where(self, file):
        return os.path.join(self.root, *file.split("/"))

    def exists(self, file):
        return os.path.isfile(self.where(file))

    def read(self, file):
        with open(self.where(file), "rb") as f:
            return f.read()


class _ZipImages:
    """Images of the CSV layout read member by member from the distributed zip, not extracted.

    A zip's central directory gives random access, so members are read in CSV order and only
    the one being decoded is in memory.
    """

    def __init__(self, path, prefix):
        self.path = path
        self.prefix = prefix
        self._zip = None
        self._names = None

    def _open(self):
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
            self._names = set(self._zip.namelist())
        return self._zip

    def where(self, file):
        return f"{self.path}:{self.prefix}{file}"

    def exists(self, file):
        self._open()
        return self.prefix + file in self._names

    def read(self, file):
        with self._open().open(self.prefix + file) as f:
            return f.read()


def scan_csv(path, contempt, images):
    """Counts a CSV's rows per class and reason without reading images; finds missing files."""
    scan = _Scan()
    first_line = {}
    for row, reason in read_csv(path, contempt):
        if row is None:
            scan.dropped[reason] += 1
            continue
        if row.file in first_line:
            scan.duplicates.append(row.line)
            continue
        first_line[row.file] = row.line
        scan.listed += 1
        scan.per_class[row.label] += 1
        if not images.exists(row.file):
            scan.missing.append((row.line, f"{path} line {row.line}: {images.where(row.file)}"))
    return scan


def find_lists(manual_dir, dl_manager):
    """{'train': training.csv, 'validation': validation.csv}, from folders or the lists zip."""
    found = _lists_under(manual_dir)
    if found is None:
        for archive in _files_named(manual_dir, (LISTS_ARCHIVE,)):
            logging.info("%s: reading %s", NAME, archive)
            found = _lists_under(os.fspath(dl_manager.extract(archive)))
            if found is not None:
                break
    return found


def _lists_under(root):
    """The CSV pair in the first folder (breadth-first, Manually_Annotated_file_lists first)."""
    folders = sorted(common.iter_dirs(root, _MAX_DEPTH), key=lambda p: (p.count(os.sep), p))
    folders.sort(key=lambda p: os.path.basename(p) != LISTS_DIR)
    for folder in folders:
        paths = {split: os.path.join(folder, name) for split, name in CSV_FILES.items()}
        present = [os.path.isfile(p) for p in paths.values()]
        if all(present):
            return paths
        if any(present):
            missing = [p for p, ok in zip(paths.values(), present, strict=True) if not ok]
            raise FileNotFoundError(f"{NAME}: {missing[0]} not found beside the other CSV file")
    return None


def _files_named(root, names=None, suffix=None):
    """Files under root (down to two levels) with one of `names`, or ending with `suffix`."""
    out = []
    for folder in sorted(common.iter_dirs(root, 2), key=lambda p: (p.count(os.sep), p)):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name[0] == "." or not os.path.isfile(path):
                continue
            if (names and name in names) or (suffix and name.lower().endswith(suffix)):
                out.append(path)
    return out


def _first_file(lists):
    """The first image named by the CSV files, to tell which image folder or zip is theirs."""
    for path in lists.values():
        for row, _ in read_csv(path, contempt=True):
            if row is not None:
                return row.file
    return None


def find_images(manual_dir, lists):
    """The source of the CSV layout's images: an extracted folder, else the zip holding them."""
    first = _first_file(lists)
    folders = [
        p
        for p in sorted(
            common.iter_dirs(manual_dir, _MAX_DEPTH), key=lambda p: (p.count(os.sep), p)
        )
        if os.path.basename(p) == IMAGES_DIR
    ]
    for folder in folders:
        if first is None or os.path.isfile(os.path.join(folder, *first.split("/"))):
            return _FolderImages(folder)
    for archive in _files_named(manual_dir, suffix=".zip"):
        if os.path.basename(archive) == LISTS_ARCHIVE:
            continue
        prefix = _zip_prefix(archive, first)
        if prefix is not None:
            logging.info("%s: reading images from %s (not extracted)", NAME, archive)
            return _ZipImages(archive, prefix)
    if folders:  # The folder is there but lacks the first listed image: report it as missing.
        return _FolderImages(folders[0])
    rars = _files_named(manual_dir, suffix=".rar")
    if rars:
        raise FileNotFoundError(
            f"{NAME}: found {rars[0]} but no {IMAGES_DIR}/ folder; RAR archives cannot be read "
            f"by Python's standard library: extract it first (unrar x {rars[0]})"
        )
    raise FileNotFoundError(
        f"{NAME}: no {IMAGES_DIR}/ folder under {manual_dir!r} nor a zip holding the images "
        f"listed in {lists['train']} (first: {first})"
    )


def _zip_prefix(archive, first):
    """The member-name prefix under which `archive` holds the listed files, or None."""
    try:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
    except zipfile.BadZipFile as e:
        logging.warning("%s: %s is not a readable zip (%s); ignored", NAME, archive, e)
        return None
    marker = IMAGES_DIR + "/"
    for name in names:
        if first is not None and (name == first or name.endswith("/" + first)):
            return name[: len(name) - len(first)]
    for name in names:
        i = name.find(marker)
        if i >= 0 and (i == 0 or name[i - 1] == "/"):
            return name[: i + len(marker)]
    return None


def find_class_folders(manual_dir):
    """The folder holding train/ with numbered class folders (the shared variant), or None."""
    for path in sorted(common.iter_dirs(manual_dir, 3), key=lambda p: (p.count(os.sep), p)):
        train = os.path.join(path, "train")
        if os.path.isdir(train) and any(
            n.isdigit() and os.path.isdir(os.path.join(train, n)) for n in os.listdir(train)
        ):
            return path
    return None


def list_class_folders(root, contempt):
    """{split: (_Scan, [(key, path, label)])} of the class-folder variant.

    Raises a ValueError naming the folder for a class folder that is not an AffectNet code.
    Folders 8..10, if a copy has them, are dropped and counted like the CSV rows.
    """
    out = {}
    for part in FOLDER_SPLITS:
        base = os.path.join(root, part)
        if not os.path.isdir(base):
            continue
        split = FOLDER_SPLITS[part]
        if split in out:
            raise ValueError(f"{NAME}: both val/ and validation/ under {root!r}; keep one")
        scan, files = _Scan(), []
        for folder in sorted(os.listdir(base)):
            folder_path = os.path.join(base, folder)
            if folder[0] == "." or not os.path.isdir(folder_path):
                continue
            where = f"{folder_path}: class folder"
            if not folder.isdigit():
                raise ValueError(f"{where}: {folder!r} is not an AffectNet code 0..7")
            code = int(folder)
            names = [os.path.basename(p) for p in media.find([folder_path], recursive=False)]
            if code in labels.AFFECTNET_NON_EXPRESSION_CODES:
                scan.dropped[labels.AFFECTNET_NON_EXPRESSION_CODES[code]] += len(names)
                continue
            label = labels.map_code(labels.AFFECTNET_CODES, code, where)
            if code == labels.AFFECTNET_CONTEMPT_CODE and not contempt:
                scan.dropped["contempt"] += len(names)
                continue
            for name in names:
                files.append((f"{part}/{folder}/{name}", os.path.join(folder_path, name), label))
                scan.per_class[label] += 1
        scan.listed = len(files)
        out[split] = (scan, files)
    if "train" not in out:
        raise FileNotFoundError(f"{NAME}: no train/ folder under {root!r}")
    return out
