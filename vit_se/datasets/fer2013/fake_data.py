"""Writes a small FER-2013 in the distributed formats, with drawn 48x48 gray faces.

FER-2013 cannot be shipped, so tests and demos build the `fer2013` builder from these files:
fer2013.csv with its real header and row order (Training, then PublicTest, then PrivateTest),
optionally FER+'s fer2013new.csv beside it, or the image-folder variant with its real file names.
Emotions cycle in code order. FER+ vote rows cycle through ten patterns (row % 10): five with a
majority winner (the drawn emotion), one (5) where the drawn emotion wins without a majority
(4 of 10 votes, beside 3 for the next emotion, 2 contempt and 1 unknown), then a tie, a contempt,
an unknown and an NF winner. Plurality and probability keep patterns 0-5, majority 0-4.

    python -m vit_se.datasets.fer2013.fake_data --out /tmp/fer_manual --ferplus
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tarfile
import zipfile

import numpy as np

from vit_se.datasets.labels import CLASS_NAMES, FERPLUS_COLUMNS, FERPLUS_TO_CANONICAL
from vit_se.datasets.synthetic_faces import draw_face, save_image

LAYOUTS = ("csv", "folders")
USAGES = (("train", "Training"), ("public_test", "PublicTest"), ("private_test", "PrivateTest"))
_COLUMN_OF = {label: FERPLUS_COLUMNS.index(name) for name, label in FERPLUS_TO_CANONICAL.items()}


def ferplus_votes(row, label):
    """The fake FER+ vote counts of a row: pattern row % 10, winner `label` for patterns 0-5.

    Patterns 0-4: `label` 6, 7 or 8 votes (6 + pattern % 3), 2 for the next emotion
    ((label + 1) % 7), 1 unknown. Pattern 5: `label` 4, next emotion 3, contempt 2, unknown 1.
    Pattern 6: `label` and the next emotion 5 each. Patterns 7, 8, 9: contempt, unknown or NF 7,
    `label` 3.
    """
    votes = np.zeros(len(FERPLUS_COLUMNS), np.int32)
    pattern = row % 10
    other = _COLUMN_OF[(label + 1) % len(CLASS_NAMES)]
    if pattern < 5:  # majority winner, with the minority votes FER+ rows usually have
        votes[_COLUMN_OF[label]] = 6 + pattern % 3
        votes[other] += 2
        votes[FERPLUS_COLUMNS.index("unknown")] += 1
    elif pattern == 5:  # plurality winner without a majority
        votes[_COLUMN_OF[label]] = 4
        votes[other] = 3
        votes[FERPLUS_COLUMNS.index("contempt")] = 2
        votes[FERPLUS_COLUMNS.index("unknown")] = 1
    elif pattern == 6:  # tie between two basic emotions
        votes[_COLUMN_OF[label]] = votes[other] = 5
    else:
        votes[FERPLUS_COLUMNS.index(("contempt", "unknown", "NF")[pattern - 7])] = 7
        votes[_COLUMN_OF[label]] = 3
    return votes


def write_fake_fer2013(
    root,
    num_train=70,
    num_public=14,
    num_private=14,
    layout="csv",
    ferplus=False,
    archive=False,
    seed=0,
):
    """Writes FER-2013 under root; returns {split: [(row or file key, label, FER+ label)]}.

    Args:
      root: the manual dir to write into.
      num_train, num_public, num_private: images per split (Training, PublicTest, PrivateTest).
      layout: 'csv' (root/fer2013.csv) or 'folders' (root/train/<class>/, root/test/<class>/).
      ferplus: with layout 'csv', also write root/fer2013new.csv (FER+ votes, same row order).
      archive: pack as downloaded: fer2013.tar.gz holding fer2013/fer2013.csv, or archive.zip
        holding train/ and test/.
      seed: seed of the drawings.
    Returns:
      per split, the row index (csv) or `train|test/<class>/<file>` (folders), the FER label and
      the FER+ plurality label (None when plurality drops the row or no FER+ file is written).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    counts = {"train": num_train, "public_test": num_public, "private_test": num_private}
    written = {split: [] for split in counts}
    rows, plus_rows = [], []
    ids = rng.choice(10**5, size=sum(counts.values()), replace=False)
    for split, usage in USAGES:
        for i in range(counts[split]):
            row = len(rows)
            label = i % len(CLASS_NAMES)
            face = draw_face(label, 48, rng)
            votes = ferplus_votes(row, label)
            kept = ferplus and layout == "csv" and row % 10 < 6  # patterns 6-9 are dropped
            plus_label = label if kept else None
            if layout == "csv":
                rows.append([label, " ".join(map(str, face.ravel())), usage])
                plus_rows.append([usage, f"fer{row:07d}.png", *votes])
                written[split].append((row, label, plus_label))
            else:
                part = "train" if split == "train" else "test"
                key = f"{part}/{CLASS_NAMES[label]}/{usage}_{ids[row]}.jpg"
                os.makedirs(os.path.join(root, os.path.dirname(key)), exist_ok=True)
                save_image(face, os.path.join(root, key), quality=95)
                rows.append(key)
                written[split].append((key, label, None))
    if layout == "csv":
        csv_dir = os.path.join(root, "fer2013") if archive else root
        os.makedirs(csv_dir, exist_ok=True)
        _write_csv(os.path.join(csv_dir, "fer2013.csv"), ["emotion", "pixels", "Usage"], rows)
        if ferplus:
            header = ["Usage", "Image name", *FERPLUS_COLUMNS]
            _write_csv(os.path.join(root, "fer2013new.csv"), header, plus_rows)
        if archive:
            with tarfile.open(os.path.join(root, "fer2013.tar.gz"), "w:gz") as tar:
                tar.add(csv_dir, arcname="fer2013")
            shutil.rmtree(csv_dir)
    elif archive:
        with zipfile.ZipFile(os.path.join(root, "archive.zip"), "w") as z:
            for key in rows:
                z.write(os.path.join(root, key), key)
        shutil.rmtree(os.path.join(root, "train"))
        shutil.rmtree(os.path.join(root, "test"))
    return written


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="manual dir to write into")
    parser.add_argument("--num_train", type=int, default=70)
    parser.add_argument("--num_public", type=int, default=14)
    parser.add_argument("--num_private", type=int, default=14)
    parser.add_argument("--layout", choices=LAYOUTS, default="csv")
    parser.add_argument("--ferplus", action="store_true", help="also write fer2013new.csv")
    parser.add_argument("--archive", action="store_true", help="pack as downloaded")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_fake_fer2013(
        args.out,
        args.num_train,
        args.num_public,
        args.num_private,
        layout=args.layout,
        ferplus=args.ferplus,
        archive=args.archive,
        seed=args.seed,
    )
    for split, items in written.items():
        print(f"{split}: {len(items)} images")


if __name__ == "__main__":
    main()
