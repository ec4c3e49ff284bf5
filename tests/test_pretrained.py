"""The config argument `init=`: every published file's recipe builds a model that loads that
file's layout, every dataset config takes it, and a SigLIP 2 layout file trains the demo."""

import importlib
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, demo_cmd, demo_env, read_export
from official_layout import (
    big_vision_shapes,
    random_arrays,
    two_tower_shapes,
    vit_jax_shapes,
    zero_views,
)

from vit_se import checkpoint, config_checks, model_configs, models, pretrained

DATASET_CONFIGS = ["raf_db", "sfew", "fer2013", "ck_plus", "jaffe", "affectnet"]


def _layout(init):
    """The zero-byte key set of the published file an Init names, from official_layout."""
    width, depth, heads, mlp, patch = model_configs.VARIANTS[init.variant]
    dims = dict(width=width, depth=depth, heads=heads, mlp=mlp, patch=patch)
    if init.family == "vit_jax":
        i21k = "imagenet21k/" in init.path
        head, pre = (21843, width) if i21k else (1000, None)
        return vit_jax_shapes(**dims, image=init.image_size, head=head, pre_logits=pre)
    if init.family == "big_vision_plain":
        return big_vision_shapes(**dims, pool="gap", posemb="sincos2d", rep_size=width)
    # SigLIP 2 files are scanned (its colab's scan=True), SigLIP's are not. The path's
    # resolution, not the model's: So400m/14 files at 384 px hold 27 x 27 patches.
    resolution = int(re.search(r"_(\d+)(_\d+)?\.npz$", init.path).group(1))
    text = (1152, 27, 16, 4304) if "so400m" in init.path or "g-opt" in init.path else None
    return two_tower_shapes(
        **dims,
        image=resolution,
        scan=init.family == "siglip2",
        text=text or (width, depth, heads, mlp),
    )


@pytest.mark.parametrize("name", list(pretrained.INITS))
@pytest.mark.grid
def test_each_recipe_builds_the_model_its_file_loads_into(name):
    init = pretrained.INITS[name]
    config = pretrained.apply(importlib.import_module("vit_se.configs.raf_db").get_config(), name)
    assert config.pretrained_path == init.path and config.pretrained_path.startswith("gs://")
    assert config.model.name == init.variant and config.image_size == init.image_size
    config_checks.check_values(config)
    model = models.build_model(config.model, config.num_classes)
    size = config.image_size
    expected = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    )["params"]
    params = checkpoint.params_from_flat(zero_views(_layout(init)), expected, path=name)
    for key, value in checkpoint.flatten(params).items():
        # Everything but the FER head and SE comes from the file.
        assert isinstance(value, np.ndarray) == (key.split("/")[0] not in ("head", "se")), key


def test_each_family_documents_its_command_files_and_input():
    for family, fn in pretrained.FAMILIES.items():
        doc = fn.__doc__
        names = [n for n, i in pretrained.INITS.items() if i.family == family]
        assert names, family
        command = re.search(r"python -m vit_se\.main --config=configs/raf_db\.py:init=(\S+)", doc)
        assert command and command.group(1) in names, family
        assert "gs://" in doc and "[-1, 1]" in doc, family
        for name in names:
            assert pretrained.INITS[name].path.startswith("gs://"), name
    assert "no family needs a normalisation of its own" in " ".join(
        pretrained.__doc__.lower().split()
    )


@pytest.mark.parametrize("dataset", DATASET_CONFIGS)
def test_every_dataset_config_takes_init(dataset):
    module = importlib.import_module(f"vit_se.configs.{dataset}")
    plain = module.get_config()
    config = module.get_config("init=siglip2_so400m16_256")
    assert (config.model.name, config.model.classifier, config.model.posemb) == (
        "So400m/16",
        "map",
        "learn",
    )
    assert config.image_size == 256
    assert config.pretrained_path == "gs://big_vision/siglip2/siglip2_so400m16_256.npz"
    # The dataset's choices stay: SE, its reduction, the data and the recipe.
    assert (config.model.use_se, config.model.se_reduction) == (
        plain.model.use_se,
        plain.model.se_reduction,
    )
    assert (config.dataset, config.train_split, config.optimizer) == (
        plain.dataset,
        plain.train_split,
        plain.optimizer,
    )
    config_checks.check_values(config_checks.resolve(config))


def test_init_keeps_how_the_model_computes_and_an_unknown_name_is_one_line():
    config = importlib.import_module("vit_se.configs.sfew").get_config("recipe=vit_jax")
    config.model.scan, config.model.remat_policy, config.model.use_se = True, "full", False
    config = pretrained.apply(config, "bv_s16_i1k_300ep")
    assert (config.model.scan, config.model.remat_policy, config.model.use_se) == (
        True,
        "full",
        False,
    )
    assert (config.model.classifier, config.model.posemb) == ("gap", "sincos2d")
    assert config.model.representation_size == 384 and config.optimizer == "sgd"
    with pytest.raises(ValueError) as e:
        pretrained.apply(config, "siglip3_b16")
    message = str(e.value)
    assert message.startswith("config argument init='siglip3_b16': unknown; expected one of ")
    assert "siglip2: siglip2_b16_224, " in message and "\n" not in message


def test_config_argument_on_the_command_line(tmp_path):
    # `--config=configs/raf_db.py:init=...` through absl's config flag, as main parses it.
    script = (
        "from absl import app, flags\n"
        "from ml_collections import config_flags\n"
        "config_flags.DEFINE_config_file('config')\n"
        "def main(_):\n"
        "    c = flags.FLAGS.config\n"
        "    print(c.model.name, c.model.classifier, c.image_size, c.pretrained_path)\n"
        "app.run(main)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, "--config=configs/raf_db.py:init=siglip2_b16_224"],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [
        "B/16",
        "map",
        "224",
        "gs://big_vision/siglip2/siglip2_b16_224.npz",
    ]


@pytest.mark.slow
def test_demo_trains_from_a_siglip2_layout_file(tmp_path):
    # The demo's tiny/8 widths in the exact layout of a SigLIP 2 file (two scanned towers, MAP
    # pooling, no image head, t and b), random weights, through --config.pretrained_path.
    width, depth, heads, mlp, patch = model_configs.VARIANTS["tiny/8"]
    shapes = two_tower_shapes(
        width, depth, heads, mlp, patch, image=48, scan=True, text=(32, 2, 2, 64), vocab=100
    )
    start = tmp_path / "siglip2_tiny_48.npz"
    weights = random_arrays(shapes, seed=0, scale=0.05)
    np.savez(start, **weights)
    workdir = tmp_path / "run"
    r = subprocess.run(
        demo_cmd(
            str(workdir),
            str(tmp_path / "data"),
            f"--config.pretrained_path={start}",
            "--config.model.classifier=map",
            "--config.fake_data.num_train=210",
            "--config.fake_data.num_test=42",
            "--config.num_train_steps=40",
            "--config.eval_every=40",
            "--config.checkpoint_every=40",
            "--config.log_every=20",
            "--config.batch_size=16",
        ),
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    info, params = read_export(str(workdir))
    assert info["model"]["classifier"] == "map"
    # Trained from the file: the MAP head moved away from the file's values, and no class token.
    probe = params["MAPHead_0/probe"]
    assert probe.shape == (1, 1, width) and "cls" not in params
    assert not np.array_equal(probe, weights["params/img/MAPHead_0/probe"])
    assert np.max(np.abs(probe - weights["params/img/MAPHead_0/probe"])) < 0.5
    assert os.path.exists(workdir / "best_params.npz")
