"""Images without labels for masked-autoencoder pretraining: builders' splits and plain folders.

A source is one registered builder's split (its labels ignored) or one folder of image files,
each with its own face-crop mode (`vit_se.datasets.faces`), so that FER-2013's ready crops,
AffectNet's photographs and RAF-DB's aligned faces can be pretrained on together. Builders are
loaded and prepared by `vit_se.input_pipeline.load_builder`, and their images read, face-cropped
and cached by the input pipeline's own code; folder images go through the same crop.

Test splits are kept out unless the caller passes `allow_test_splits=True`
(`vit_se.mae_sources`, which parses the sources a config names).

A held-out part for the reconstruction loss: every `holdout_every`-th image of each source (in
its stored order, per process; folders in sorted file order) is left out of training and makes
the evaluation split, so no image is in both.

The training stream has the input pipeline's property: a pure function of (seed, process, step),
with stateless augmentation keyed by the stream position (MAE's light augmentation: a random
resized crop and a flip, as the config's `augment` fields say), so a resumed run skips to its
step and sees the batches an uninterrupted one would. Sources are mixed in proportion to their
sizes (every training image equally often).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
import tensorflow as tf

from vit_se import input_pipeline, mae_sources, media
from vit_se.datasets import common

TRAIN = mae_sources.TRAIN
UnlabelledError = mae_sources.UnlabelledError


# ----------------------------------------------------------------------------------------------
# Each source as encoded images of this process, and the sizes of every process's share.


@dataclasses.dataclass
class _Images:
    dataset: tf.data.Dataset  # encoded image bytes (scalar strings), stored order
    sizes: list[int]  # of every process's share, in process order


def find_images(folder):
    """The image files of a folder, recursively, in sorted order (the project's one finder)."""
    return media.find([folder])


def _folder_images(source, cache_max_bytes):
    if not os.path.isdir(source.folder) and "://" not in source.folder:
        raise UnlabelledError(f"{source.folder}: not a folder of images")
    files = find_images(source.folder)
    if not files:
        raise UnlabelledError(
            f"{source.folder}: no images (files ending in {', '.join(media.IMAGE_EXTENSIONS)})"
        )
    count = jax.process_count()
    shares = [files[p::count] for p in range(count)]
    mine = shares[jax.process_index()]
    mode = source.face_crop  # checked by mae_sources
    ds = tf.data.Dataset.from_tensor_slices(mine)
    ds = ds.map(lambda path: _read_encoded(path, mode), num_parallel_calls=tf.data.AUTOTUNE)
    local = "://" not in source.folder
    if local and sum(os.path.getsize(f) for f in mine) <= cache_max_bytes:
        ds = ds.cache()
    return _Images(ds, [len(s) for s in shares])


def _read_encoded(path, mode):
    """A file, decoded as the builders decode (`media.decode`), face-cropped in
    `mode`, re-encoded losslessly as PNG: every format the builders read, one decoder after."""

    def read(p):
        name = p.decode()
        image = media.decode(name, name=name)
        if mode != "none":
            image, _ = common.crop_face(image, mode)
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return np.ascontiguousarray(image)

    image = tf.numpy_function(read, [path], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return tf.io.encode_png(image)


def manual_dirs(sources, manual_root=None, **known):
    """{builder name: its manual_dir} for the builder sources: `manual_root/<name>` when a root
    is given, else what `known` names (the demo's fake data), else nothing (already built)."""
    out = {}
    for s in sources:
        if s.dataset:
            root = os.path.join(manual_root, s.dataset) if manual_root else None
            out[s.dataset] = root or known.get(s.dataset)
    return out


def _builder_images(source, data_dir, manual_dirs, cache_max_bytes):
    manual_dir = (manual_dirs or {}).get(source.dataset)
    builder = input_pipeline.load_builder(
        source.dataset, source.dataset_config, data_dir, manual_dir
    )
    unknown = sorted(mae_sources.split_names(source.split) - set(builder.info.splits))
    if unknown:
        raise UnlabelledError(
            f"{source.name}: no split {', '.join(unknown)}; the builder has "
            f"{', '.join(sorted(builder.info.splits))}"
        )
    shares = input_pipeline.process_shards(source.split)
    sizes = [input_pipeline.num_examples(builder, s) for s in shares]
    ds = input_pipeline._encoded(
        builder,
        shares[jax.process_index()],
        source.face_crop,
        cache_max_bytes=cache_max_bytes,
    )
    return _Images(ds.map(lambda ex: ex["image"]), sizes)


def _images(source, data_dir, manual_dirs, cache_max_bytes):
    if source.folder:
        return _folder_images(source, cache_max_bytes)
    return _builder_images(source, data_dir, manual_dirs, cache_max_bytes)


def _held_out(index, every):
    return every > 0 and index % every == every - 1


def _held_out_count(size, every):
    return size // every if every > 0 else 0


def _split_part(ds, every, held):
    """The held-out (`held`) or training part of a stored-order stream."""
    if every <= 0:
        return ds if not held else ds.take(0)

    def keep(i, _):
        chosen = tf.equal(i % every, every - 1)
        return chosen if held else tf.logical_not(chosen)

    return ds.enumerate().filter(keep).map(lambda _, image: image)


# ----------------------------------------------------------------------------------------------
# Training and evaluation streams.


def train_dataset(
    sources,
    augment_config,
    local_batch,
    *,
    seed,
    start_step=0,
    holdout_every=20,
    data_dir=None,
    manual_dirs=None,
    allow_test_splits=False,
    cache_max_bytes=input_pipeline.CACHE_MAX_BYTES,
    shuffle_buffer=50_000,
    prefetch=2,
):
    """Endless augmented batches {'image' [local_batch, S, S, 3] in [-1, 1]} of this process.

    `augment_config`: what `input_pipeline.train_preprocess` reads (`image_size`, `augment`; a
    training config). `manual_dirs`: {builder name: the folder of its downloaded files}
    (`manual_dirs()`), for builders not prepared yet.
    """
    mae_sources.check_splits(sources, allow_test_splits)
    if not sources:
        raise UnlabelledError("config.mae.datasets / config.mae.folder: no source of images")
    stream_seed = int(seed) * 1000 + jax.process_index()
    streams, weights = [], []
    for j, source in enumerate(sources):
        images = _images(source, data_dir, manual_dirs, cache_max_bytes)
        mine = images.sizes[jax.process_index()]
        n = mine - _held_out_count(mine, holdout_every)
        if n <= 0:
            raise UnlabelledError(f"{source.name}: no training image in this process's share")
        ds = _split_part(images.dataset, holdout_every, held=False)
        ds = ds.shuffle(min(n, shuffle_buffer), seed=stream_seed + j, reshuffle_each_iteration=True)
        streams.append(ds.repeat())
        weights.append(float(n))
    if len(streams) == 1:
        ds = streams[0]
    else:
        total = sum(weights)
        ds = tf.data.Dataset.sample_from_datasets(
            streams, weights=[w / total for w in weights], seed=stream_seed
        )
    start = int(start_step) * local_batch
    ds = ds.skip(start).enumerate(start=start)

    def prepare(i, encoded):
        return {
            "image": input_pipeline.train_preprocess(
                encoded, i, augment_config.augment, augment_config.image_size, stream_seed
            )
        }

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True).prefetch(prefetch)


def eval_dataset(
    sources,
    local_batch,
    *,
    image_size,
    holdout_every=20,
    data_dir=None,
    manual_dirs=None,
    allow_test_splits=False,
    prefetch=2,
):
    """The held-out images as padded, masked batches {'image', 'mask'}: an
    `input_pipeline.EvalData` whose every process yields `num_batches` (exact evaluation)."""
    mae_sources.check_splits(sources, allow_test_splits)
    if holdout_every <= 0:
        raise UnlabelledError(
            "config.mae.holdout_every: 0 holds out nothing; the reconstruction loss needs a "
            "held-out part (e.g. 20: one image in 20)"
        )
    parts, per_process = [], np.zeros(jax.process_count(), np.int64)
    for source in sources:
        # Not cached whole: only the held-out part is, below.
        images = _images(source, data_dir, manual_dirs, cache_max_bytes=0)
        per_process += [_held_out_count(n, holdout_every) for n in images.sizes]
        parts.append(_split_part(images.dataset, holdout_every, held=True))
    if not per_process.sum():
        raise UnlabelledError(
            f"config.mae.holdout_every: {holdout_every} holds out no image of "
            f"{', '.join(s.name for s in sources)}; lower it"
        )
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    ds = ds.cache().map(
        lambda encoded: {
            "image": input_pipeline.eval_transform(
                input_pipeline._decode(encoded), image_size, image_size
            ),
            "mask": tf.constant(1.0),
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    num_batches = max(1, math.ceil(int(per_process.max()) / local_batch))
    pad = num_batches * local_batch - int(per_process[jax.process_index()])
    filler = tf.data.Dataset.from_tensors(
        {"image": tf.zeros([image_size, image_size, 3], tf.float32), "mask": tf.constant(0.0)}
    ).repeat(pad)
    ds = ds.concatenate(filler).batch(local_batch, drop_remainder=True)
    return input_pipeline.EvalData(ds.prefetch(prefetch), num_batches, int(per_process.sum()))


def num_train_images(sources, *, holdout_every=20, data_dir=None, manual_dirs=None):
    """Training images over every process and source (the held-out ones left out): what an
    epoch is for `config.num_epochs`. Builders are prepared here if they are not yet."""
    total = 0
    for source in sources:
        sizes = _images(source, data_dir, manual_dirs, cache_max_bytes=0).sizes
        total += sum(n - _held_out_count(n, holdout_every) for n in sizes)
    return total


def first_images(eval_data, count):
    """The first `count` held-out images of this process (fixed faces for figures), [n, S, S, 3]
    with n <= count (0 when this process holds none out)."""
    out = []
    for batch in eval_data.dataset.as_numpy_iterator():
        out.extend(batch["image"][batch["mask"] > 0])
        if len(out) >= count:
            break
    if not out:
        size = eval_data.dataset.element_spec["image"].shape[1]
        return np.zeros((0, size, size, 3), np.float32)
    return np.stack(out[:count])
