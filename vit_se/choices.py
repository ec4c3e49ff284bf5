"""The allowed values of every enumerated config field, in a module that imports nothing.

The modules that act on a field (optim, input_pipeline, train_step, sharding, models) and the
check that runs before anything else (`config_checks.check_values`, within a second of the
command starting, before JAX or TensorFlow is imported) read the same tuples, so the two cannot
disagree.
"""

CROPS = ("random_resized", "five_crop", "none")  # config.augment.crop
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "step", "constant")
PARAM_SHARDINGS = ("replicate", "fsdp")
# Ranked with best_mode='max' by orbax: metrics where higher is better.
SELECTION_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
NONFINITE_MODES = ("stop", "skip_step")

# config.model.*
IMPLS = ("auto", "plain", "cpu_lean")
ATTENTION_IMPLS = ("xla", "cudnn")
REMAT_POLICIES = ("none", "full", "save_dots")
CLASSIFIERS = ("token", "gap", "map")  # class token, mean of tokens, big_vision's MAP head
POSEMBS = ("learn", "sincos2d")  # a learned parameter, or big_vision's computed 2-D sin-cos
DTYPES = ("float32", "bfloat16")
