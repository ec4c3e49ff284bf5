"""Unlabelled images for MAE: builders' training splits and plain folders, each with its face
crop, a held-out part disjoint from training, no test split unless asked, a resumable stream;
and the reconstruction figure."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vit_se import figures, mae_sources, unlabelled
from vit_se.configs import common
from vit_se.datasets.fer2013.fake_data import write_fake_fer2013
from vit_se.datasets.synthetic_faces import draw_face, save_image

NUM_TRAIN = 40  # FER-2013's fake training split; every 5th held out: 8
FOLDER_IMAGES = 11  # 10 faces + one non-square image; every 5th held out: 2
SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled")
    manual = root / "manual"
    write_fake_fer2013(str(manual / "fer2013"), num_train=NUM_TRAIN, num_public=6, num_private=6)
    folder = root / "faces"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        ext = ".tif" if i == 3 else ".png"  # a format tf.io.decode_image does not read
        where = folder / "sub" if i % 2 else folder
        save_image(draw_face(i % 7, size=40, rng=rng, rgb=i % 3 == 0), str(where / f"f{i}{ext}"))
    Image.new("RGB", (60, 40), (90, 120, 150)).save(folder / "wide.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"not read")
    return {"root": root, "manual": str(manual), "tfds": str(root / "tfds"), "folder": str(folder)}


def _augment():
    config = common.get_config()
    config.image_size = SIZE
    config.augment.update(
        crop="random_resized", crop_scale=(0.2, 1.0), color_jitter=0.0, grayscale=0.0, cutout=0
    )
    return config


def _sources(data, face_crop="none"):
    return mae_sources.parse_datasets("fer2013/csv:train") + [
        mae_sources.folder_source(data["folder"], face_crop)
    ]


def _take(ds, n):
    return [b for _, b in zip(range(n), ds.as_numpy_iterator(), strict=False)]


def _train(data, start_step=0, seed=0):
    return unlabelled.train_dataset(
        _sources(data),
        _augment(),
        8,
        seed=seed,
        start_step=start_step,
        holdout_every=5,
        data_dir=data["tfds"],
        manual_dirs=unlabelled.manual_dirs(_sources(data), data["manual"]),
        shuffle_buffer=100,
    )


def test_sources_parse_in_tfds_spelling_with_their_own_face_crop():
    sources = mae_sources.parse_datasets(
        "fer2013/csv:train[:90%]@haar, raf_db , affectnet/7class:train@aligned", face_crop="none"
    )
    assert sources == [
        mae_sources.Source("fer2013", "csv", "train[:90%]", face_crop="haar"),
        mae_sources.Source("raf_db", None, "train", face_crop="none"),
        mae_sources.Source("affectnet", "7class", "train", face_crop="aligned"),
    ]
    assert mae_sources.parse_datasets("") == []


@pytest.mark.parametrize(
    "spec,message",
    [
        ("fer2014:train", r"config\.mae\.datasets: unknown dataset 'fer2014' in 'fer2014:train'"),
        ("raf_db@mtcnn", r"config\.mae\.datasets \(raf_db@mtcnn\) must be one of 'none'"),
    ],
)
def test_bad_dataset_specs_are_one_line(spec, message):
    with pytest.raises(mae_sources.UnlabelledError, match=message) as e:
        mae_sources.parse_datasets(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "spec,refused",
    [
        ("fer2013/csv:public_test", "public_test"),
        ("raf_db:train[:50%]+test", "test"),
        ("jaffe:fold0", "fold0"),  # every fold is some fold's test split
        ("affectnet:validation", "validation"),
    ],
)
def test_test_splits_are_refused_unless_allowed(spec, refused):
    sources = mae_sources.parse_datasets(spec)
    with pytest.raises(mae_sources.UnlabelledError, match=f"split {refused} is a test split"):
        mae_sources.check_splits(sources)
    mae_sources.check_splits(sources, allow_test_splits=True)
    mae_sources.check_splits(mae_sources.parse_datasets("raf_db:train[:90%]"))


def test_a_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "readme.txt").write_text("no faces here")
    source = mae_sources.folder_source(str(tmp_path))
    with pytest.raises(mae_sources.UnlabelledError, match=r": no images \(files ending in \.png"):
        unlabelled.train_dataset([source], _augment(), 8, seed=0)
    with pytest.raises(mae_sources.UnlabelledError, match="not a folder of images"):
        unlabelled.train_dataset(
            [mae_sources.folder_source(str(tmp_path / "nowhere"))], _augment(), 8, seed=0
        )


def test_folder_images_get_their_source_face_crop(data):
    def shapes(mode):
        images = unlabelled._images(mae_sources.folder_source(data["folder"], mode), None, None, 0)
        assert images.sizes == [FOLDER_IMAGES]
        return [tf.io.decode_png(e).shape.as_list() for e in images.dataset]

    plain, cropped = shapes("none"), shapes("haar")
    assert len(plain) == FOLDER_IMAGES  # hidden file and notes.txt skipped, sub-folder read
    assert [40, 60, 3] in plain  # wide.jpg, as stored (rows, columns)
    assert all(s[0] == s[1] and s[2] == 3 for s in cropped)  # Haar crops are squares


def test_training_batches_are_unlabelled_model_inputs_and_resume_at_any_step(data):
    full = _take(_train(data), 6)
    assert set(full[0]) == {"image"}
    image = full[0]["image"]
    assert image.shape == (8, SIZE, SIZE, 3) and image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    resumed = _take(_train(data, start_step=4), 2)
    for a, b in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    other = _take(_train(data, seed=1), 1)[0]
    assert not np.array_equal(other["image"], image)


def test_held_out_part_and_training_part_are_disjoint_and_complete():
    ds = tf.data.Dataset.range(23)
    held = list(unlabelled._split_part(ds, 5, held=True).as_numpy_iterator())
    train = list(unlabelled._split_part(ds, 5, held=False).as_numpy_iterator())
    assert held == [4, 9, 14, 19]
    assert sorted(held + train) == list(range(23)) and not set(held) & set(train)
    assert unlabelled._held_out_count(23, 5) == len(held)


def test_held_out_images_are_padded_exact_batches(data):
    eval_data = unlabelled.eval_dataset(
        _sources(data),
        4,
        image_size=SIZE,
        holdout_every=5,
        data_dir=data["tfds"],
        manual_dirs=unlabelled.manual_dirs(_sources(data), data["manual"]),
    )
    expected = NUM_TRAIN // 5 + FOLDER_IMAGES // 5
    assert eval_data.num_examples == expected and eval_data.num_batches == 3  # 10 = 4 + 4 + 2
    batches = list(eval_data.dataset.as_numpy_iterator())
    assert len(batches) == 3 and set(batches[0]) == {"image", "mask"}
    assert sum(b["mask"].sum() for b in batches) == expected
    faces = unlabelled.first_images(eval_data, 3)
    assert faces.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(faces, batches[0]["image"][:3])  # fixed: the first ones
    with pytest.raises(mae_sources.UnlabelledError, match="holds out no image"):
        unlabelled.eval_dataset(
            [mae_sources.folder_source(data["folder"])], 4, image_size=SIZE, holdout_every=50
        )


def test_reconstruction_figure_is_a_png_and_an_image_for_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    images, masked, recon = (rng.uniform(-1, 1, (3, SIZE, SIZE, 3)) for _ in range(3))
    path = str(tmp_path / "reconstruction.png")
    array = figures.save_reconstruction_png(images, masked, recon, path, title="step 10")
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (array.shape[1], array.shape[0])
    assert os.listdir(tmp_path) == ["reconstruction.png"]  # written whole, no temporary left
