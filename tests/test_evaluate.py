"""vit_se.evaluate on a tiny trained demo run: JSON, PNG, TensorBoard, exact counts, other DBs.

The session's tiny demo run (tests/conftest.py: configs/demo.py, synthetic RAF-DB) is the model;
a fake JAFFE is the "other database". The count check compares evaluate's confusion matrix with
one built example by example through `inference.preprocess` + `Trained.logits` (the predict path).
"""

import glob
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tolerances
from conftest import DEMO_NUM_TEST, DEMO_NUM_TRAIN, TIMEOUT, once, run_module
from PIL import Image

from vit_se import checkpoint, evaluate, inference, model_configs, models
from vit_se import workdir as workdir_lib
from vit_se.datasets import registry
from vit_se.datasets.jaffe.fake_data import write_fake_jaffe
from vit_se.datasets.labels import CLASS_NAMES, CLASS_NAMES_WITH_CONTEMPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST = DEMO_NUM_TRAIN, DEMO_NUM_TEST


def _run(args, timeout=TIMEOUT):
    return run_module(
        *args, timeout=timeout, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    )


def _build_jaffe(root):
    """A fake JAFFE built into the demo run's tfds data dir: the "other database"."""
    jaffe = os.path.join(root, "jaffe_manual")
    write_fake_jaffe(jaffe, images_per_class=3, size=64)  # 21 images, 10 posers
    return jaffe


@pytest.fixture(scope="module")
def shared(tmp_path_factory, demo_run):
    def build(root):
        jaffe = _build_jaffe(root)
        builder = registry.load_builder(
            "jaffe", data_dir=f"{demo_run['root']}/tfds", config="original"
        )
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=jaffe))
        return {**demo_run, "jaffe_manual": jaffe}

    return once(tmp_path_factory, "eval_jaffe", build)


@pytest.fixture(scope="module")
def data_root(shared):
    return shared["root"]


@pytest.fixture(scope="module")
def workdir(shared):
    return shared["workdir"]


@pytest.fixture(scope="module")
def jaffe_manual(shared):
    return shared["jaffe_manual"]


def _export(workdir):
    with open(os.path.join(workdir, "export.json")) as f:
        return json.load(f)


def _event_tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.mark.slow
def test_cli_writes_json_png_tensorboard_and_counts_every_example(workdir):
    r = _run(["vit_se.evaluate", f"--workdir={workdir}", "--params=params.npz"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = os.path.join(workdir, "eval", "raf_db-aligned-test")
    with open(os.path.join(out, evaluate.METRICS_FILE)) as f:
        result = json.load(f)
    assert result["split"] == "test" and result["num_examples"] == NUM_TEST
    assert np.sum(result["confusion"]) == NUM_TEST
    assert result["params_file"] == "params.npz" and result["step"] == 30
    # The same model and split as the trainer's final test evaluation: the same numbers.
    final = _export(workdir)["metrics"]["test"]
    assert result["confusion"] == final["confusion"]
    # Accuracy: the same confusion, the same float64 ratio. Loss: per-example cross-entropies
    # after the model's float32 sums, added over the split in batches of another size.
    assert result["accuracy"] == tolerances.approx(final["accuracy"], 1, eps=tolerances.EPS64)
    n = tolerances.vit_sums(_export(workdir)["model"], 48) + 7 + NUM_TEST
    assert result["loss"] == tolerances.approx(final["loss"], n)
    assert set(result["per_class"]) == set(CLASS_NAMES)
    assert sum(row["support"] for row in result["per_class"].values()) == NUM_TEST
    with Image.open(os.path.join(out, evaluate.CONFUSION_PNG)) as png:
        assert png.format == "PNG" and min(png.size) > 200
    assert {"eval/accuracy", "eval/macro_f1", "eval/confusion"} <= _event_tags(out)
    assert f"accuracy {result['accuracy']:.4f}" in r.stdout


def test_default_model_is_the_val_selected_one(workdir, tmp_path):
    result = evaluate.evaluate_workdir(workdir, out=str(tmp_path / "o"))
    assert result["params_file"] == "best_params.npz"
    assert result["step"] == _export(workdir)["best_step"]
    assert evaluate.default_out(workdir, "raf_db", "aligned", "test", "best_params.npz").endswith(
        os.path.join("eval", "raf_db-aligned-test-best")
    )


def test_best_params_on_the_selection_split_is_flagged(workdir, tmp_path):
    result = evaluate.evaluate_workdir(workdir, split="train[90%:]", out=str(tmp_path / "o"))
    assert result["num_examples"] == NUM_TRAIN // 10
    assert result["step"] == _export(workdir)["best_step"]
    assert any("val_split" in n for n in result["notes"])
    assert os.path.exists(tmp_path / "o" / evaluate.METRICS_FILE)


def test_cross_database_counts_every_example_exactly_once(workdir, data_root, jaffe_manual):
    """RAF-DB model on JAFFE: default split `all` (21 images), checked example by example."""
    result = evaluate.evaluate_workdir(
        workdir,
        dataset="jaffe",
        dataset_config="original",
        manual_dir=jaffe_manual,
        batch_size=8,  # 21 = 2 x 8 + 5
        params_file="params.npz",
    )
    assert result["split"] == "all" and result["num_examples"] == 21
    assert any("cross-database" in n for n in result["notes"])
    assert result["out"].endswith(os.path.join("eval", "jaffe-original-all"))
    assert result["params_file"] == "params.npz"
    assert os.path.exists(os.path.join(result["out"], evaluate.CONFUSION_PNG))

    trained = inference.load_trained(workdir, result["params_file"])
    builder = registry.load_builder("jaffe", data_dir=f"{data_root}/tfds", config="original")
    images, labels = [], []
    for ex in builder.as_dataset(split="all").as_numpy_iterator():
        images.append(inference.preprocess(ex["image"], trained.info))
        labels.append(int(ex["label"]))
    pred = np.argmax(trained.logits(np.stack(images)), axis=-1)
    confusion = np.zeros((7, 7), int)
    np.add.at(confusion, (labels, pred), 1)
    assert result["confusion"] == confusion.tolist()
    assert result["per_class"]["neutral"]["support"] == 3


def _fake_run(path, num_classes, dataset, dataset_config):
    """An exported 'run' with random parameters: export.json + params.npz, no training."""
    model_config = model_configs.get_config("tiny/8")
    model = models.build_model(model_config, num_classes)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), np.zeros((1, 32, 32, 3), np.float32))
    params = params["params"]
    params = jax.tree_util.tree_map(lambda x: x + 0.5 * np.sign(x), params)  # varied predictions
    checkpoint.save_npz(params, os.path.join(path, "params.npz"))
    names = CLASS_NAMES_WITH_CONTEMPT if num_classes == 8 else CLASS_NAMES
    info = workdir_lib.ExportInfo(
        model=model_config.to_dict(),
        class_names=list(names),
        image_size=32,
        eval_resize=32,
        dataset=dataset,
        dataset_config=dataset_config,
        step=0,
    )
    workdir_lib.write_export_info(str(path), info)
    return str(path)


@pytest.mark.slow
def test_eight_class_model_on_seven_class_dataset_is_evaluated(
    tmp_path, data_root, jaffe_manual, workdir
):
    run = _fake_run(tmp_path / "ck8", 8, "ck_plus", "8class")
    result = evaluate.evaluate_workdir(
        run,
        dataset="jaffe",
        dataset_config="original",
        data_dir=f"{data_root}/tfds",
        manual_dir=jaffe_manual,
    )
    cm = np.asarray(result["confusion"])
    assert cm.shape == (8, 8) and cm.sum() == 21 and cm[7].sum() == 0
    assert any("contempt" in n for n in result["notes"])
    recall = result["per_class_recall"][:7]
    e64 = tolerances.EPS64
    assert result["mean_class_accuracy"] == tolerances.approx(np.mean(recall), 8, eps=e64)
    assert result["accuracy"] == tolerances.approx(np.trace(cm) / 21, 1, eps=e64)


def test_seven_class_model_on_contempt_data_is_refused():
    with pytest.raises(evaluate.EvaluationError, match="7class"):
        evaluate.check_labels(CLASS_NAMES, CLASS_NAMES_WITH_CONTEMPT, "ck_plus")
    with pytest.raises(evaluate.EvaluationError, match="label orders differ"):
        evaluate.check_labels(CLASS_NAMES[::-1], CLASS_NAMES, "jaffe")
    assert evaluate.check_labels(CLASS_NAMES, CLASS_NAMES, "jaffe") == []


@pytest.mark.slow
def test_unknown_split_and_dataset_fail_in_one_line(workdir):
    r = _run(["vit_se.evaluate", f"--workdir={workdir}", "--split=nope"])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("vit_se.evaluate: --split: 'nope'")
    with pytest.raises(evaluate.EvaluationError, match="unknown dataset 'emotic'"):
        evaluate.evaluate_workdir(workdir, dataset="emotic")
