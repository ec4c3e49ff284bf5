"""The allowed values of every enumerated config field, in a module that imports nothing.

Each enumeration is checked once, here, by `config_checks.prepare` before JAX or TensorFlow is
imported; the modules that act on a field (optim, input_pipeline, train_step, sharding, models)
trust what they are given.
"""

# config.task: 'classify' trains ViT-SE on a labelled builder; 'mae' pretrains its backbone as a
# masked autoencoder on unlabelled images (vit_se.mae, configs/mae_faces.py).
TASKS = ("classify", "mae")
CROPS = ("random_resized", "five_crop", "none")  # config.augment.crop
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "step", "constant")
PARAM_SHARDINGS = ("replicate", "fsdp")
# Ranked with best_mode='max' by orbax: metrics where higher is better.
SELECTION_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
# task 'mae' selects on the held-out reconstruction loss, where lower is better.
MAE_SELECTION_METRICS = ("loss",)
LOWER_IS_BETTER = ("loss",)
NONFINITE_MODES = ("stop", "skip_step")
# config.face_crop (and every command's --face_crop): vit_se.datasets.faces says what each does.
FACE_CROPS = ("none", "haar", "aligned")

# config.model.*
IMPLS = ("auto", "plain", "cpu_lean")
ATTENTION_IMPLS = ("xla", "cudnn")
REMAT_POLICIES = ("none", "full", "save_dots")
CLASSIFIERS = ("token", "gap", "map")  # class token, mean of tokens, big_vision's MAP head
POSEMBS = ("learn", "sincos2d")  # a learned parameter, or big_vision's computed 2-D sin-cos
DTYPES = ("float32", "bfloat16")


def face_crop_mode(value, where="config.face_crop"):
    """A face-crop setting as one of FACE_CROPS; True -> 'haar', False/None -> 'none' (the
    booleans of the field's first version still read).

    Raises a one-line ValueError naming `where` and the allowed values otherwise.
    """
    if value is None or value is False:
        return "none"
    if value is True:
        return "haar"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in FACE_CROPS:
            return text
        if text in ("true", "false"):
            return "haar" if text == "true" else "none"
    raise ValueError(
        f"{where} must be one of {', '.join(repr(m) for m in FACE_CROPS)} (or a boolean: True is "
        f"'haar', False is 'none'), got {value!r}"
    )
