"""Prints the logit parity of vit_se against the independent NumPy reference (tests/).

  python benchmarks/checkpoint_parity.py

Writes small random checkpoints in the official vit_jax and big_vision layouts to a temp dir,
loads them through vit_se.checkpoint into the unrolled model and into a scanned one
(`config.model.scan`), and reports the max abs logit difference in float32.
"""

import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from official_layout import random_arrays, vit_jax_shapes, vit_jax_to_big_vision  # noqa: E402
from reference_vit import forward  # noqa: E402

from vit_se import checkpoint, model_configs, models  # noqa: E402


def main():
    dims = dict(width=64, depth=2, heads=2, mlp=128, patch=8, image=32)
    weights = random_arrays(vit_jax_shapes(**dims, head=7), seed=0)
    x = np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    cfg = model_configs.get_config("tiny/8", use_se=False)
    with tempfile.TemporaryDirectory() as tmp:
        for scan in (False, True):
            model = models.build_model(cfg, 7, scan=scan)
            init = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
            for label, arrays, bv in [
                ("vit_jax", weights, False),
                ("big_vision", vit_jax_to_big_vision(weights), True),
                ("big_vision scan", vit_jax_to_big_vision(weights, scan=True), True),
            ]:
                path = os.path.join(tmp, "ckpt.npz")
                np.savez(path, **arrays)
                params = checkpoint.load_pretrained(path, init)
                got = np.asarray(model.apply({"params": params}, x))
                want = forward(arrays, x, big_vision=bv)
                into = "scanned" if scan else "unrolled"
                print(
                    f"{label:16s} -> {into:8s} model: max|logit diff| = "
                    f"{np.max(np.abs(got - want)):.2e} (logit scale {np.max(np.abs(want)):.2f})"
                )


if __name__ == "__main__":
    main()
