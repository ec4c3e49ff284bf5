"""Every shipped config loads, resolves its splits, passes validation and documents its command."""

import importlib.util
import os

import pytest

from vit_se import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["demo", "sfew", "raf_db", "fer2013", "ck_plus", "jaffe"]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_docstring_starts_with_its_command(name, tmp_path):
    module = _load(name)
    doc = [line.strip() for line in module.__doc__.strip().splitlines()]
    # The command comes right after the one-line summary (a k-fold loop line may precede it).
    first = next(i for i, line in enumerate(doc) if "python -m vit_se.main" in line)
    assert first <= 3, doc[:4]
    assert any(f"python -m vit_se.main --config=configs/{name}.py" in line for line in doc)
    config = module.get_config()
    config.lock()
    config = train.resolve_splits(config)
    train.validate_config(config, str(tmp_path))
    assert config.train_split and config.test_split
    assert config.val_split != config.test_split


@pytest.mark.parametrize("name", ["ck_plus", "jaffe"])
def test_fold_configs_derive_disjoint_splits(name):
    config = _load(name).get_config()
    config.fold = 3
    config = train.resolve_splits(config)
    assert config.test_split == "fold3"
    assert "fold3" not in config.train_split.split("+")
    assert len(config.train_split.split("+")) == 9
    config.fold = 10
    with pytest.raises(train.ConfigError, match=r"config\.fold: fold 10 out of range 0\.\.9"):
        train.resolve_splits(config)


def test_model_variant_is_the_config_argument():
    config = _load("raf_db").get_config("S/16")
    assert config.model.name == "S/16" and config.model.hidden_size == 384
    assert config.model.use_se and config.model.se_reduction == 4
