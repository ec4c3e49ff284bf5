"""What XLA:CPU plans and reuses for the trainer's programs: figures of one jaxlib on one CPU.

  python benchmarks/xla_cpu_memory.py                      # init of B/16 (compiles, no run)
  python benchmarks/xla_cpu_memory.py --init_model=tiny/4  # a quick look

Each figure is a compiled program's memory plan (`compiled.memory_analysis()`) or a buffer
address, decided by XLA's scheduler and buffer assignment, which change with the jaxlib release;
so they are printed here, not asserted in tests/ (which check what JAX itself decides, and the
values). Three measurements:

- remat: planned scratch (temp) bytes of a gradient step of --remat_layers tiny/4 blocks at batch
  --remat_batch, 32 px, with the trainer's CPU compiler options, for each remat_policy, scanned and
  unrolled, plain and cpu_lean (tests/test_scan_remat.py checks what each policy keeps for the
  backward pass).
- init: planned scratch of `train_step.jit_model_init` against a plain `jax.jit(model.init)`, for
  --init_model at 224 px (tests/test_train.py checks that the values are the same).
- donation: how many parameter buffers of the trainer's fresh state (`train_step.init_state`)
  the first train step of a tiny/4 model updates in place: the same address before and after.
  All of them, or the step holds a second copy of the parameters (`train_step.xla_owned`).

Only TF-free modules of vit_se are imported.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ and, on machines where it is not installed, vit_se/

MiB = 2**20
POLICIES = ("none", "full", "save_dots")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--remat_layers", type=int, default=4)
    p.add_argument("--remat_batch", type=int, default=64)
    p.add_argument("--init_model", default="B/16", help="vit_se.model_configs variant")
    return p.parse_args(argv)


def _scratch(fn, *args):
    import jax

    from vit_se import train_step

    options = train_step.compiler_options(jax.default_backend())
    compiled = jax.jit(fn, compiler_options=options).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def remat(layers, batch):
    """{(impl, scan): {policy: planned scratch bytes of a gradient step}}."""
    import jax
    import jax.numpy as jnp

    from vit_se import model_configs, models

    out = {}
    for impl in ("plain", "cpu_lean"):
        for scan in (True, False):
            cfg = model_configs.get_config("tiny/4")
            cfg.transformer.num_layers = layers
            cfg.impl, cfg.scan = impl, scan
            x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
            row = {}
            for policy in POLICIES:
                cfg.remat_policy = policy
                model = models.build_model(cfg, 7)
                params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]

                def loss(p, x, model=model):
                    return jnp.sum(model.apply({"params": p}, x, train=True))

                row[policy] = _scratch(jax.grad(loss), params, x)
            out[(impl, scan)] = row
    return out


def init(name):
    """(jit_model_init scratch, jax.jit(model.init) scratch) in bytes, at 224 px."""
    import jax
    import jax.numpy as jnp

    from vit_se import model_configs, models, train_step

    model = models.build_model(model_configs.get_config(name), 7)
    key, image = jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))
    lean = train_step.jit_model_init(model, "cpu").lower(key, image).compile()
    plain = jax.jit(model.init).lower(key, image).compile()
    return lean.memory_analysis().temp_size_in_bytes, plain.memory_analysis().temp_size_in_bytes


def donation():
    """(parameter buffers the first step updated in place, parameter buffers)."""
    import jax
    import numpy as np

    from vit_se import config_checks, model_configs, sharding, train_setup
    from vit_se.configs import common

    config = common.get_config()
    config.model = model_configs.get_config("tiny/4")
    config.image_size, config.batch_size = 16, 8
    config = config_checks.resolve(config)
    mesh = sharding.make_mesh(jax.devices()[:1])
    setup = train_setup.build(config, mesh, steps_per_epoch=2, total=100)
    state = train_setup.init_state(config, setup)
    step_fn = setup.train_step
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(0, 0.5, (8, 16, 16, 3)).astype(np.float32),
        "label": rng.integers(0, config.num_classes, 8),
    }
    before = [x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(state.params)]
    state, _ = step_fn(state, batch)
    after = [x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(state.params)]
    return sum(a == b for a, b in zip(before, after, strict=True)), len(before)


def main(argv=None):
    args = parse_args(argv)
    import jax

    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    print(
        f"remat: planned scratch of a gradient step, {args.remat_layers} tiny/4 blocks, "
        f"batch {args.remat_batch}, 32 px (MiB, {' / '.join(POLICIES)})"
    )
    for (impl, scan), row in remat(args.remat_layers, args.remat_batch).items():
        figures = " / ".join(f"{row[p] / MiB:.0f}" for p in POLICIES)
        print(f"  {impl:<9} scan={scan!s:<5}  {figures}")
    lean, plain = init(args.init_model)
    print(
        f"init: planned scratch of {args.init_model} at 224 px, jit_model_init "
        f"{lean / MiB:.0f} MiB, jax.jit(model.init) {plain / MiB:.0f} MiB"
    )
    reused, total = donation()
    print(f"donation: the first train step updated {reused} of {total} parameter buffers in place")


if __name__ == "__main__":
    main()
