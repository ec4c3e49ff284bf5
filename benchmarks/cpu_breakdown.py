"""Where a B/16 train step's time goes, piece by piece, in JAX and (optionally) in torch.

  python benchmarks/cpu_breakdown.py
  python benchmarks/cpu_breakdown.py --peer_python=/tmp/peer_venv/bin/python   # torch beside it

A profile of the whole jitted step does not answer "which part is slower than timm's": XLA:CPU
runs independent kernels concurrently and some matmuls asynchronously, so per-kernel times
overlap. This times each kind of work alone, at the shapes of ViT-B/16 at 224 px and batch 8:
- the dense matmuls of a block (tokens x 768 -> 768 or 3072 and back) in the three forms a
  training step runs them: forward, input gradient (dy @ W.T) and weight gradient (x.T @ dy);
- the attention core of one layer (softmax(q k^T / 8) v), forward and forward + backward, as
  the CPU path computes it (head-major, `vit_se.cpu_lean.attend`), as the plain path does
  (`jax.nn.dot_product_attention`, token-major, implementation 'xla') and, with the peer, torch's
  scaled_dot_product_attention;
- the AdamW update of all B/16 parameters, as the trainer builds and compiles it (vit_se.optim,
  donated state, CPU_COMPILER_OPTIONS).

Figures are the median of repeated runs, in ms and GFLOP/s. Only TF-free modules are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# Also puts the repository on sys.path, for vit_se and configs.
from train_speed import _jax_setup, _median, _time_steps, parse_args

BATCH, HEADS, TOKENS, HEAD_DIM, WIDTH, MLP = 8, 12, 197, 64, 768, 3072
ROWS = BATCH * TOKENS
DENSE = ((WIDTH, WIDTH), (WIDTH, MLP), (MLP, WIDTH))
ATTN_FLOPS = 2 * 2 * BATCH * HEADS * TOKENS * TOKENS * HEAD_DIM  # q.k and p.v, forward


def _median_s(fn, repeats, sync=lambda x: x):
    """Median seconds of `repeats` calls after one untimed call (train_speed's timing loop)."""
    return _median(_time_steps(fn, repeats, 1, sync))


def measure_jax(repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from vit_se import cpu_lean, train_setup, train_step

    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32))

    def timed(f, *args):
        compiled = jax.jit(f).lower(*args).compile()
        return _median_s(lambda: compiled(*args), repeats, jax.block_until_ready)

    out = {}
    for k, n in DENSE:
        x, w, dy = arr(ROWS, k), arr(k, n), arr(ROWS, n)
        out[f"dense {k}->{n}"] = {
            "forward": timed(lambda x, w: x @ w, x, w),
            "input grad": timed(lambda dy, w: dy @ w.T, dy, w),
            "weight grad": timed(lambda x, dy: x.T @ dy, x, dy),
        }
    q, k, v, g = (arr(BATCH, HEADS, TOKENS, HEAD_DIM) for _ in range(4))

    def core(q, k, v):
        return cpu_lean.attend(jnp.einsum("bhqd,bhkd->bhqk", q / HEAD_DIM**0.5, k), v)

    def plain(q, k, v):  # [B, T, H, D] in and out, as flax's attention module hands it over
        return jax.nn.dot_product_attention(q, k, v, implementation="xla")

    def grad_of(f):
        def fwd_bwd(q, k, v, g):
            return jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))(q, k, v)

        return fwd_bwd

    out["attention"] = {
        "forward": timed(core, q, k, v),
        "fwd+bwd": timed(grad_of(core), q, k, v, g),
    }
    q, k, v, g = (jnp.swapaxes(t, 1, 2) for t in (q, k, v, g))
    out["attention plain"] = {
        "forward": timed(plain, q, k, v),
        "fwd+bwd": timed(grad_of(plain), q, k, v, g),
    }

    config = _jax_setup(parse_args([]))
    model = train_setup.create_model(config)
    dummy = jnp.zeros((1, 224, 224, 3), jnp.float32)
    init = train_step.jit_model_init(model, jax.default_backend())
    params = init(jax.random.PRNGKey(0), dummy)["params"]
    tx = train_setup.optimizer(config, train_setup.learning_rate(config, 1380, 30 * 1380))
    grads = jax.tree_util.tree_map(lambda p: 0.01 * p, params)

    def update(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    # Donated and compiled as the train step is, so the update runs in place.
    state = [params, jax.jit(tx.init)(params)]
    options = train_step.compiler_options(jax.default_backend())
    compiled = (
        jax.jit(update, donate_argnums=(0, 1), compiler_options=options)
        .lower(*state, grads)
        .compile()
    )

    def step():
        state[:] = compiled(*state, grads)
        return state

    out["adamw"] = {"update (in place)": _median_s(step, repeats, jax.block_until_ready)}
    return out


def measure_torch(repeats):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    out = {}
    with torch.no_grad():
        for k, n in DENSE:
            x, w, dy = torch.randn(ROWS, k), torch.randn(k, n), torch.randn(ROWS, n)
            out[f"dense {k}->{n}"] = {
                "forward": _median_s(lambda x=x, w=w: x @ w, repeats),
                "input grad": _median_s(lambda dy=dy, w=w: dy @ w.T, repeats),
                "weight grad": _median_s(lambda x=x, dy=dy: x.T @ dy, repeats),
            }
        q, k, v = (torch.randn(BATCH, HEADS, TOKENS, HEAD_DIM) for _ in range(3))
        forward = _median_s(lambda: F.scaled_dot_product_attention(q, k, v), repeats)
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    g = torch.randn(BATCH, HEADS, TOKENS, HEAD_DIM)

    def fwd_bwd():
        F.scaled_dot_product_attention(q, k, v).backward(g)

    out["attention"] = {"forward": forward, "fwd+bwd": _median_s(fwd_bwd, repeats)}
    return out


def _flops(section, kind):
    if section.startswith("dense"):
        k, n = (int(v) for v in section.split()[1].split("->"))
        return 2 * ROWS * k * n
    if section.startswith("attention"):
        return ATTN_FLOPS * (1 if kind == "forward" else 3)
    return None


def print_table(jax_out, torch_out):
    print(f"ViT-B/16 pieces at batch {BATCH}, {TOKENS} tokens; median of repeated runs")
    head = f"{'':34s}{'JAX ms':>9s}{'GFLOP/s':>9s}"
    print(head + (f"{'torch ms':>10s}{'GFLOP/s':>9s}" if torch_out else ""))
    for section, kinds in jax_out.items():
        for kind, seconds in kinds.items():
            flops = _flops(section, kind)
            line = f"{section + ', ' + kind:34s}{seconds * 1e3:9.1f}"
            line += f"{flops / seconds / 1e9:9.0f}" if flops else f"{'-':>9s}"
            other = (torch_out or {}).get(section, {}).get(kind)
            if other is not None:
                line += f"{other * 1e3:10.1f}"
                line += f"{flops / other / 1e9:9.0f}" if flops else f"{'-':>9s}"
            print(line)
    print("attention GFLOP/s count the two matmuls (forward) or six (fwd+bwd), not the softmax")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--peer_python", default=None, help="interpreter with torch: time it too")
    p.add_argument("--only_torch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only_torch:
        print(json.dumps(measure_torch(args.repeats)))
        return
    torch_out = None
    if args.peer_python:
        cmd = [args.peer_python, os.path.abspath(__file__), "--only_torch"]
        proc = subprocess.run(
            cmd + [f"--repeats={args.repeats}"], capture_output=True, text=True, check=False
        )
        if proc.returncode:
            sys.exit(f"torch peer failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
        torch_out = json.loads(proc.stdout.strip().splitlines()[-1])
    print_table(measure_jax(args.repeats), torch_out)


if __name__ == "__main__":
    main()
