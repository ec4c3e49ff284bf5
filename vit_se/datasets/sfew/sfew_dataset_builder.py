"""SFEW 2.0 as a tfds builder: movie frames (or the organisers' aligned faces) in class folders.

Labels are the class folder names (Angry Disgust Fear Happy Neutral Sad Surprise), mapped once,
through `labels.SFEW_FOLDERS`, into the canonical order angry, disgust, fear, happy, sad,
surprise, neutral. Splits are the official `train` (Train/) and `validation` (Val/). SFEW's Test/
images carry no public labels and are ignored: an unlabelled split invites reporting on it, and
the protocol of the literature is train on Train, report on Val.

Configs:
  aligned (default): the aligned faces the EmotiW organisers distribute (Train_Aligned_Faces.zip,
    Val_Aligned_Faces_new.zip), as stored. Their detector missed some frames, so these splits are
    legitimately smaller than the official 958 / 436; the size warning says so.
  frames: the 720x576 movie frames of Train/ and Val/, as stored.
  frames_face_crop: the frames cropped to the largest face (OpenCV Haar cascade; centre crop with
    a counted warning when none is found) and resized to 224x224.
  frames_aligned: the largest MTCNN face of each frame aligned by its 5 landmarks to the
    template of `vit_se.datasets.faces`, 224x224 (same centre-crop fallback, counted in
    `info.metadata['face_crop_fallbacks']`).
Images are RGB; a gray file is repeated to three channels so the feature has one shape.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vit_se import media
from vit_se.datasets import common, labels

NAME = "sfew"
SPLITS = {"train": "Train", "validation": "Val"}
OFFICIAL_COUNTS = {"train": 958, "validation": 436}
# Folder (and archive) names of the aligned-face release, most specific first.
ALIGNED_NAMES = {
    "Train": ("Train_Aligned_Faces",),
    "Val": ("Val_Aligned_Faces_new", "Val_Aligned_Faces"),
}
_HINT = "Train/<Class>/*.png and Val/<Class>/*.png, or the *_Aligned_Faces folders or zips"

_CITATION = """\
@inproceedings{dhall2011static,
  title={Static Facial Expression Analysis in Tough Conditions: Data, Evaluation Protocol and
         Benchmark},
  author={Dhall, Abhinav and Goecke, Roland and Lucey, Simon and Gedeon, Tom},
  booktitle={IEEE International Conference on Computer Vision Workshops (ICCV Workshops)},
  pages={2106--2112},
  year={2011}
}
@inproceedings{dhall2015video,
  title={Video and Image based Emotion Recognition Challenges in the Wild: {EmotiW} 2015},
  author={Dhall, Abhinav and Ramana Murthy, O. V. and Goecke, Roland and Joshi, Jyoti and
          Gedeon, Tom},
  booktitle={ACM International Conference on Multimodal Interaction (ICMI)},
  pages={423--426},
  year={2015}
}
"""


@dataclasses.dataclass
class SfewConfig(tfds.core.BuilderConfig):
    """`aligned` reads the aligned-face release; `face_size` > 0 face-crops frames to that size
    by `face_method` ('haar' or 'aligned')."""

    aligned: bool = False
    face_size: int = 0
    face_method: str = "haar"

    @property
    def face_crop(self):
        return self.face_method if self.face_size else "none"


class Builder(common.SkipBadImages, tfds.core.GeneratorBasedBuilder):
    """SFEW 2.0 (EmotiW 2015): faces in movie frames, 7 classes, official train/validation.

    Pass `skip_bad_images=True` to drop unreadable images (counted in a warning and in
    `info.metadata['skipped_images']`) instead of failing the build.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train/validation; configs aligned, frames, frames_face_crop.",
        "1.1.0": "Config frames_aligned (MTCNN 5-point alignment); other configs unchanged.",
    }
    BUILDER_CONFIGS = [
        SfewConfig(
            name="aligned",
            aligned=True,
            description="The distributed aligned faces, as stored (fewer than the frames).",
        ),
        SfewConfig(name="frames", description="The 720x576 movie frames, as stored."),
        SfewConfig(
            name="frames_face_crop",
            face_size=224,
            description="Frames cropped to the largest face (Haar; centre-crop fallback), 224x224.",
        ),
        SfewConfig(
            name="frames_aligned",
            face_size=224,
            face_method="aligned",
            description="Largest face of each frame aligned by its 5 MTCNN landmarks "
            "(centre-crop fallback), 224x224.",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
SFEW 2.0 is distributed by the EmotiW organisers (Abhinav Dhall et al.) for research use after
signing their licence agreement: see https://cs.anu.edu.au/few/ (EmotiW / FEW project pages).
Place in the manual dir (default ~/tensorflow_datasets/downloads/manual/, or --manual_dir=DIR):
  frames configs:  DIR/Train/<Class>/*.png and DIR/Val/<Class>/*.png as extracted, or the zips
                   DIR/Train.zip and DIR/Val.zip holding them.
  aligned config:  the aligned-face zips as distributed, DIR/Train_Aligned_Faces.zip and
                   DIR/Val_Aligned_Faces_new.zip (or Val_Aligned_Faces.zip), or their extracted
                   folders, either at the top (DIR/Train_Aligned_Faces/<Class>/*.png) or inside
                   the split folder (DIR/Train/Train_Aligned_Faces/<Class>/*.png); failing those,
                   DIR/Train/<Class> and DIR/Val/<Class> are read as aligned faces.
<Class> is one of Angry Disgust Fear Happy Neutral Sad Surprise. A zip may hold the class folders
at its top or inside one folder. Test/ (no public labels) is not read.
"""

    def _info(self):
        size = self.builder_config.face_size or None
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3)),
                    "label": tfds.features.ClassLabel(names=labels.CLASS_NAMES),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://cs.anu.edu.au/few/",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = common.manual_dir(dl_manager, NAME, _HINT)
        cfg = self.builder_config
        items = {}
        for split, folder in SPLITS.items():
            root = _find_split(manual_dir, folder, cfg.aligned, dl_manager)
            logging.info("%s: reading split %r from %s", NAME, split, root)
            items[split] = list_class_folders(root)
        reader = media.ImageReader(NAME, self._skip_bad_images)
        cropper = common.FaceCropper(NAME, cfg.face_crop, cfg.face_size or None)
        return {
            split: self._generate_examples(split, items[split], reader, cropper, last)
            for split, last in (("train", False), ("validation", True))
        }

    def _generate_examples(self, split, items, reader, cropper, last):
        count = 0
        for key, path, label in items:
            image = reader.read(path)
            if image is None:
                continue
            if image.shape[-1] == 1:
                image = np.repeat(image, 3, axis=-1)
            count += 1
            yield key, {"image": cropper(image), "label": label, "file_name": key}
        if last:  # Splits are generated in order: report every bad file of the build at once.
            self.info.metadata["skipped_images"] = reader.finish()
            self.info.metadata["face_crop_fallbacks"] = cropper.finish()
        if reader.skip_bad or not reader.bad:
            _check_count(split, count, self.builder_config.aligned)


def list_class_folders(root):
    """Returns [(Class/file, path, label)] for the images in root/<Class>/, sorted.

    Raises a ValueError naming the folder for a class folder SFEW does not have. Hidden files,
    __MACOSX and the aligned-face folders (when frames and faces share Train/) are skipped.
    """
    items = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder) or _skipped(name):
            continue
        label = labels.map_code(labels.SFEW_FOLDERS, name, f"{folder}: class folder")
        for path in media.find([folder], recursive=False):
            items.append((f"{name}/{os.path.basename(path)}", path, label))
    return items


def _hidden(name):
    return name.startswith(".") or name == "__MACOSX"


def _skipped(name):
    return _hidden(name) or any(name in names for names in ALIGNED_NAMES.values())


def _class_root(path):
    """Returns path when it holds SFEW class folders, else its only sub-folder's, else None."""
    if not os.path.isdir(path):
        return None
    subdirs = [
        n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)) and not _hidden(n)
    ]
    if any(n in labels.SFEW_FOLDERS for n in subdirs):
        return path
    if len(subdirs) == 1:
        return _class_root(os.path.join(path, subdirs[0]))
    return None


def _find_split(manual_dir, folder, aligned, dl_manager):
    """Finds the class-folder root of one split, extracting its zip when only that is there."""
    if aligned:
        names = ALIGNED_NAMES[folder]
        dirs = [os.path.join(manual_dir, n) for n in names]
        dirs += [os.path.join(manual_dir, folder, n) for n in names]
        archives = [os.path.join(manual_dir, f"{n}.zip") for n in names]
    else:
        dirs, archives = [], [os.path.join(manual_dir, f"{folder}.zip")]
    for path in dirs:
        if _class_root(path):
            return _class_root(path)
    # Frames (or, for aligned, the last resort) in the split folder itself.
    plain = os.path.join(manual_dir, folder)
    if not aligned and _class_root(plain):
        return plain
    for archive in archives:
        if os.path.isfile(archive):
            root = _class_root(os.fspath(dl_manager.extract(archive)))
            if root:
                return root
            raise FileNotFoundError(f"{NAME}: {archive} holds no SFEW class folders")
    if aligned and _class_root(plain):
        return plain
    expected = os.path.join(manual_dir, folder, "<Class>")
    if aligned:
        expected = f"{os.path.join(manual_dir, ALIGNED_NAMES[folder][0], '<Class>')} (or its .zip)"
    raise FileNotFoundError(f"{NAME}: no class folders for {folder}: expected {expected}")


def _check_count(split, got, aligned):
    if not aligned:
        common.check_count(NAME, split, got, OFFICIAL_COUNTS[split])
    elif got != OFFICIAL_COUNTS[split]:
        logging.warning(
            "%s: split %r has %d aligned faces; the official count is %d frames (the aligned "
            "release legitimately has fewer: the organisers' face detector missed some frames)",
            NAME,
            split,
            got,
            OFFICIAL_COUNTS[split],
        )
