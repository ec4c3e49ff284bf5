"""What the pooling costs a ViT-SE training step: class token, 'gap', big_vision's MAP head.

  python benchmarks/pooling_cost.py                          # B/16, batch 8, 224 px, impl auto
  python benchmarks/pooling_cost.py --model=So400m/14 --steps=3 --classifiers=token,map

For each `config.model.classifier` it jits the model's forward and backward pass in training
mode (softmax cross-entropy, the gradients of every parameter: what a train step computes before
the optimizer, whose update differs between them only by the MAP head's parameters) and prints:
- XLA's FLOP count of the compiled program (exact, the same on any CPU);
- the analytic extra work of the MAP head over 'gap': keys and values of every token, one query,
  one MLP row (forward; training is about 3x);
- seconds per step: the median of --steps timed steps after --warmup, and the best one (on a
  shared CPU the median carries other processes' load; the best is closer to the machine).
'token' is the default model: its last block computes the class token alone
(`last_block_token_only`), which 'gap' and 'map' cannot do, since they read every token.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vit_se import model_configs, models  # noqa: E402


def map_head_flops(width, mlp, tokens, batch):
    """Forward FLOPs (2 per multiply-add) the MAP head adds to 'gap' pooling: k and v of every
    token, q, out and the MLP of one row, the probe's scores and weighted sum."""
    per_image = 2 * (2 * tokens * width * width + 2 * width * width + 2 * width * mlp)
    per_image += 2 * 2 * tokens * width  # scores and weighted values over all heads
    return batch * per_image


def measure(args, classifier):
    cfg = model_configs.get_config(args.model)
    cfg.classifier, cfg.impl = classifier, args.impl
    model = models.build_model(cfg, 7)
    size = args.image_size
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (args.batch, size, size, 3)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 7, args.batch))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]

    def loss(p, x, labels):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step = jax.jit(jax.value_and_grad(loss))
    compiled = step.lower(params, x, labels).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    for _ in range(args.warmup):
        jax.block_until_ready(compiled(params, x, labels))
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(params, x, labels))
        times.append(time.perf_counter() - t)
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
    return float(cost.get("flops", float("nan"))), statistics.median(times), min(times), n_params


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="B/16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--impl", default="auto", choices=models.IMPLS)
    p.add_argument("--classifiers", default="token,gap,map")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    width, _, _, mlp, patch = model_configs.VARIANTS[args.model]
    tokens = (args.image_size // patch) ** 2
    print(
        f"{args.model} at {args.image_size} px, batch {args.batch}, impl {args.impl} "
        f"({models.resolve_impl(args.impl)} on {jax.default_backend()}), forward + backward"
    )
    extra = map_head_flops(width, mlp, tokens, args.batch)
    print(f"MAP head over 'gap', analytic: {extra / 1e9:.2f} GFLOP forward per step")
    rows = {}
    for classifier in args.classifiers.split(","):
        rows[classifier] = measure(args, classifier)
        flops, median, best, n = rows[classifier]
        print(
            f"{classifier:6s} {n:,} parameters  XLA {flops / 1e9:8.1f} GFLOP/step  "
            f"{median:6.2f} s/step median, {best:6.2f} s best",
            flush=True,
        )
    base = rows.get("token")
    if base:
        for classifier, (flops, median, best, _) in rows.items():
            if classifier != "token":
                print(
                    f"{classifier} vs token: FLOPs x{flops / base[0]:.3f}, "
                    f"median time x{median / base[1]:.3f}, best x{best / base[2]:.3f}"
                )


if __name__ == "__main__":
    main()
