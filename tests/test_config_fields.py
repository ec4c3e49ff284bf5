"""`python -m vit_se.config_fields`: every config field with its default and its one-line doc."""

from conftest import run_module

from vit_se import config_fields
from vit_se.configs import common, sfew


def test_every_field_has_a_doc_read_from_its_comment():
    docs = config_fields.field_docs()
    fields = config_fields.flat_fields(common.get_config())
    assert [f for f in fields if not docs.get(f)] == []
    assert docs["augment.cutout"] == "square side in pixels at image_size; 0 disables"
    assert docs["model.transformer.num_heads"].startswith("attention heads")
    # A comment block above a field is its doc; a section heading above a blank line is not.
    assert docs["val_split"].startswith("The split that selects the checkpoint")
    assert "Data:" not in docs["dataset"]


def test_the_listing_shows_defaults_and_what_a_config_changes():
    listing = config_fields.table(sfew.get_config()).splitlines()
    row = next(line for line in listing if line.startswith("augment.crop "))
    assert "'random_resized'" in row and "*'five_crop'" in row  # sfew trains with five-crop
    unchanged = next(line for line in listing if line.startswith("seed "))
    assert "*" not in unchanged
    assert len(listing) == 2 + len(config_fields.flat_fields(common.get_config()))


def test_the_command_prints_every_field():
    r = run_module("vit_se.config_fields", "--config=configs/raf_db.py")
    assert r.returncode == 0, r.stderr
    assert "learning_rate" in r.stdout and "what it does" in r.stdout
    r = run_module("vit_se.config_fields", "--config=configs/nonexistent.py")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
