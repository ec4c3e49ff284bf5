"""vit_se: ViT with Squeeze-and-Excitation for facial expression recognition, in JAX/Flax.

Run as a command (`python -m vit_se.<command>`), this is imported before the command's own
imports load TensorFlow: the moment to quiet their start-up lines (see vit_se.native_logs).
"""

import sys as _sys

if _sys.argv[:1] == ["-m"]:
    from vit_se import native_logs as _native_logs

    _native_logs.quiet(_sys.argv)
