"""tfds -> tf.data per process -> global arrays sharded over every device.

Two properties the trainer relies on:
- The training stream is a pure function of (seed, process, step): encoded images are cached,
  shuffling is seeded, and augmentation uses stateless random ops keyed by the example's position
  in the stream. A resumed run therefore skips to its step and sees the same batches as an
  uninterrupted one, without saving tf.data iterator state.
- Evaluation counts every example exactly once: each process reads its own shard, the last
  partial batch is padded and masked, and processes pad to the same number of batches so the
  jitted eval step runs in lock-step on every host.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from vit_se import media
from vit_se.datasets import common, faces, registry
from vit_se.errors import Error

_MEAN_FILL = 127.5
# Splits stored in more bytes are read from their tfrecords each epoch instead of cached in memory.
CACHE_MAX_BYTES = 2 * 2**30


class DataError(Error, ValueError):
    """A dataset that cannot feed the run: not built and nothing to build it from, or empty."""


def load_builder(dataset, dataset_config=None, data_dir=None, manual_dir=None, **kwargs):
    """Returns the tfds builder of `dataset`, preparing it from `manual_dir` if needed.

    kwargs reach the builder (e.g. skip_bad_images).

    Process 0 prepares a shared data dir; the other processes wait for it. A host whose data dir
    is local (not shared) prepares its own copy. The build logs one line before and one after
    instead of tfds's progress bars, so that a builder's one-line error starts a line of its own.
    """

    def load():
        return registry.load_builder(dataset, data_dir=data_dir, config=dataset_config, **kwargs)

    builder = load()
    if jax.process_index() == 0 and not _is_prepared(builder):
        _prepare(builder, manual_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vit_se: dataset prepared")
        if not _is_prepared(builder):
            builder = load()
            if not _is_prepared(builder):
                _prepare(builder, manual_dir)
    return builder


def _is_prepared(builder):
    return (builder.data_path / "dataset_info.json").exists()


def _prepare(builder, manual_dir):
    name = builder.info.full_name
    if manual_dir is None:
        raise DataError(
            f"{name} is not built in {builder.data_dir} and no manual_dir names the downloaded "
            "files to build it from: set --config.manual_dir (README, 'Preparing the datasets')"
        )
    logging.info("Building %s from %s into %s (once)", name, manual_dir, builder.data_dir)
    start = time.time()
    tfds.display_progress_bar(False)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    finally:
        tfds.display_progress_bar(True)
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    logging.info("Built %s in %.0f s: %s", name, time.time() - start, splits)


def num_examples(builder, split):
    return builder.info.splits[split].num_examples


def process_shards(split):
    """The split cut into one share per process (tfds even_splits), in process order."""
    if jax.process_count() == 1:
        return [split]
    return tfds.even_splits(split, n=jax.process_count())


def process_split(split):
    """This process's share of a split."""
    return process_shards(split)[jax.process_index()]


# ----------------------------------------------------------------------------------------------
# Preprocessing.


def _decode(encoded):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _face_crop_encoded(encoded, mode="haar"):
    """Face crop (`common.crop_face` in `mode`, the one inference applies) on the encoded bytes,
    re-encoded losslessly so the result can be cached."""

    def crop(data):
        image = media.decode(io.BytesIO(data), name="image")
        cropped, _ = common.crop_face(image, mode)
        if cropped.shape[-1] == 1:
            cropped = np.repeat(cropped, 3, axis=-1)
        return cropped

    image = tf.numpy_function(crop, [encoded], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return tf.io.encode_png(image)


def _normalise(image):
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _resize(image, size):
    return tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)


def eval_transform(image, image_size, eval_resize):
    """A decoded uint8 HxWx3 image -> float32 [image_size, image_size, 3] in [-1, 1].

    Resized to `eval_resize` square, then the centre `image_size` square is kept (nothing is cut
    when they are equal). Evaluation, predict, analyze and export all go through this function.
    """
    if eval_resize == image_size:
        return _normalise(_resize(image, image_size))
    image = _resize(image, eval_resize)
    offset = (eval_resize - image_size) // 2
    return _normalise(image[offset : offset + image_size, offset : offset + image_size])


def eval_resize(augment, image_size):
    """The resize before the centre crop at evaluation, in pixels, for training augmentation
    `augment` (config.augment) at `image_size`.

    Five-crop training resizes to `augment.resize_to` and crops; evaluation takes the centre crop
    of the same resize. Every other crop mode evaluates the whole image.
    """
    if augment.crop == "five_crop":
        return _resize_to(augment, image_size)
    return int(image_size)


def _resize_to(augment, image_size):
    """Five-crop's resize in pixels: `augment.resize_to`, or unset the authors' 256 at 224 px
    carried to the configured image size."""
    if augment.resize_to is not None:
        return int(augment.resize_to)
    return int(round(256 * image_size / 224))


def _seeds(seed, index, n):
    """n independent stateless seeds for one example."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
    return tf.random.experimental.stateless_split(tf.cast(base, tf.int64), n)


def train_preprocess(encoded, index, augment, image_size, seed):
    """Training augmentation (config.augment) with stateless ops keyed by (seed, stream index)."""
    aug = augment
    size = image_size
    s = _seeds(seed, index, 10)
    image = _decode(encoded)
    if aug.crop == "random_resized":
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=s[0],
            area_range=tuple(aug.crop_scale),
            aspect_ratio_range=(3 / 4, 4 / 3),
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, extent)
        image = _resize(image, size)
    elif aug.crop == "five_crop":
        big = _resize_to(aug, size)
        image = _resize(image, big)
        m = big - size
        offsets = tf.constant([[0, 0], [0, m], [m, 0], [m, m], [m // 2, m // 2]])
        which = tf.random.stateless_uniform([], s[0], 0, 5, dtype=tf.int32)
        off = offsets[which]
        image = image[off[0] : off[0] + size, off[1] : off[1] + size]
    else:  # 'none'
        image = _resize(image, size)
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, s[1])
    if aug.rotation:
        image = _rotate(image, aug.rotation, s[2])
    if aug.color_jitter:
        j = aug.color_jitter
        image = tf.image.stateless_random_brightness(image, 255.0 * j * 0.5, s[3])
        image = tf.image.stateless_random_contrast(image, 1 - j, 1 + j, s[4])
        image = tf.image.stateless_random_saturation(image, 1 - j, 1 + j, s[5])
        image = tf.clip_by_value(image, 0.0, 255.0)
    if aug.grayscale:
        gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
        image = tf.where(tf.random.stateless_uniform([], s[6]) < aug.grayscale, gray, image)
    if aug.cutout:
        image = _cutout(image, int(aug.cutout), s[7])
    image = tf.ensure_shape(image, [size, size, 3])
    return _normalise(image)


def _rotate(image, max_degrees, seed):
    """Rotation about the centre by a uniform angle; the corners are filled with grey."""
    angle = tf.random.stateless_uniform([], seed, -max_degrees, max_degrees) * math.pi / 180
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples the input at the inverse-rotated position.
    x0 = (w - 1) / 2 - cos * (w - 1) / 2 + sin * (h - 1) / 2
    y0 = (h - 1) / 2 - sin * (w - 1) / 2 - cos * (h - 1) / 2
    transform = tf.stack([cos, -sin, x0, sin, cos, y0, 0.0, 0.0])[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
        fill_value=_MEAN_FILL,
    )
    return out[0]


def _cutout(image, side, seed):
    size = tf.shape(image)[0]
    centre = tf.random.stateless_uniform([2], seed, 0, size, dtype=tf.int32)
    rows = tf.range(size)[:, None]
    cols = tf.range(size)[None, :]
    half = side // 2
    inside = (
        (rows >= centre[0] - half)
        & (rows < centre[0] - half + side)
        & (cols >= centre[1] - half)
        & (cols < centre[1] - half + side)
    )
    return tf.where(inside[..., None], tf.fill(tf.shape(image), _MEAN_FILL), image)


# ----------------------------------------------------------------------------------------------
# Datasets.


def _encoded(builder, split, face_crop, soft_targets=False, cache_max_bytes=CACHE_MAX_BYTES):
    """{'image': encoded bytes, 'label'[, 'label_distribution']} of a split, in stored order.

    Cached in memory (so a face crop runs once per example, not once per epoch) unless the split
    is stored in more than `cache_max_bytes`: AffectNet's 290k photographs would not fit, and
    reading tfrecords again each epoch costs little next to a train step.
    """
    ds = builder.as_dataset(
        split=split,
        decoders={"image": tfds.decode.SkipDecoding()},
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=False),
    )
    keys = ("image", "label") + (("label_distribution",) if soft_targets else ())
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
    mode = faces.face_crop_mode(face_crop)
    if mode != "none":
        ds = ds.map(lambda ex: {**ex, "image": _face_crop_encoded(ex["image"], mode)})
    if _stored_bytes(builder, split) <= cache_max_bytes:
        ds = ds.cache()
    return ds


def _stored_bytes(builder, split):
    """The bytes of the split's tfrecords (of the whole split a slice such as train[:90%] is cut
    from: an upper bound). tfds.even_splits' per-process shares keep the split they cut as
    `.split`; tfds's own SubSplitInfo.num_bytes is 0 ("unknown") for any slice."""
    spec = split if isinstance(split, str) else str(split.split)
    base = [part.split("[", 1)[0].strip() for part in spec.split("+")]
    return sum(builder.info.splits[name].num_bytes for name in base)


def has_soft_targets(builder, soft_targets=True):
    """Whether training learns from the builder's vote distributions (FER+ probability mode):
    asked for (config.soft_targets) and there to learn from."""
    return bool(soft_targets) and "label_distribution" in builder.info.features


def train_dataset(
    builder,
    split,
    local_batch,
    *,
    image_size,
    augment,
    seed=0,
    face_crop="none",
    soft_targets=False,
    class_balanced=False,
    num_classes=7,
    shuffle_buffer=50_000,
    cache_max_bytes=CACHE_MAX_BYTES,
    prefetch=2,
    start_step=0,
):
    """Endless, augmented batches of this process's share of `split`, from `start_step` on.

    The fields are the training config's of the same names (`augment` is config.augment;
    `soft_targets` as `has_soft_targets` decides). `seed` and the process index key the
    shuffling and every augmentation draw.
    """
    split = process_split(split)
    n = num_examples(builder, split)
    if n == 0:
        raise DataError(
            f"{builder.info.full_name}: training split {split!r} of this process is empty"
        )
    seed = seed * 1000 + jax.process_index()
    soft = has_soft_targets(builder, soft_targets)
    ds = _encoded(builder, split, face_crop, soft, cache_max_bytes)
    if class_balanced:
        counts = _class_counts(builder, split, num_classes)
        present = [c for c in range(num_classes) if counts[c] > 0]
        # One endless stream per class, each shuffled within a bounded buffer (AffectNet's happy
        # class alone is 134k images), drawn from in equal proportions.
        per_class = [
            ds.filter(lambda ex, c=c: tf.equal(ex["label"], c))
            .repeat()
            .shuffle(min(int(counts[c]), shuffle_buffer), seed=seed + c)
            for c in present
        ]
        ds = tf.data.Dataset.sample_from_datasets(per_class, seed=seed)
    else:
        ds = ds.shuffle(min(n, shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
    start = start_step * local_batch
    ds = ds.skip(start)
    ds = ds.enumerate(start=start)

    def prepare(i, ex):
        image = train_preprocess(ex["image"], i, augment, image_size, seed)
        out = {"image": image, "label": ex["label"]}
        if soft:
            out["label_distribution"] = ex["label_distribution"]
        return out

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(prefetch)


def _class_counts(builder, split, num_classes):
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    counts = np.zeros(num_classes, np.int64)
    for lb in ds.map(lambda ex: ex["label"]).batch(4096).as_numpy_iterator():
        counts += np.bincount(lb, minlength=num_classes)[:num_classes]
    return counts


@dataclasses.dataclass
class EvalData:
    dataset: tf.data.Dataset
    num_batches: int  # the same on every process
    num_examples: int  # over all processes

    def global_batches(self, batch_sharding):
        """This process's batches, each assembled into one global batch."""
        for batch in self.dataset.as_numpy_iterator():
            yield to_global(batch, batch_sharding)


def eval_dataset(builder, split, local_batch, *, image_size, eval_resize, face_crop, prefetch=2):
    """Padded, masked batches of this process's shard; every process yields `num_batches`."""
    shards = process_shards(split)
    sizes = [num_examples(builder, s) for s in shards]
    num_batches = max(1, math.ceil(max(sizes) / local_batch))
    ds = _encoded(builder, shards[jax.process_index()], face_crop)
    ds = ds.map(
        lambda ex: {
            "image": eval_transform(_decode(ex["image"]), image_size, eval_resize),
            "label": ex["label"],
            "mask": tf.constant(1.0),
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # Pad with masked examples to num_batches full batches.
    mine = sizes[jax.process_index()]
    pad = num_batches * local_batch - mine
    filler = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros([image_size, image_size, 3], tf.float32),
            "label": tf.constant(0, tf.int64),
            "mask": tf.constant(0.0),
        }
    ).repeat(pad)
    ds = ds.concatenate(filler).batch(local_batch, drop_remainder=True)
    return EvalData(ds.prefetch(prefetch), num_batches, sum(sizes))


def to_global(batch, sharding):
    """Assembles each process's local numpy batch into one global array per key."""
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )
