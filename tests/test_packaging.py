"""What `pip install` ships: every package under vit_se/, and configs/ as vit_se.configs.

The configs mapping forces an explicit package list in pyproject.toml; a package left out of it
would be missing from a wheel while an editable install (what the tests run on) still finds it.
"""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else None


def _packages_on_disk():
    found = {"vit_se.configs"}
    for root, _, files in os.walk(os.path.join(ROOT, "vit_se")):
        if "__init__.py" in files:
            found.add(os.path.relpath(root, ROOT).replace(os.sep, "."))
    return found


@pytest.mark.skipif(tomllib is None, reason="tomllib is Python 3.11+")
def test_pyproject_lists_every_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _packages_on_disk()
    assert setuptools["package-dir"] == {"vit_se.configs": "configs"}


def test_configs_are_importable_as_a_package():
    import vit_se.configs
    from vit_se.configs import common, sfew

    assert os.path.samefile(os.path.dirname(vit_se.configs.__file__), os.path.join(ROOT, "configs"))
    assert sfew.common is common
