"""The input pipeline: a resumable training stream, exact evaluation, augmentation contracts."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tolerances

from vit_se import input_pipeline, train
from vit_se.configs import common
from vit_se.datasets import registry
from vit_se.datasets.raf_db.fake_data import write_fake_raf_db

NUM_TRAIN, NUM_TEST = 35, 17


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    root = tmp_path_factory.mktemp("raf")
    write_fake_raf_db(str(root / "manual"), num_train=NUM_TRAIN, num_test=NUM_TEST, aligned_size=40)
    b = registry.load_builder("raf_db", data_dir=str(root / "tfds"), config="aligned")
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "manual"))
    )
    return b


def _config(**augment):
    config = common.get_config()
    config.dataset = "raf_db"
    config.image_size = 32
    config.shuffle_buffer = 1000
    for k, v in augment.items():
        config.augment[k] = v
    return config


def _take(ds, n):
    return [b for _, b in zip(range(n), ds.as_numpy_iterator(), strict=False)]


def test_training_stream_resumes_at_any_step(builder):
    config = _config(rotation=10.0)
    full = _take(train.training_data(builder, config, local_batch=8), 10)
    resumed = _take(train.training_data(builder, config, 8, start_step=6), 4)
    for a, b in zip(full[6:], resumed, strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
    # Epochs are reshuffled: the 35 examples of epoch 2 come in another order than epoch 1.
    labels = np.concatenate([b["label"] for b in full])
    assert not np.array_equal(labels[:32], labels[35:67])


def test_augmented_batches_have_the_model_contract(builder):
    batch = _take(train.training_data(builder, _config(), 8), 1)[0]
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int64
    other_seed = _config()
    other_seed.seed = 1
    batch2 = _take(train.training_data(builder, other_seed, 8), 1)[0]
    assert not np.array_equal(batch["image"], batch2["image"])


def _halves(size=64):
    """Left half white, right half black, as PNG bytes and as the uint8 array."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 2] = 255
    return tf.io.encode_png(tf.constant(image)), image


def _plain(**augment):
    """Only the crop: no flip, rotation, colour, grayscale or cutout."""
    off = dict(flip=False, rotation=0.0, color_jitter=0.0, grayscale=0.0, cutout=0)
    return _config(**{**off, **augment})


def _train_image(config, encoded, index):
    return input_pipeline.train_preprocess(
        encoded, tf.constant(index, tf.int64), config.augment, config.image_size, 0
    )


def test_crop_none_is_the_whole_image_resized():
    encoded, image = _halves()
    out = _train_image(_plain(crop="none"), encoded, 0).numpy()
    want = input_pipeline.eval_transform(tf.constant(image), 32, 32).numpy()
    np.testing.assert_array_equal(out, want)
    # Away from the edge every tap of the antialiased 64 -> 32 kernel (4 x 4) reads one colour.
    tolerances.assert_close(out[:, :14], np.ones_like(out[:, :14]), n=16)
    tolerances.assert_close(out[:, 18:], -np.ones_like(out[:, 18:]), n=16)


def test_five_crop_takes_one_of_five_fixed_crops_of_the_resize():
    encoded, image = _halves()
    big = 37  # resize_to unset: round(256 * 32 / 224), the authors' 256 at 224 px
    resized = tf.image.resize(tf.cast(image, tf.float32), (big, big), antialias=True) / 127.5 - 1
    m = big - 32
    crops = [resized[r : r + 32, c : c + 32].numpy() for r, c in ((0, 0), (0, m), (m, 0), (m, m))]
    crops.append(resized[m // 2 : m // 2 + 32, m // 2 : m // 2 + 32].numpy())
    config = _plain(crop="five_crop")
    seen = set()
    for index in range(40):
        out = _train_image(config, encoded, index).numpy()
        which = [i for i, c in enumerate(crops) if np.array_equal(out, c)]
        assert len(which) == 1, index  # exactly one of the five (they all differ here)
        seen.add(which[0])
    assert seen == {0, 1, 2, 3, 4}


def test_random_resized_crop_zooms_into_a_region():
    encoded, image = _halves()
    whole = input_pipeline.eval_transform(tf.constant(image), 32, 32).numpy()
    config = _plain(crop="random_resized", crop_scale=(0.2, 0.3))
    outs = [_train_image(config, encoded, i).numpy() for i in range(8)]
    white = [float(np.mean(o > 0)) for o in outs]
    # A fifth to a third of the area at aspect 3/4..4/3: some crops fall mostly on one half.
    assert len(set(np.round(white, 3))) > 1 and max(abs(w - 0.5) for w in white) > 0.2, white
    assert not any(np.array_equal(o, whole) for o in outs)


def test_cutout_fills_a_square_with_grey():
    config = _config(
        crop="none", flip=False, color_jitter=0.0, grayscale=0.0, rotation=0.0, cutout=8
    )
    encoded = tf.io.encode_png(tf.fill([32, 32, 3], tf.constant(255, tf.uint8)))
    image = input_pipeline.train_preprocess(
        encoded, tf.constant(3, tf.int64), config.augment, config.image_size, 0
    ).numpy()
    grey = np.all(image == 0.0, axis=-1)  # 127.5 -> 0.0 in [-1, 1]
    assert 16 <= grey.sum() <= 64  # an 8x8 square, possibly clipped by the border
    assert np.all(image[~grey] == 1.0)


def _eval(builder, split, local_batch, face_crop="none", size=32):
    return input_pipeline.eval_dataset(
        builder, split, local_batch, image_size=size, eval_resize=size, face_crop=face_crop
    )


def test_evaluation_counts_every_example_once(builder):
    data = _eval(builder, "test", local_batch=8)
    assert data.num_batches == 3 and data.num_examples == NUM_TEST
    labels, masks = [], []
    for batch in data.dataset.as_numpy_iterator():
        assert batch["image"].shape == (8, 32, 32, 3)
        labels.append(batch["label"])
        masks.append(batch["mask"])
    labels, masks = np.concatenate(labels), np.concatenate(masks)
    assert masks.sum() == NUM_TEST and np.all(masks[:NUM_TEST] == 1)
    expected = [int(ex["label"]) for ex in tfds.as_numpy(builder.as_dataset(split="test"))]
    np.testing.assert_array_equal(labels[:NUM_TEST], expected)


def test_eval_transform_centre_crops_after_five_crop_training():
    config = _config(crop="five_crop")
    assert input_pipeline.eval_resize(config.augment, config.image_size) == 37
    assert (
        input_pipeline.eval_resize(_config(crop="five_crop", resize_to=40).augment, 32) == 40
    )  # pixels
    assert input_pipeline.eval_resize(_config(crop="random_resized").augment, 32) == 32
    _, image = _halves()
    out = input_pipeline.eval_transform(tf.constant(image), 32, 37).numpy()
    assert out.shape == (32, 32, 3)
    # Resize to round(256 * 32 / 224) = 37, then the centre 32x32: the edge stays at column 16.
    # Columns 14 and 18 are two pixels from it: every tap of the 64 -> 37 kernel (4 x 4) reads
    # one colour, so only rounding is left.
    tolerances.assert_close(out[:, 14], np.ones_like(out[:, 14]), n=16)
    tolerances.assert_close(out[:, 18], -np.ones_like(out[:, 18]), n=16)


def test_class_balanced_sampling_draws_every_class(builder):
    config = _config()
    config.class_balanced = True
    batches = _take(train.training_data(builder, config, 8), 20)
    counts = np.bincount(np.concatenate([b["label"] for b in batches]), minlength=7)
    assert np.all(counts > 0) and counts.max() < 3 * counts.min(), counts


def test_face_crop_runs_in_parallel_threads():
    # tf.data's parallel map calls face_crop from several threads; one shared OpenCV detector
    # failed there at random ("u->urefcount == 0"), so each thread gets its own.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from vit_se.datasets import common as data_common

    image = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    together = threading.Barrier(8, timeout=60)  # eight threads at once, each with its own task

    def work(_):
        together.wait()
        for _ in range(20):
            crop, _ = data_common.face_crop(image)
            assert crop.shape[:2] == (120, 120)
        return id(data_common._face_detector())

    with ThreadPoolExecutor(8) as pool:
        detectors = list(pool.map(work, range(8)))
    assert len(set(detectors)) == 8


@pytest.fixture(scope="module")
def astronaut_builder(tmp_path_factory):
    """A fake RAF-DB whose two test images are a real photograph (the face is not centred)."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("raf_photo")
    manual = root / "manual"
    write_fake_raf_db(str(manual), num_train=7, num_test=2, aligned_size=40)
    aligned = manual / "basic" / "Image" / "aligned"
    for name in ("test_0001_aligned.jpg", "test_0002_aligned.jpg"):
        Image.fromarray(data.astronaut()).save(aligned / name, quality=95)
    b = registry.load_builder("raf_db", data_dir=str(root / "tfds"), config="aligned")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return b


def test_face_crop_in_the_pipeline_crops_the_face(astronaut_builder):
    from vit_se.datasets import common as data_common

    (raw,) = _take(_eval(astronaut_builder, "test", 2, face_crop="none").dataset, 1)
    (cropped,) = _take(_eval(astronaut_builder, "test", 2, face_crop="haar").dataset, 1)
    photo = next(iter(tfds.as_numpy(astronaut_builder.as_dataset(split="test"))))["image"]
    face, found = data_common.face_crop(photo)
    assert found and face.shape[0] < photo.shape[0] / 2  # a face, not the whole picture
    want = input_pipeline.eval_transform(tf.constant(face), 32, 32).numpy()
    # The same resize in a tf.data graph and eagerly: rounding over the antialiased kernel's taps.
    taps = (2 * -(-max(face.shape[:2]) // 32)) ** 2
    tolerances.assert_close(cropped["image"][0], want, n=taps, scale=1.0)
    assert np.abs(cropped["image"][0] - raw["image"][0]).mean() > 0.1
