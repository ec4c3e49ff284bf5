"""vit_se: ViT with Squeeze-and-Excitation for facial expression recognition, in JAX/Flax.

Run as a command (`python -m vit_se.<command>`), the package is imported while Python still
locates the command's module, with `sys.argv[0] == '-m'`: the one moment that comes before the
command's own imports pull in TensorFlow. Its C++ start-up lines (oneDNN, CUDA probing, absl's
"before InitializeLog") would stand before every one-line error, so they are quieted there, unless
the user set the variables or passed --verbose. TensorFlow 2.21 prints its oneDNN notice before
its log level applies, so only turning its oneDNN custom ops off silences it; TensorFlow only
decodes and resizes images here, which those ops do not speed up. Imported as a library, nothing
is changed.
"""

import os as _os
import sys as _sys

if _sys.argv[:1] == ["-m"] and "--verbose" not in _sys.argv:
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
