"""Quiets what the native libraries print at start-up, before they load.

`python -m vit_se.<command>` imports the package while Python still locates the command's module
(`sys.argv[0] == '-m'`): the one moment before the command's own imports pull in TensorFlow or
libtpu, whose C++ start-up lines (oneDNN, CUDA probing, absl's "before InitializeLog") would
otherwise stand before every one-line error. vit_se/__init__.py calls `quiet` then; imported as
a library, nothing is changed. Only os and sys are imported here, so that stays true.
"""

import os
import sys

# What the native libraries print at start-up, each a variable they read when they load: a
# user's own setting wins, and --verbose leaves them all alone.
DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO lines
    # TensorFlow's "oneDNN custom operations are on" line, printed before any log level applies.
    # Its oneDNN kernels are matmuls and convolutions, which vit_se never asks TensorFlow for:
    # decode, crop and resize give the same bytes with them off.
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TPU_MIN_LOG_LEVEL": "2",
    "TPU_STDERR_LOG_LEVEL": "2",
}


def verbose_requested(argv):
    """Whether argv turns --verbose on (the last spelling wins), read before flags are parsed."""
    verbose = False
    for arg in argv[1:]:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if name == "verbose":
            verbose = not value or value.lower() in ("true", "t", "1")
        elif name == "noverbose":
            verbose = False
    return verbose


def quiet(argv=None):
    """Sets DEFAULTS unless `argv` (sys.argv) asks for --verbose. Only before
    TensorFlow or libtpu is loaded does this take effect."""
    if verbose_requested(sys.argv if argv is None else argv):
        return
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
