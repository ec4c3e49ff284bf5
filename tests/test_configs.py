"""Every shipped config loads (from any folder), resolves its splits, passes validation, documents
its command, and takes big_vision-style arguments."""

import importlib
import os
import subprocess
import sys

import pytest
from conftest import TIMEOUT

from vit_se import config_checks
from vit_se.configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["demo", "sfew", "raf_db", "fer2013", "ck_plus", "jaffe", "affectnet"]


def _load(name):
    return importlib.import_module(f"vit_se.configs.{name}")


def test_every_config_file_is_tested():
    files = {f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")}
    # The pretraining configs (task mae) are checked by tests/test_mae_train.py.
    assert files - {"__init__", "common", "mae_faces", "mae_demo"} == set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_docstring_starts_with_its_command(name, tmp_path):
    module = _load(name)
    doc = [line.strip() for line in module.__doc__.strip().splitlines()]
    # The command comes right after the one-line summary (a k-fold loop line may precede it).
    first = next(i for i, line in enumerate(doc) if "python -m vit_se." in line)
    assert first <= 3, doc[:4]
    assert any(f"--config=configs/{name}.py" in line for line in doc)
    config = module.get_config()
    config.lock()
    config = config_checks.prepare(config, str(tmp_path))
    assert config.train_split and config.test_split
    assert config.val_split != config.test_split


@pytest.mark.parametrize("name", ["ck_plus", "jaffe"])
def test_fold_configs_derive_disjoint_splits(name):
    config = _load(name).get_config()
    config.fold = 3
    config = config_checks.resolve(config)
    assert config.test_split == "fold3"
    assert "fold3" not in config.train_split.split("+")
    assert len(config.train_split.split("+")) == 9
    config.fold = 10
    message = r"config\.fold: fold 10 out of range 0\.\.9"
    with pytest.raises(config_checks.ConfigError, match=message):
        config_checks.resolve(config)


def test_fold_of_a_dataset_without_folds_is_refused():
    config = _load("raf_db").get_config()
    config.fold = 1
    with pytest.raises(config_checks.ConfigError, match=r"'raf_db' has no cross-validation folds"):
        config_checks.resolve(config)


def test_bare_argument_is_the_variant():
    config = _load("raf_db").get_config("S/16")
    assert config.model.name == "S/16" and config.model.hidden_size == 384
    assert config.model.use_se and config.model.se_reduction == 4


def test_keyword_arguments_pick_variant_and_recipe():
    authors = _load("sfew").get_config()
    config = _load("sfew").get_config("variant=L/16,recipe=vit_jax")
    assert config.model.name == "L/16" and config.model.transformer.num_layers == 24
    assert (config.optimizer, config.learning_rate, config.batch_size) == ("sgd", 0.03, 512)
    assert config.grad_clip_norm == 1.0 and config.schedule == "cosine"
    assert (authors.optimizer, authors.batch_size) == ("adamw", 8)
    assert config.dataset == authors.dataset == "sfew"


@pytest.mark.parametrize(
    "arg,message",
    [
        ("recipe=adam", r"recipe='adam': expected one of authors, vit_jax"),
        ("varient=S/16", r"'varient': unknown; expected one of variant, recipe"),
        ("S/16,vit_jax", r"'vit_jax': expected KEY=VALUE"),
    ],
)
def test_bad_arguments_are_one_line(arg, message):
    with pytest.raises(ValueError, match=message):
        _load("raf_db").get_config(arg)


def test_parse_arg_converts_to_the_defaults_types():
    arg = common.parse_arg("steps=30,lr=0.5,se=false", steps=10, lr=1.0, se=True)
    assert (arg.steps, arg.lr, arg.se) == (30, 0.5, False)
    with pytest.raises(ValueError, match=r"steps='x': expected a int"):
        common.parse_arg("steps=x", steps=10)


def test_every_optional_field_is_declared():
    config = common.get_config()
    for field in ("fold", "num_folds", "fake_data", "pretrained_path", "init_from", "data_dir"):
        assert field in config, field
    assert config.fold is None and config.num_folds == 10 and not config.fake_data.enabled


def test_a_config_loads_from_another_folder(tmp_path):
    # Relative to the repository it does not exist from tmp_path: the installed copy is used.
    code = "import sys; from vit_se import cli; print(cli.resolve_config_paths(sys.argv[1:])[0])"
    out = subprocess.run(
        [sys.executable, "-c", code, "--config=configs/sfew.py:variant=S/16"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    assert out.endswith(os.path.join("configs", "sfew.py") + ":variant=S/16"), out
    assert os.path.isfile(out.split("=", 1)[1].rsplit(":", 1)[0])


def test_a_missing_config_file_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "vit_se.main", "--config=nowhere/nothing.py", "--workdir=w"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "vit_se.main: --config: config file nowhere/nothing.py does not exist (nor "
        + os.path.join(os.path.dirname(common.__file__), "nothing.py")
        + " among the installed configs)"
    ]


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "demo"])
def test_cpu_recipe_is_a_small_vit_se_at_48_px(name, tmp_path):
    # configs/common.py's recipe=cpu: the from-scratch ViT-SE that learns on two CPU cores.
    config = _load(name).get_config("recipe=cpu")
    model = config.model
    assert model.use_se and (model.hidden_size, model.patches.size) == (64, (6, 6))
    assert (model.transformer.num_layers, model.transformer.num_heads) == (6, 4)
    assert model.transformer.mlp_dim == 256 and config.pretrained_path is None
    assert (config.image_size, config.batch_size) == (48, 128)
    assert (config.optimizer, config.schedule, config.num_train_steps) == ("adamw", "cosine", 3000)
    assert config.dataset == _load(name).get_config().dataset  # only the recipe changed
    config.lock()
    config_checks.prepare(config, str(tmp_path))
