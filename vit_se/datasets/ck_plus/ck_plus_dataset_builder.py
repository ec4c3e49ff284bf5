"""CK+ as a tfds builder: the usual frame protocol on the original sequences, in subject folds.

Only the 327 sequences (of 593) with an `Emotion/.../*_emotion.txt` file are labelled. From each
the last three frames (the apex end of the onset-to-apex sequence) carry its label; the
`*_neutral` configs also take the first frame as neutral (only when the sequence has four or
more frames, so no frame gets two labels; a sequence shorter than three frames gives all its
frames). CK+ codes are mapped once, through `labels.CK_PLUS_CODES`, into the canonical order
angry, disgust, fear, happy, sad, surprise, neutral; the `8class*` configs keep contempt as an
eighth class (index 7), the 7-class configs drop contempt sequences entirely.

The frames are 640x490 or 640x480, mostly 8-bit gray but some RGB: every image is emitted with
one channel (RGB reduced to ITU-R 601 luma), so a dataset has one encoding and the gray
majority is stored as is. The `ck48_*` configs read the widely shared CK+48 variant instead
(class folders of 48x48 crops, already the last three frames, no neutral). The `*_face224`
configs crop the largest face (OpenCV's Haar cascade, shipped inside the cv2 wheel) and resize it
to 224x224; the `*_aligned224` configs align the largest MTCNN face of the full frame by its 5
landmarks to the template of `vit_se.datasets.faces`, at 224x224. Frames with no face found get
the centre square (resized to 224), counted in a warning and in
`info.metadata['face_crop_fallbacks']`. Counts that differ from the published ones (327 labelled
sequences; 981 frames for 8 classes, 927 for 7) are warned with both numbers.

Evaluation is subject-independent 10-fold cross-validation: `folds.json` lists the 123 CK+
subjects, sorted, subject i in fold i % 10. Splits `fold0` ... `fold9` hold each fold's
examples; `fold_splits(k)` gives the (train, test) split strings of fold k.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vit_se import media
from vit_se.datasets import common, labels

NAME = "ck_plus"
NUM_FOLDS = 10
FOLDS_FILE = os.path.join(os.path.dirname(__file__), "folds.json")
OFFICIAL_LABELLED_SEQUENCES = 327
OFFICIAL_CONTEMPT_SEQUENCES = 18
FRAME_RE = re.compile(r"^(S\d{3})_(\d{3})_(\d{8})\.png$")
EMOTION_RE = re.compile(r"^(S\d{3})_(\d{3})_(\d{8})_emotion\.txt$")
IMAGES_DIR = "cohn-kanade-images"
EMOTION_DIR = "Emotion"
NEUTRAL = labels.CLASS_NAMES.index("neutral")

_CITATION = """\
@inproceedings{lucey2010extended,
  title={The Extended {C}ohn-{K}anade Dataset ({CK+}): A complete dataset for action unit and
         emotion-specified expression},
  author={Lucey, Patrick and Cohn, Jeffrey F. and Kanade, Takeo and Saragih, Jason and
          Ambadar, Zara and Matthews, Iain},
  booktitle={IEEE Computer Society Conference on Computer Vision and Pattern Recognition
             Workshops (CVPRW)},
  pages={94--101},
  year={2010}
}
@inproceedings{kanade2000comprehensive,
  title={Comprehensive database for facial expression analysis},
  author={Kanade, Takeo and Cohn, Jeffrey F. and Tian, Yingli},
  booktitle={Proceedings Fourth IEEE International Conference on Automatic Face and Gesture
             Recognition},
  pages={46--53},
  year={2000}
}
"""


def fold_splits(k, num_folds=NUM_FOLDS):
    """Returns the (train, test) split strings of fold k, e.g. ('fold1+...+fold9', 'fold0')."""
    return common.fold_splits(k, num_folds)


def select_frames(num_frames, first_frame_neutral):
    """Returns [(0-based position, is_neutral)] of the frames a labelled sequence contributes.

    The last three positions carry the sequence label; with `first_frame_neutral` position 0 is
    added as neutral when it is not one of the last three. E.g. 10 frames -> positions 7, 8, 9
    (frames 8, 9, 10) and, optionally, 0 (frame 1).
    """
    chosen = [(i, False) for i in range(max(0, num_frames - 3), num_frames)]
    if first_frame_neutral and num_frames >= 4:
        chosen.insert(0, (0, True))
    return chosen


def read_emotion_file(path):
    """Returns the CK+ code (0..7) in an Emotion file, failing with the file named."""
    with open(path) as f:
        text = f.read().strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: expected one float emotion code, got {text[:40]!r}") from None
    code = int(value) if value.is_integer() else value
    labels.map_code(labels.CK_PLUS_CODES, code, path)
    return code


def expected_count(config, num_sequences=OFFICIAL_LABELLED_SEQUENCES):
    """Official example count of a config on the full data (327 sequences, 18 of them contempt).

    327 * 3 = 981 is the published CK+48 size; 7 classes drop 18 contempt sequences (927);
    first-frame neutral adds one frame per kept sequence.
    """
    kept = num_sequences - (0 if config.contempt else OFFICIAL_CONTEMPT_SEQUENCES)
    return kept * (4 if config.first_frame_neutral else 3)


@dataclasses.dataclass
class CkPlusConfig(tfds.core.BuilderConfig):
    """Which source and protocol: see the module docstring."""

    ck48: bool = False  # read the CK+48 class folders instead of the sequences
    contempt: bool = False  # 8 classes (contempt = 7) instead of 7
    first_frame_neutral: bool = False
    face_size: int = 0  # > 0: face crop (face_method) to face_size x face_size
    face_method: str = "haar"  # 'haar' or 'aligned' (vit_se.datasets.faces)

    @property
    def face_crop(self):
        return self.face_method if self.face_size else "none"


def _configs():
    out = []
    for contempt in (False, True):
        classes = "8class" if contempt else "7class"
        for neutral in (False, True):
            suffix = "_neutral" if neutral else ""
            what = "last 3 frames" + (" + first frame as neutral" if neutral else "")
            out.append(
                CkPlusConfig(
                    name=classes + suffix,
                    contempt=contempt,
                    first_frame_neutral=neutral,
                    description=f"{classes}, {what}, full frames as stored.",
                )
            )
            if not contempt:
                out.append(
                    CkPlusConfig(
                        name=f"{classes}{suffix}_face224",
                        contempt=contempt,
                        first_frame_neutral=neutral,
                        face_size=224,
                        description=f"{classes}, {what}, face crop (OpenCV Haar) at 224x224.",
                    )
                )
                out.append(
                    CkPlusConfig(
                        name=f"{classes}{suffix}_aligned224",
                        contempt=contempt,
                        first_frame_neutral=neutral,
                        face_size=224,
                        face_method="aligned",
                        description=f"{classes}, {what}, face aligned by its 5 MTCNN landmarks "
                        "at 224x224.",
                    )
                )
    for contempt in (False, True):
        classes = "8class" if contempt else "7class"
        out.append(
            CkPlusConfig(
                name=f"ck48_{classes}",
                ck48=True,
                contempt=contempt,
                description=f"CK+48 class folders (48x48 crops), {classes}.",
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class _Item:
    path: str
    label: int
    subject: str
    sequence: str
    frame: int


class Builder(common.SkipBadImages, tfds.core.GeneratorBasedBuilder):
    """CK+ (extended Cohn-Kanade) posed expression sequences, in subject-independent folds.

    Pass `skip_bad_images=True` to drop unreadable files (counted in a warning and in
    `info.metadata['skipped_images']`) instead of failing the build.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: splits fold0..fold9 by subject; last-3-frames protocol with "
        "optional first-frame neutral, 7/8 classes, face-crop and CK+48 configs.",
        "1.1.0": "Configs 7class_aligned224 and 7class_neutral_aligned224 (MTCNN 5-point "
        "alignment); other configs unchanged.",
    }
    BUILDER_CONFIGS = _configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
CK+ is distributed by its authors for non-commercial research under a signed agreement: request
it at https://www.jeffcohn.net/Resources/ (CK+ database). Place in the manual dir (default
~/tensorflow_datasets/downloads/manual/, or --manual_dir=DIR), unchanged, either the archives
  extended-cohn-kanade-images.zip and Emotion_labels.zip
or their extracted folders
  DIR/cohn-kanade-images/S005/001/S005_001_00000001.png ...
  DIR/Emotion/S005/001/S005_001_00000011_emotion.txt ...
(FACS_labels and Landmarks are not needed.) For the ck48_* configs place the CK+48 variant's
folder instead: DIR/CK+48/{anger,contempt,disgust,fear,happy,sadness,surprise}/S010_004_00000017.png
(or its .zip). Folders are found up to four levels below DIR.
"""

    def _info(self):
        config = self.builder_config
        size = config.face_size or None
        names = labels.CLASS_NAMES_WITH_CONTEMPT if config.contempt else labels.CLASS_NAMES
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1)),
                    "label": tfds.features.ClassLabel(names=names),
                    "subject_id": tfds.features.Text(),
                    "sequence_id": tfds.features.Text(),  # e.g. S005_001
                    "frame_index": tfds.features.Scalar(dtype=np.int32),  # 1-based, as in files
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.jeffcohn.net/Resources/",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        hint = "CK+48/<class>/*.png" if config.ck48 else f"{IMAGES_DIR}/ and {EMOTION_DIR}/"
        manual_dir = common.manual_dir(dl_manager, NAME, hint)
        if config.ck48:
            items = self._ck48_items(dl_manager, manual_dir)
        else:
            items = self._sequence_items(dl_manager, manual_dir)
        common.check_count(NAME, f"all ({config.name})", len(items), expected_count(config))

        assigner = common.FoldAssigner(NAME, FOLDS_FILE)
        folds = [[] for _ in range(NUM_FOLDS)]
        for item in items:
            folds[assigner(item.subject)].append(item)
        empty = [k for k in range(NUM_FOLDS) if not folds[k]]
        if empty:
            raise ValueError(f"{NAME}: folds {empty} have no images under {manual_dir!r}")
        state = _BuildState(
            media.ImageReader(NAME, self._skip_bad_images),
            common.FaceCropper(NAME, config.face_crop, config.face_size or None),
        )
        return {
            f"fold{k}": self._generate_examples(folds[k], state, last=k == NUM_FOLDS - 1)
            for k in range(NUM_FOLDS)
        }

    def _generate_examples(self, items, state, last):
        for item in items:
            image = state.reader.read(item.path)
            if image is None:
                continue
            name = os.path.basename(item.path)
            yield (
                name,
                {
                    "image": state.cropper(common.to_gray(image)),
                    "label": item.label,
                    "subject_id": item.subject,
                    "sequence_id": f"{item.subject}_{item.sequence}",
                    "frame_index": item.frame,
                    "file_name": name,
                },
            )
        if last:  # Splits are generated in order: report every bad file of the build at once.
            self.info.metadata["skipped_images"] = state.reader.finish()
            self.info.metadata["face_crop_fallbacks"] = state.cropper.finish()

    def _sequence_items(self, dl_manager, manual_dir):
        """Lists the frames the protocol takes, with labels, from the original sequences."""
        config = self.builder_config
        images_dir, emotion_dir = _find_dirs(manual_dir, (IMAGES_DIR, EMOTION_DIR))
        if images_dir is None or emotion_dir is None:
            archives = common.extract_archives(dl_manager, manual_dir)
            found = [_find_dirs(root, (IMAGES_DIR, EMOTION_DIR)) for root in archives]
            images_dir = images_dir or next((d[0] for d in found if d[0]), None)
            emotion_dir = emotion_dir or next((d[1] for d in found if d[1]), None)
        if images_dir is None:
            raise FileNotFoundError(
                f"{NAME}: no {IMAGES_DIR}/ folder under {manual_dir!r} nor in archives there "
                f"(extended-cohn-kanade-images.zip); expected {IMAGES_DIR}/S005/001/"
                "S005_001_00000001.png"
            )
        if emotion_dir is None:
            raise FileNotFoundError(
                f"{NAME}: no {EMOTION_DIR}/ label folder under {manual_dir!r} nor in archives "
                f"there (Emotion_labels.zip); expected {EMOTION_DIR}/S005/001/"
                "S005_001_00000011_emotion.txt"
            )
        items, labelled = [], 0
        for subject, sequence, emotion_path in _emotion_files(emotion_dir):
            frames = _sequence_frames(os.path.join(images_dir, subject, sequence))
            if not frames:
                logging.warning("%s: %s has no image sequence; skipped", NAME, emotion_path)
                continue
            labelled += 1
            code = read_emotion_file(emotion_path)
            peak = int(EMOTION_RE.match(os.path.basename(emotion_path)).group(3))
            if peak != frames[-1][0]:
                logging.warning(
                    "%s: %s names frame %d but the sequence ends at frame %d",
                    NAME,
                    emotion_path,
                    peak,
                    frames[-1][0],
                )
            if code == labels.CK_PLUS_CONTEMPT_CODE and not config.contempt:
                continue
            label = labels.CK_PLUS_CODES[code]
            for position, neutral in select_frames(len(frames), config.first_frame_neutral):
                frame, path = frames[position]
                items.append(_Item(path, NEUTRAL if neutral else label, subject, sequence, frame))
        common.check_count(NAME, "labelled sequences", labelled, OFFICIAL_LABELLED_SEQUENCES)
        return items

    def _ck48_items(self, dl_manager, manual_dir):
        """Lists the CK+48 class-folder images with labels from the folder names."""
        root = _find_ck48(manual_dir)
        if root is None:
            for extracted in common.extract_archives(dl_manager, manual_dir):
                root = _find_ck48(extracted)
                if root:
                    break
        if root is None:
            raise FileNotFoundError(
                f"{NAME}: no CK+48 class folders (anger/ ... surprise/) under {manual_dir!r} nor "
                "in archives there"
            )
        items = []
        for folder in sorted(os.listdir(root)):
            folder_path = os.path.join(root, folder)
            if folder[0] == "." or folder == "__MACOSX" or not os.path.isdir(folder_path):
                continue
            label = labels.map_code(labels.CK_PLUS_48_FOLDERS, folder, folder_path)
            if label == labels.CLASS_NAMES_WITH_CONTEMPT.index("contempt") and (
                not self.builder_config.contempt
            ):
                continue
            for name in sorted(os.listdir(folder_path)):
                if name[0] == "." or not name.lower().endswith(".png"):
                    continue
                path = os.path.join(folder_path, name)
                m = FRAME_RE.match(name)
                if not m:
                    raise ValueError(f"{path}: not a CK+ frame name like S010_004_00000017.png")
                items.append(_Item(path, label, m.group(1), m.group(2), int(m.group(3))))
        return items


@dataclasses.dataclass
class _BuildState:
    reader: media.ImageReader
    cropper: common.FaceCropper


def _find_dirs(root, names):
    """Returns, for each name, the first folder so named under root (breadth-first), or None."""
    found = dict.fromkeys(names)
    for path in sorted(common.iter_dirs(root), key=lambda p: (p.count(os.sep), p)):
        base = os.path.basename(path)
        if base in found and found[base] is None:
            found[base] = path
    return tuple(found[n] for n in names)


def _find_ck48(root):
    """Returns the folder holding the CK+48 class folders, or None."""
    for path in sorted(common.iter_dirs(root), key=lambda p: (p.count(os.sep), p)):
        if all(os.path.isdir(os.path.join(path, c)) for c in ("anger", "happy", "surprise")):
            return path
    return None


def _emotion_files(emotion_dir):
    """Yields (subject, sequence, path) for each labelled sequence; two label files is an error.

    Unlabelled sequences have an empty folder (or none) in the real Emotion tree.
    """
    for subject in sorted(os.listdir(emotion_dir)):
        subject_dir = os.path.join(emotion_dir, subject)
        if subject[0] == "." or not os.path.isdir(subject_dir):
            continue
        for sequence in sorted(os.listdir(subject_dir)):
            sequence_dir = os.path.join(subject_dir, sequence)
            if sequence[0] == "." or not os.path.isdir(sequence_dir):
                continue
            files = sorted(n for n in os.listdir(sequence_dir) if n.endswith("_emotion.txt"))
            if not files:
                continue
            if len(files) > 1:
                raise ValueError(f"{sequence_dir}: {len(files)} emotion files, expected one")
            path = os.path.join(sequence_dir, files[0])
            m = EMOTION_RE.match(files[0])
            if not m or (m.group(1), m.group(2)) != (subject, sequence):
                raise ValueError(
                    f"{path}: expected a name like {subject}_{sequence}_00000011_emotion.txt"
                )
            yield subject, sequence, path


def _sequence_frames(sequence_dir):
    """Returns [(frame number, path)] sorted by frame number; [] if the folder is missing."""
    if not os.path.isdir(sequence_dir):
        return []
    frames = []
    for name in os.listdir(sequence_dir):
        if name[0] == "." or not name.lower().endswith(".png"):
            continue
        m = FRAME_RE.match(name)
        path = os.path.join(sequence_dir, name)
        if not m:
            raise ValueError(f"{path}: not a CK+ frame name like S005_001_00000001.png")
        frames.append((int(m.group(3)), path))
    return sorted(frames)
