"""Writes a small RAF-DB `basic` tree in the distributed layout, with drawn faces.

RAF-DB cannot be shipped, so tests and demos build the `raf_db` builder from this tree: the same
label file (`train_00001.jpg 5`, RAF-DB codes 1..7), the same image names (`train_00001_aligned.jpg`
in Image/aligned, `train_00001.jpg` in Image/original) and, with `layout`, the same archives.
Codes cycle 1..7, so every class appears once in every seven images of a split.

    python -m vit_se.datasets.raf_db.fake_data --out /tmp/raf_manual
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np

from vit_se.datasets.labels import CLASS_NAMES, RAF_DB_CODES
from vit_se.datasets.synthetic_faces import draw_face, save_image

LAYOUTS = ("folders", "image_zips", "basic_zip")


def write_fake_raf_db(
    root,
    num_train=70,
    num_test=28,
    aligned_size=100,
    original_size=(120, 200),
    layout="folders",
    seed=0,
):
    """Writes root/basic/... and returns {'train': [(name, label)], 'test': [...]}.

    Args:
      root: the manual dir to write into.
      num_train, num_test: images per split.
      aligned_size: side of the square aligned faces (100 in the real database).
      original_size: (min, max) height of the original pictures; widths are up to 1.5x wider.
      layout: 'folders' (extracted), 'image_zips' (basic/Image/aligned.zip and original.zip, as
        distributed) or 'basic_zip' (root/basic.zip holding basic/...).
      seed: seed of the drawings.
    Returns:
      the written file names with their canonical labels, per split.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    rng = np.random.default_rng(seed)
    basic = os.path.join(root, "basic")
    image_dirs = {k: os.path.join(basic, "Image", k) for k in ("aligned", "original")}
    for d in [os.path.join(basic, "EmoLabel"), *image_dirs.values()]:
        os.makedirs(d, exist_ok=True)
    written, lines = {}, []
    for split, count, digits in (("train", num_train, 5), ("test", num_test, 4)):
        written[split] = []
        for i in range(count):
            code = i % 7 + 1
            label = RAF_DB_CODES[code]
            name = f"{split}_{i + 1:0{digits}d}.jpg"
            lines.append(f"{name} {code}\n")
            written[split].append((name, label))
            face = draw_face(label, aligned_size, rng, rgb=True)
            save_image(face, os.path.join(image_dirs["aligned"], f"{name[:-4]}_aligned.jpg"))
            save_image(
                _original(label, original_size, rng), os.path.join(image_dirs["original"], name)
            )
    with open(os.path.join(basic, "EmoLabel", "list_patition_label.txt"), "w") as f:
        f.writelines(lines)
    if layout == "image_zips":
        for kind, folder in image_dirs.items():
            shutil.make_archive(folder, "zip", root_dir=os.path.dirname(folder), base_dir=kind)
            shutil.rmtree(folder)
    elif layout == "basic_zip":
        shutil.make_archive(basic, "zip", root_dir=root, base_dir="basic")
        shutil.rmtree(basic)
    return written


def _original(label, size_range, rng):
    """A face drawn into a wider picture of random size, like RAF-DB's uncropped originals."""
    h = int(rng.integers(size_range[0], size_range[1] + 1))
    w = int(h * rng.uniform(1.0, 1.5))
    face = draw_face(label, h, rng, rgb=True)
    picture = np.full((h, w, 3), int(rng.integers(0, 255)), np.uint8)
    left = int(rng.integers(0, w - h + 1))
    picture[:, left : left + h] = face
    return picture


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="manual dir to write into")
    parser.add_argument("--num_train", type=int, default=70)
    parser.add_argument("--num_test", type=int, default=28)
    parser.add_argument("--aligned_size", type=int, default=100)
    parser.add_argument("--layout", choices=LAYOUTS, default="folders")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_fake_raf_db(
        args.out,
        args.num_train,
        args.num_test,
        args.aligned_size,
        layout=args.layout,
        seed=args.seed,
    )
    for split, items in written.items():
        per_class = np.bincount([label for _, label in items], minlength=len(CLASS_NAMES))
        print(f"{split}: {len(items)} images, per class {per_class.tolist()} ({CLASS_NAMES})")


if __name__ == "__main__":
    main()
