"""Writes a fake JAFFE in the original layout: drawn faces saved as `<poser>.<EXPR><n>.<id>.tiff`.

The real images are 256x256; the default size here is 64 to keep tests fast. Every fifth image
is saved as a palette ('P') tiff with a gray palette, as some real JAFFE files are, so the
builder's palette path is exercised. Images are spread over the 10 real posers round-robin, so
with at least 10 images every fold of the builder is non-empty.

    python -m vit_se.datasets.jaffe.fake_data --out /tmp/jaffe_manual --images_per_class 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
from PIL import Image

from vit_se.datasets import labels
from vit_se.datasets.synthetic_faces import draw_face, save_image

POSERS = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")
# File-name codes in JAFFE's own order.
CODES = ("AN", "DI", "FE", "HA", "NE", "SA", "SU")


@dataclasses.dataclass(frozen=True)
class FakeImage:
    file_name: str
    poser: str
    label: int  # canonical index
    palette: bool


def write_fake_jaffe(root, images_per_class=3, size=64, seed=0, palette_every=5, folder="jaffe"):
    """Writes 7 * images_per_class tiffs under root/folder; returns a FakeImage per file."""
    rng = np.random.default_rng(seed)
    out_dir = os.path.join(os.fspath(root), folder)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    per_poser_code = {}
    for i in range(images_per_class * len(CODES)):
        code = CODES[i // images_per_class]
        poser = POSERS[i % len(POSERS)]
        n = per_poser_code[poser, code] = per_poser_code.get((poser, code), 0) + 1
        label = labels.JAFFE_CODES[code]
        name = f"{poser}.{code}{n}.{i + 1}.tiff"
        face = draw_face(label, size=size, rng=rng)
        palette = palette_every > 0 and i % palette_every == 0
        path = os.path.join(out_dir, name)
        if palette:
            save_palette_tiff(face, path)
        else:
            save_image(face, path)
        written.append(FakeImage(name, poser, label, palette))
    return written


def save_palette_tiff(gray, path):
    """Saves HxWx1 uint8 as a 'P' tiff whose palette maps index i to gray level i."""
    h, w = gray.shape[:2]
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(gray[..., 0]).tobytes())
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    img.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="manual dir to write into")
    parser.add_argument("--images_per_class", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_fake_jaffe(args.out, args.images_per_class, args.size, args.seed)
    print(f"wrote {len(written)} fake JAFFE tiffs under {os.path.join(args.out, 'jaffe')}")


if __name__ == "__main__":
    main()
