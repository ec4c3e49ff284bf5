"""Prints the logit parity of vit_se against the independent NumPy reference (tests/).

  python benchmarks/checkpoint_parity.py                      # every layout, tiny widths
  python benchmarks/checkpoint_parity.py --size=B/16          # every layout at B/16, 224 px
  python benchmarks/checkpoint_parity.py --size=B/16 --layouts="big_vision map sincos2d"

Writes a random checkpoint in each official layout to a temp dir: vit_jax; big_vision with a class
token ('tok'), scan-stacked, MAP pooling, MAP pooling with sincos2d position embeddings, 'gap'
with sincos2d and pre_logits; a SigLIP two-tower file and a SigLIP 2 one (scanned). It loads each
through vit_se.checkpoint into the unrolled model and into a scanned one (`config.model.scan`),
with the default `impl`, and prints the max abs logit difference in float32 against the float64
NumPy forward pass of big_vision's and vit_jax's equations (tests/reference_vit.py), beside the
logits' scale. The SigLIP image towers have no head: both sides get the same random one. At B/16
the weights are drawn at initialisation scale (std 0.02); the text towers, never read, have full
width and a 1,000-token vocabulary.
"""

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from official_layout import (  # noqa: E402
    big_vision_shapes,
    random_arrays,
    two_tower_shapes,
    vit_jax_shapes,
    vit_jax_to_big_vision,
)
from reference_vit import forward  # noqa: E402

from vit_se import checkpoint, model_configs, models  # noqa: E402

SIZES = {  # variant, image size, weight scale
    "tiny": ("tiny/8", 32, 0.2),
    "B/16": ("B/16", 224, 0.02),
}
# Each layout: (model fields, a file maker(dims, image, scale) -> arrays, whether big_vision).
POOLS = {"tok": "token", "gap": "gap", "map": "map"}


def _bv(pre_logits=False, **kw):
    """A big_vision vit.py file; pre_logits: as wide as the model (big_vision's rep_size=True)."""

    def make(dims, image, scale):
        rep = dims["width"] if pre_logits else None
        shapes = big_vision_shapes(**dims, image=image, head=7, rep_size=rep, **kw)
        return random_arrays(shapes, 3, scale)

    model = {"classifier": POOLS[kw.get("pool", "tok")], "posemb": kw.get("posemb", "learn")}
    return dict(model, pre_logits=pre_logits), make, True


def _vit_jax(scan=None):
    def make(dims, image, scale):
        weights = random_arrays(vit_jax_shapes(**dims, image=image, head=7), 0, scale)
        return weights if scan is None else vit_jax_to_big_vision(weights, scan=scan)

    return {"pre_logits": False}, make, scan is not None


def _two_tower(scan):
    def make(dims, image, scale):
        text = (dims["width"], dims["depth"], dims["heads"], dims["mlp"])
        shapes = two_tower_shapes(**dims, image=image, scan=scan, text=text, vocab=1000)
        return random_arrays(shapes, 4, scale)

    return {"classifier": "map", "pre_logits": False}, make, True


LAYOUTS = {
    "vit_jax": _vit_jax(),
    "big_vision": _vit_jax(scan=False),
    "big_vision scan": _vit_jax(scan=True),
    "big_vision map": _bv(pool="map"),
    "big_vision map sincos2d": _bv(pool="map", posemb="sincos2d"),
    "big_vision gap sincos2d pre_logits": _bv(pool="gap", posemb="sincos2d", pre_logits=True),
    "SigLIP (two towers)": _two_tower(scan=False),
    "SigLIP 2 (two towers, scan)": _two_tower(scan=True),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--layouts", default="", help="comma-separated names (default: every layout)")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    variant, image, scale = SIZES[args.size]
    width, depth, heads, mlp, patch = model_configs.VARIANTS[variant]
    dims = dict(width=width, depth=depth, heads=heads, mlp=mlp, patch=patch)
    names = [n.strip() for n in args.layouts.split(",") if n.strip()] or list(LAYOUTS)
    x = np.random.default_rng(1).uniform(-1, 1, (args.batch, image, image, 3)).astype(np.float32)
    print(f"{variant} at {image} px, batch {args.batch}, impl auto ({jax.default_backend()})")
    compiled = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            fields, make, big_vision = LAYOUTS[name]
            arrays = make(dims, image, scale)
            path = os.path.join(tmp, "ckpt.npz")
            np.savez(path, **arrays)
            rng = np.random.default_rng(9)
            head = None
            if any(k.startswith("params/img/") for k in arrays):  # no image head: give one
                head = {
                    "kernel": rng.normal(0, scale, (width, 7)).astype(np.float32),
                    "bias": rng.normal(0, scale, 7).astype(np.float32),
                }
            want = forward(arrays, x, big_vision=big_vision, head=head)
            for scan in (False, True):
                key = (tuple(sorted(fields.items())), scan)
                if key not in compiled:
                    cfg = model_configs.get_config(variant, use_se=False)
                    cfg.update({k: v for k, v in fields.items() if k != "pre_logits"})
                    cfg.representation_size = width if fields["pre_logits"] else None
                    model = models.build_model(cfg, 7, scan=scan)
                    init = jax.eval_shape(
                        lambda m=model: m.init(
                            jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3))
                        )
                    )["params"]
                    apply = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x))
                    compiled[key] = (init, apply)
                init, apply = compiled[key]
                params = checkpoint.load_pretrained(path, init)
                if head is not None:
                    params["head"] = head
                got = np.asarray(apply(params, x))
                into = "scanned" if scan else "unrolled"
                print(
                    f"{name:36s} -> {into:8s} model: max|logit diff| = "
                    f"{np.max(np.abs(got - want)):.2e} (logit scale {np.max(np.abs(want)):.2f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
