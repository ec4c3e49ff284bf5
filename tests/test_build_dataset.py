"""`python -m vit_se.build_dataset`: the trainer's build as a command, its mistakes one line."""

import pytest
from conftest import run_module

from vit_se.datasets.raf_db.fake_data import write_fake_raf_db


def test_bad_arguments_are_one_line(tmp_path):
    r = run_module("vit_se.build_dataset", "emotic", f"--manual_dir={tmp_path}")
    assert r.returncode == 1 and r.stderr.strip().startswith("vit_se.build_dataset: name one")
    r = run_module("vit_se.build_dataset", "raf_db", "--config=huge", f"--manual_dir={tmp_path}")
    assert r.stderr.strip().splitlines()[-1] == (
        "vit_se.build_dataset: --config: 'huge' is not a config of raf_db; expected one of "
        "aligned, original"
    )


@pytest.mark.slow
def test_builds_once_and_names_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["raf_db", "--config=aligned", f"--data_dir={tmp_path / 'tfds'}"]
    r = run_module("vit_se.build_dataset", *args, f"--manual_dir={empty}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"vit_se.build_dataset: raf_db: manual dir '{empty}' is empty; expected "
        "basic/EmoLabel/list_patition_label.txt and basic/Image/ (or basic.zip)"
    )
    write_fake_raf_db(str(tmp_path / "raf"), num_train=14, num_test=7, seed=0)
    r = run_module("vit_se.build_dataset", *args, f"--manual_dir={tmp_path / 'raf'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1].endswith(": train 14, test 7")
