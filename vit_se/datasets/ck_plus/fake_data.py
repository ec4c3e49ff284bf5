"""Writes a fake CK+ in the original layout, plus the CK+48 variant, from drawn faces.

    cohn-kanade-images/S005/001/S005_001_00000001.png ...   frames, neutral first then the
                                                            expression (onset to apex)
    Emotion/S005/001/S005_001_00000010_emotion.txt          '   3.0000000e+00' (CK+ code)
    Emotion/S005/003/                                       empty: an unlabelled sequence
    CK+48/disgust/S005_001_00000008.png ...                 48x48, last three frames

Real frames are 640x490; the default here is 64x49 (same aspect) to keep tests fast. Subjects are
the first ones of the shipped fold file, so 10 subjects fill the 10 folds one each. Labelled
sequences cycle through the CK+ codes 1..7, so contempt (2) is present; every `rgb_every`-th
sequence is saved as RGB, as some real sequences are.

    python -m vit_se.datasets.ck_plus.fake_data --out /tmp/ck_manual
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np

from vit_se.datasets import labels
from vit_se.datasets.synthetic_faces import draw_face, save_image

FOLDS_FILE = os.path.join(os.path.dirname(__file__), "folds.json")
CK48_FOLDERS = {
    1: "anger",
    2: "contempt",
    3: "disgust",
    4: "fear",
    5: "happy",
    6: "sadness",
    7: "surprise",
}
# Sequence lengths, cycled; the first labelled sequence (S005/001) has 10 frames.
LENGTHS = (10, 5, 7, 6)
NEUTRAL = labels.CLASS_NAMES.index("neutral")


@dataclasses.dataclass(frozen=True)
class FakeSequence:
    subject: str
    sequence: str  # e.g. "001"
    num_frames: int
    code: int | None  # CK+ emotion code; None for an unlabelled sequence
    rgb: bool


def fold_file_subjects():
    """The subjects of the shipped fold file in sorted order (subject i is in fold i % 10)."""
    with open(FOLDS_FILE) as f:
        folds = json.load(f)["folds"]
    return sorted(s for fold in folds for s in fold)


def write_fake_ck_plus(
    root,
    num_subjects=10,
    sequences_per_subject=2,
    unlabelled_per_subject=1,
    frame_size=(64, 49),
    seed=0,
    rgb_every=4,
    ck48=True,
):
    """Writes the fake CK+ (and CK+48) under root; returns a FakeSequence per sequence."""
    root = os.fspath(root)
    width, height = frame_size
    subjects = fold_file_subjects()[:num_subjects]
    written, labelled, index = [], 0, 0
    for s, subject in enumerate(subjects):
        for j in range(sequences_per_subject + unlabelled_per_subject):
            sequence = f"{j + 1:03d}"
            n = LENGTHS[index % len(LENGTHS)]
            rgb = rgb_every > 0 and index % rgb_every == rgb_every - 1
            if j < sequences_per_subject:
                code = labelled % 7 + 1
                labelled += 1
            else:
                code = None
            face_code = code if code is not None else (s + j) % 7 + 1
            label = labels.CK_PLUS_CODES[face_code]
            seq_seed = [seed, s, j]
            seq_dir = os.path.join(root, "cohn-kanade-images", subject, sequence)
            os.makedirs(seq_dir, exist_ok=True)
            for frame in range(1, n + 1):
                shown = NEUTRAL if frame <= n // 2 else label
                face = draw_face(shown, size=height, rng=np.random.default_rng(seq_seed), rgb=rgb)
                pad = width - height
                face = np.pad(face, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)), mode="edge")
                save_image(face, os.path.join(seq_dir, f"{subject}_{sequence}_{frame:08d}.png"))
            emotion_dir = os.path.join(root, "Emotion", subject, sequence)
            os.makedirs(emotion_dir, exist_ok=True)
            if code is not None:
                path = os.path.join(emotion_dir, f"{subject}_{sequence}_{n:08d}_emotion.txt")
                with open(path, "w") as f:
                    f.write(f"   {float(code):.7e}\n")
                if ck48:
                    _write_ck48(root, subject, sequence, n, code, seq_seed)
            written.append(FakeSequence(subject, sequence, n, code, rgb))
            index += 1
    return written


def _write_ck48(root, subject, sequence, n, code, seq_seed):
    folder = os.path.join(root, "CK+48", CK48_FOLDERS[code])
    os.makedirs(folder, exist_ok=True)
    face = draw_face(labels.CK_PLUS_CODES[code], size=48, rng=np.random.default_rng(seq_seed))
    for frame in range(max(1, n - 2), n + 1):
        save_image(face, os.path.join(folder, f"{subject}_{sequence}_{frame:08d}.png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="manual dir to write into")
    parser.add_argument("--num_subjects", type=int, default=10)
    parser.add_argument("--sequences_per_subject", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=49)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_fake_ck_plus(
        args.out,
        num_subjects=args.num_subjects,
        sequences_per_subject=args.sequences_per_subject,
        frame_size=(args.width, args.height),
        seed=args.seed,
    )
    labelled = sum(s.code is not None for s in written)
    print(f"wrote {len(written)} fake CK+ sequences ({labelled} labelled) under {args.out}")


if __name__ == "__main__":
    main()
