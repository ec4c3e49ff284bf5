"""Face detection + alignment throughput at 640x480, and what it adds to the input pipeline.

  python benchmarks/face_speed.py [--frames=30] [--num_train=120] [--epochs=30]

1. Detector + crop: a 640x480 RGB frame holding one real face (scikit-image's astronaut photo,
   resized into the frame) is cropped `--frames` times, after a warm-up, by each face-crop mode
   (`vit_se.datasets.common.crop_face`: 'aligned' = MTCNN + 5-point similarity warp to 256 px;
   'haar' = OpenCV's cascade + box crop). Prints faces/s (one face per frame) in this process.
2. Input pipeline: a fake RAF-DB whose `aligned` images are such 640x480 frames is built with the
   real builder, and `vit_se.input_pipeline.train_dataset` is timed as the trainer uses it, with
   `config.face_crop` 'none' and 'aligned': the first epoch (decode, face crop, cache fill,
   augmentation) and the steady state after it. The crop runs once per image, before the cache,
   so over a run of `--epochs` epochs its share of the pipeline's time is
   crop / (crop + epochs x steady epoch); that share is printed, with the whole run's pipeline
   time against 'none' (aligned crops are smaller to decode than 640x480 frames) and the crop's
   share of a run's training time at `--train_images_per_sec` (B/16 on 2 cores: 1.67).

Name the CPU and its widest vector extension beside the figures (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=30, help="timed frames per mode")
    p.add_argument("--num_train", type=int, default=120, help="fake training frames")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30, help="run length for the share (authors: 30)")
    p.add_argument("--train_images_per_sec", type=float, default=1.67)
    p.add_argument("--skip_pipeline", action="store_true")
    return p.parse_args(argv)


def frame_with_face(seed=0):
    """640x480 RGB: the astronaut photo (one frontal face) scaled to 480 px high, shifted."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((480, 480), Image.BILINEAR))
    frame = np.full((480, 640, 3), int(rng.integers(40, 120)), np.uint8)
    left = int(rng.integers(0, 160))
    frame[:, left : left + 480] = photo
    return frame


def detector_speed(frames):
    from vit_se.datasets import common

    frame = frame_with_face()
    out = {}
    for mode in ("aligned", "haar"):
        crop, found = common.crop_face(frame, mode)  # warm-up: builds the detector
        assert found, f"{mode}: no face found in the benchmark frame"
        t0 = time.perf_counter()
        for _ in range(frames):
            common.crop_face(frame, mode)
        dt = time.perf_counter() - t0
        out[mode] = frames / dt
        print(
            f"{mode:>7}: {frames / dt:.1f} faces/s at 640x480 ({1e3 * dt / frames:.1f} ms per "
            f"frame, crop {crop.shape[1]}x{crop.shape[0]})"
        )
    return out


def pipeline_share(args, root):
    import numpy as np
    import tensorflow_datasets as tfds

    from vit_se import input_pipeline, train
    from vit_se.configs import common as common_config
    from vit_se.datasets.raf_db.fake_data import write_fake_raf_db
    from vit_se.datasets.synthetic_faces import save_image

    tfds.disable_progress_bar()
    manual = os.path.join(root, "manual")
    written = write_fake_raf_db(manual, num_train=args.num_train, num_test=8, aligned_size=32)
    aligned_dir = os.path.join(manual, "basic", "Image", "aligned")
    for items in written.values():
        for i, (name, _) in enumerate(items):
            stem = os.path.splitext(name)[0]
            save_image(
                frame_with_face(i), os.path.join(aligned_dir, f"{stem}_aligned.jpg"), quality=90
            )
    builder = input_pipeline.load_builder(
        "raf_db", "aligned", os.path.join(root, "tfds"), manual_dir=manual
    )
    n = input_pipeline.num_examples(builder, "train")
    per_epoch = n // args.batch
    times = {}
    for mode in ("none", "aligned"):
        config = common_config.get_config()
        config.dataset, config.dataset_config = "raf_db", "aligned"
        config.train_split, config.image_size, config.batch_size = "train", 224, args.batch
        config.face_crop = mode
        it = train.training_data(builder, config, args.batch).as_numpy_iterator()
        t0 = time.perf_counter()
        for _ in range(per_epoch):
            next(it)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(per_epoch):
            batch = next(it)
        steady = time.perf_counter() - t0
        times[mode] = (first, steady)
        print(
            f"pipeline face_crop={mode!r}: first epoch {first:.1f}s, steady epoch {steady:.1f}s "
            f"({per_epoch} batches of {args.batch}, {tuple(batch['image'].shape[1:])})"
        )
    crop = max(times["aligned"][0] - times["none"][0], 0.0)
    steady = times["aligned"][1]
    share = crop / (crop + args.epochs * steady)
    images = per_epoch * args.batch
    print(
        f"aligned crop before the cache: {1e3 * crop / images:.0f} ms per image once; over "
        f"{args.epochs} epochs {share:.1%} of the input pipeline's time (first epoch alone: "
        f"{crop / times['aligned'][0]:.0%})"
    )
    run = {m: first + (args.epochs - 1) * st for m, (first, st) in times.items()}
    train = args.epochs * images / args.train_images_per_sec
    print(
        f"whole run's pipeline time, {args.epochs} epochs: aligned {run['aligned']:.0f}s, none "
        f"{run['none']:.0f}s; the crop is {crop / train:.2%} of the run's training time at "
        f"{args.train_images_per_sec:g} train images/s"
    )
    return float(np.float64(share))


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    detector_speed(args.frames)
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory(prefix="vit_se_faces_") as root:
            pipeline_share(args, root)


if __name__ == "__main__":
    main()
