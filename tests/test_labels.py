"""The shared label mappings against the codes each database publishes, and the canonical order."""

import pytest

from vit_se.datasets import labels


def test_canonical_order():
    assert labels.CLASS_NAMES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert labels.CLASS_NAMES_WITH_CONTEMPT == labels.CLASS_NAMES + ("contempt",)


# AffectNet's expression codes as its authors list them (Mollahosseini et al. 2017): 0 Neutral,
# 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt, 8 None, 9 Uncertain,
# 10 Non-Face.
AFFECTNET = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "angry",
    7: "contempt",
}


@pytest.mark.parametrize("code, name", sorted(AFFECTNET.items()))
def test_affectnet_codes_map_to_canonical_labels(code, name):
    assert labels.CLASS_NAMES_WITH_CONTEMPT[labels.AFFECTNET_CODES[code]] == name


def test_affectnet_codes_cover_each_class_once():
    assert sorted(labels.AFFECTNET_CODES) == list(range(8))
    assert sorted(labels.AFFECTNET_CODES.values()) == list(range(8))
    assert labels.AFFECTNET_CODES[labels.AFFECTNET_CONTEMPT_CODE] == 7  # contempt last, as CK+'s


def test_affectnet_non_expression_codes():
    assert labels.AFFECTNET_NON_EXPRESSION_CODES == {8: "none", 9: "uncertain", 10: "no-face"}
    assert not set(labels.AFFECTNET_NON_EXPRESSION_CODES) & set(labels.AFFECTNET_CODES)


@pytest.mark.parametrize(
    "mapping",
    [
        labels.JAFFE_CODES,
        labels.CK_PLUS_CODES,
        labels.CK_PLUS_48_FOLDERS,
        labels.RAF_DB_CODES,
        labels.SFEW_FOLDERS,
        labels.FER2013_CODES,
        labels.FER2013_FOLDERS,
        labels.FERPLUS_TO_CANONICAL,
        labels.AFFECTNET_CODES,
    ],
)
def test_every_mapping_lands_in_the_canonical_range_once(mapping):
    values = list(mapping.values())
    assert len(values) == len(set(values))  # no two codes share a class
    assert all(0 <= v < len(labels.CLASS_NAMES_WITH_CONTEMPT) for v in values)


def test_map_code_names_the_place_and_the_known_codes():
    assert labels.map_code(labels.AFFECTNET_CODES, 6, "x") == labels.CLASS_NAMES.index("angry")
    with pytest.raises(
        ValueError, match=r"training.csv line 3: unknown label 11; expected one of 0"
    ):
        labels.map_code(labels.AFFECTNET_CODES, 11, "training.csv line 3")
