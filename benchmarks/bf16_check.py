"""bfloat16 activations against float32 for ViT-B/16 + SE, on whatever device JAX sees.

  python benchmarks/bf16_check.py [--model=B/16] [--batch=16] [--impl=plain] [--attention_impl=xla]

Prints the max and mean |logit difference| between dtype=bfloat16 and float32 forward passes
with the same float32 parameters (random, with a non-zero head so logits are not all zero), the
top-1 agreement, and that a bfloat16 train step gives a finite loss and finite float32 gradients.
--impl and --attention_impl set the model's fields for both passes (cuDNN attention on an NVIDIA
GPU: the float32 pass then runs its attention core in bfloat16 too). Runs without TensorFlow
(only jax, flax, optax, ml_collections).
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from vit_se import model_configs, models  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="B/16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--impl", default="auto", choices=models.IMPLS)
    parser.add_argument("--attention_impl", default="xla", choices=models.ATTENTION_IMPLS)
    args = parser.parse_args()
    impl = models.resolve_impl(args.impl, args.attention_impl)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); impl {impl}")
    cfg = model_configs.get_config(args.model)
    cfg.impl, cfg.attention_impl = args.impl, args.attention_impl
    f32 = models.build_model(cfg, 7)
    bf16 = models.build_model(cfg, 7, dtype="bfloat16")
    x = jax.random.uniform(
        jax.random.PRNGKey(1), (args.batch, args.image_size, args.image_size, 3), minval=-1
    )
    params = jax.jit(f32.init)(jax.random.PRNGKey(0), x[:1])["params"]
    head = params["head"]
    params["head"] = {
        "kernel": jax.random.normal(jax.random.PRNGKey(2), head["kernel"].shape) * 0.05,
        "bias": head["bias"],
    }
    dtypes = {str(p.dtype) for p in jax.tree_util.tree_leaves(params)}
    a = np.asarray(jax.jit(f32.apply)({"params": params}, x))
    b = np.asarray(jax.jit(bf16.apply)({"params": params}, x))
    diff = np.abs(a - b)
    print(f"params dtypes: {sorted(dtypes)}; logits dtype (bf16 model): {b.dtype}")
    print(
        f"|logit diff| max {diff.max():.4f} mean {diff.mean():.4f} (logit scale "
        f"{np.abs(a).max():.3f}); top-1 agreement {np.mean(a.argmax(1) == b.argmax(1)):.3f}"
    )

    labels = jnp.arange(args.batch) % 7

    def loss_fn(p):
        logits = bf16.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    finite = all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    print(
        f"bf16 train step: loss {float(loss):.4f}, gradients finite: {finite}, gradient dtypes: "
        f"{sorted({str(g.dtype) for g in leaves})}"
    )


if __name__ == "__main__":
    main()
