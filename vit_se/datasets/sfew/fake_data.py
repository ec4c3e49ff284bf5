"""Writes a small SFEW 2.0 tree in the distributed layout, with drawn faces.

SFEW cannot be shipped, so tests and demos build the `sfew` builder from this tree: class folders
with SFEW's names, PNG frames named like the movie frames (`<Movie>_<clip>_<frame>.png`), an
unlabelled Test/, and either the frames (Train/, Val/, 5:4 pictures with a face somewhere in
them) or the aligned-face release (Train_Aligned_Faces/, Val_Aligned_Faces_new/), optionally
zipped as distributed. Classes cycle in canonical order, so each appears once per seven images.

    python -m vit_se.datasets.sfew.fake_data --out /tmp/sfew_manual --variant aligned
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np

from vit_se.datasets.labels import CLASS_NAMES, SFEW_FOLDERS
from vit_se.datasets.synthetic_faces import draw_face, save_image

VARIANTS = ("frames", "aligned")
_FOLDER_OF = {label: name for name, label in SFEW_FOLDERS.items()}
_MOVIES = ("Airheads", "Bridesmaids", "Hangover", "Harry_Potter", "Serendipity", "TheTerminal")
# Folder of each split per variant; the aligned names are those of the distributed zips.
_SPLIT_FOLDERS = {
    "frames": {"train": "Train", "validation": "Val", "test": "Test"},
    "aligned": {
        "train": "Train_Aligned_Faces",
        "validation": "Val_Aligned_Faces_new",
        "test": "Test_Aligned_Faces",
    },
}


def write_fake_sfew(
    root,
    num_train=70,
    num_val=28,
    num_test=4,
    size=96,
    variant="frames",
    archive=False,
    seed=0,
):
    """Writes the SFEW folders under root and returns {'train': [(Class/file, label)], ...}.

    Args:
      root: the manual dir to write into.
      num_train, num_val: labelled images per split; num_test: unlabelled images in Test/.
      size: frame height (width is 5:4 of it, like 720x576) or aligned-face side.
      variant: 'frames' (Train/, Val/) or 'aligned' (Train_Aligned_Faces/, Val_Aligned_Faces_new/).
      archive: write each split folder as a zip of the same name, as distributed.
      seed: seed of the drawings.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    rng = np.random.default_rng(seed)
    written = {}
    folders = _SPLIT_FOLDERS[variant]
    for split, count in (("train", num_train), ("validation", num_val), ("test", num_test)):
        base = os.path.join(root, folders[split])
        items = []
        for i in range(count):
            label = i % len(CLASS_NAMES)
            movie = _MOVIES[i % len(_MOVIES)]
            name = f"{movie}_{int(rng.integers(10**8, 10**9)):09d}_{i + 1:08d}.png"
            rel = name if split == "test" else f"{_FOLDER_OF[label]}/{name}"
            os.makedirs(os.path.dirname(os.path.join(base, rel)), exist_ok=True)
            image = _frame(label, size, rng) if variant == "frames" else _face(label, size, rng)
            save_image(image, os.path.join(base, rel))
            items.append((rel, label))
        if split != "test":
            written[split] = items
        if archive:
            shutil.make_archive(base, "zip", root_dir=root, base_dir=folders[split])
            shutil.rmtree(base)
    return written


def _face(label, size, rng):
    return draw_face(label, size, rng, rgb=True)


def _frame(label, height, rng):
    """A 5:4 frame with a face of 40-70% of its height at a random place."""
    width = height * 5 // 4
    frame = np.full((height, width, 3), rng.integers(0, 255, size=3), np.uint8)
    side = int(height * rng.uniform(0.4, 0.7))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    frame[top : top + side, left : left + side] = draw_face(label, side, rng, rgb=True)
    return frame


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="manual dir to write into")
    parser.add_argument("--num_train", type=int, default=70)
    parser.add_argument("--num_val", type=int, default=28)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--variant", choices=VARIANTS, default="frames")
    parser.add_argument("--archive", action="store_true", help="write zips as distributed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_fake_sfew(
        args.out,
        args.num_train,
        args.num_val,
        size=args.size,
        variant=args.variant,
        archive=args.archive,
        seed=args.seed,
    )
    for split, items in written.items():
        print(f"{split}: {len(items)} images")


if __name__ == "__main__":
    main()
