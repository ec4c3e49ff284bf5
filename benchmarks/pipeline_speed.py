"""Training input-pipeline throughput at 224 px with the augmentation of configs/common.py.

  python benchmarks/pipeline_speed.py
  python benchmarks/pipeline_speed.py --train_images_per_sec=1.2    # ratio to a train step

Writes a small fake RAF-DB `basic` tree (drawn 100x100 aligned faces, the real database's size)
to a temp dir, builds it with the real `raf_db` tfds builder, and pulls batches from
`vit_se.input_pipeline.train_dataset` exactly as the trainer does (numpy iterator, then
`to_global` onto the devices). The first pass over the split fills the pipeline's cache of encoded
images, as the first epoch of a run does, so it is left out: the timed batches are the steady state
of a long run (decode, random resized crop, flip, colour jitter, grayscale, cutout, batching).

Prints images/s and the CPU time per image. On a machine whose cores also run the train step,
CPU time is the cost that matters: at the train step's rate the pipeline takes
train images/s x CPU s/image of one core away from it. With --train_images_per_sec (e.g. the
figure train_speed.py printed) it prints the ratio; the target is at least 10x the train step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # train_speed (CPU accounting)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_train", type=int, default=350, help="fake training images")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8, help="per-process batch (the authors' 8)")
    p.add_argument("--batches", type=int, default=150, help="timed batches")
    p.add_argument(
        "--crop",
        default=None,
        choices=("random_resized", "five_crop", "none"),
        help="override configs/common.py's crop (configs/raf_db.py uses five_crop)",
    )
    p.add_argument("--train_images_per_sec", type=float, default=None)
    p.add_argument("--workdir", default=None, help="keep the fake data here (default: temp dir)")
    return p.parse_args(argv)


def make_config(args, root):
    from vit_se.configs import common

    config = common.get_config()
    config.dataset = "raf_db"
    config.dataset_config = "aligned"
    config.manual_dir = os.path.join(root, "manual")
    config.data_dir = os.path.join(root, "tensorflow_datasets")
    config.train_split = "train"
    config.image_size = args.image_size
    config.batch_size = args.batch
    if args.crop:
        config.augment.crop = args.crop
    return config


def run(args, root):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF's first import
    import jax
    import tensorflow_datasets as tfds
    from train_speed import busy_jiffies

    from vit_se import input_pipeline, sharding, train
    from vit_se.datasets.raf_db.fake_data import write_fake_raf_db
    from vit_se.progress import rate_figure

    tfds.disable_progress_bar()

    config = make_config(args, root)
    t0 = time.perf_counter()
    if not os.path.isdir(config.manual_dir):
        write_fake_raf_db(config.manual_dir, num_train=args.num_train, num_test=35, seed=0)
    builder = train.dataset_builder(config)
    n = input_pipeline.num_examples(builder, config.train_split)
    print(f"fake RAF-DB: {n} training images, written and built in {time.perf_counter() - t0:.1f}s")

    batch_sh = sharding.batch_sharding(sharding.make_mesh())
    it = train.training_data(builder, config, args.batch).as_numpy_iterator()

    def next_batch():
        return jax.block_until_ready(input_pipeline.to_global(next(it), batch_sh))

    warmup = -(-n // args.batch) + 5  # one epoch fills the cache, then a few more
    t0 = time.perf_counter()
    for _ in range(warmup):
        next_batch()
    first = time.perf_counter() - t0

    cpu0, jiffies0, t0 = os.times(), busy_jiffies(), time.perf_counter()
    for _ in range(args.batches):
        batch = next_batch()
    wall = time.perf_counter() - t0
    cpu1, jiffies1 = os.times(), busy_jiffies()
    own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    images = args.batches * args.batch
    cores = os.cpu_count() or 1
    rate = images / wall
    aug = config.augment
    print(
        f"augmentation (configs/common.py{', crop overridden' if args.crop else ''}): "
        f"crop={aug.crop} scale={tuple(aug.crop_scale)} flip={aug.flip} "
        f"rotation={aug.rotation} color_jitter={aug.color_jitter} grayscale={aug.grayscale} "
        f"cutout={aug.cutout}"
    )
    print(f"batch {tuple(batch['image'].shape)} {batch['image'].dtype}")
    print(f"warm-up: {warmup} batches in {first:.1f}s (the first epoch decodes into the cache)")
    load = f"this process used {own / (wall * cores):.0%} of {cores} cores"
    if jiffies0 and jiffies1 and jiffies1[1] > jiffies0[1]:
        busy = (jiffies1[0] - jiffies0[0]) / (jiffies1[1] - jiffies0[1])
        load += f", others {max(busy - own / (wall * cores), 0):.0%}"
    print(
        f"pipeline: {rate:.1f} images/s ({1e3 * wall / args.batches:.1f} ms per batch of "
        f"{args.batch}, {images} images timed); {1e3 * own / images:.1f} CPU-ms per image "
        f"({load})"
    )
    if args.train_images_per_sec:
        train = args.train_images_per_sec
        ratio = rate / train
        verdict = "meets" if ratio >= 10 else "MISSES"
        print(
            f"train step: {rate_figure(train)} images/s -> pipeline/train = {ratio:.1f}x "
            f"({verdict} >= 10x);"
        )
        print(f"  feeding it costs {train * own / images:.1%} of one core")
    return rate


def main(argv=None):
    args = parse_args(argv)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="vit_se_pipeline_") as root:
        return run(args, root)


if __name__ == "__main__":
    main()
