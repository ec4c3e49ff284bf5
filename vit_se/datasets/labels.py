"""The one canonical label order, and every dataset's own codes mapped into it.

All builders emit FER-2013's order so that a model trained on one database can be evaluated on
another (cross-database protocol) without a relabelling step. Each mapping lives here, once, and
tests/test_labels.py checks it against the codes published with each database.
"""

# FER-2013 order: the canonical one.
CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# CK+ 8-class configs keep contempt as an extra, last class so indices 0..6 stay canonical.
CLASS_NAMES_WITH_CONTEMPT = CLASS_NAMES + ("contempt",)


def class_names(num_classes):
    """The class names of a model with `num_classes` outputs (7, or 8 with contempt last)."""
    if num_classes == len(CLASS_NAMES):
        return CLASS_NAMES
    if num_classes == len(CLASS_NAMES_WITH_CONTEMPT):
        return CLASS_NAMES_WITH_CONTEMPT
    raise ValueError(
        f"num_classes must be {len(CLASS_NAMES)} or {len(CLASS_NAMES_WITH_CONTEMPT)} (the "
        f"canonical classes, contempt last), got {num_classes}"
    )


# JAFFE file-name codes, e.g. KA.AN1.39.tiff.
JAFFE_CODES = {"AN": 0, "DI": 1, "FE": 2, "HA": 3, "SA": 4, "SU": 5, "NE": 6}

# CK+ Emotion/*.txt float codes: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy,
# 6 sadness, 7 surprise.
CK_PLUS_CODES = {0: 6, 1: 0, 2: 7, 3: 1, 4: 2, 5: 3, 6: 4, 7: 5}
CK_PLUS_CONTEMPT_CODE = 2
# CK+48 class-folder names.
CK_PLUS_48_FOLDERS = {
    "anger": 0,
    "disgust": 1,
    "fear": 2,
    "happy": 3,
    "sadness": 4,
    "surprise": 5,
    "contempt": 7,
}

# RAF-DB basic list_patition_label.txt codes: 1 surprise, 2 fear, 3 disgust, 4 happiness,
# 5 sadness, 6 anger, 7 neutral.
RAF_DB_CODES = {1: 5, 2: 2, 3: 1, 4: 3, 5: 4, 6: 0, 7: 6}

# SFEW 2.0 class folders.
SFEW_FOLDERS = {
    "Angry": 0,
    "Disgust": 1,
    "Fear": 2,
    "Happy": 3,
    "Sad": 4,
    "Surprise": 5,
    "Neutral": 6,
}

# AffectNet expression codes, in Manually_Annotated_file_lists/*.csv (`expression`) and as the
# class-folder names 0..7 of the widely shared variant: 0 neutral, 1 happy, 2 sad, 3 surprise,
# 4 fear, 5 disgust, 6 anger, 7 contempt. Contempt becomes 7, as in CK+'s 8-class configs.
AFFECTNET_CODES = {0: 6, 1: 3, 2: 4, 3: 5, 4: 2, 5: 1, 6: 0, 7: 7}
AFFECTNET_CONTEMPT_CODE = 7
# Codes that are never expression labels: the builders drop these rows and count them by name.
AFFECTNET_NON_EXPRESSION_CODES = {8: "none", 9: "uncertain", 10: "no-face"}

# FER-2013 CSV codes are already canonical; the image-folder variant uses these names.
FER2013_CODES = {i: i for i in range(7)}
FER2013_FOLDERS = {name: i for i, name in enumerate(CLASS_NAMES)}
# FER+ fer2013new.csv vote columns, in file order; contempt/unknown/NF are not basic classes.
FERPLUS_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
FERPLUS_TO_CANONICAL = {
    "neutral": 6,
    "happiness": 3,
    "surprise": 5,
    "sadness": 4,
    "anger": 0,
    "disgust": 1,
    "fear": 2,
}


def map_code(mapping, code, where):
    """Looks a dataset code up, failing with the file and the known codes named."""
    try:
        return mapping[code]
    except KeyError:
        known = ", ".join(str(k) for k in mapping)
        raise ValueError(f"{where}: unknown label {code!r}; expected one of {known}") from None
