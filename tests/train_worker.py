"""Runs N train steps of a tiny ViT-SE on fixed batches; saves loss and params to an .npz.

Started by tests in a fresh process so that XLA_FLAGS (simulated devices) and jax.distributed
take effect:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/train_worker.py OUT.npz \
      [--fsdp] [--accum=N] [--process_id=I --num_processes=P --port=PORT]

Every process builds the same global batches and feeds only its own slice of examples, exactly
as the input pipeline does, so a multi-process run must agree with a single-process one.
"""

import argparse

import jax
import numpy as np


def tiny_config(fsdp=False, accum=1, batch=16):
    from vit_se import model_configs
    from vit_se.configs import common

    config = common.get_config()
    config.dataset = "raf_db"
    config.model = model_configs.get_config("tiny/4")
    config.model.transformer.dropout_rate = 0.0
    config.image_size = 16
    config.batch_size = batch
    config.accum_steps = accum
    # SGD keeps float32 reduction-order noise at its own size; Adam's normalisation would
    # magnify it for near-zero gradients and hide real disagreements behind a loose tolerance.
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.schedule = "constant"
    config.grad_clip_norm = 1.0
    config.param_sharding = "fsdp" if fsdp else "replicate"
    config.fsdp_min_size = 256
    return config


def run_tolerances(config, steps):
    """(loss, parameter) absolute tolerances for two runs of `steps` steps of `config` that differ
    only in summation order (devices, processes, micro-batches, scanned blocks); the rule is
    tests/tolerances.py's.

    Gradients are clipped to global norm grad_clip_norm, which bounds every entry: that is their
    scale. Each step's update is learning_rate times momentum's sum of past gradients, so the
    parameters carry lr * momentum_sgd_factor gradient errors. The loss is a mean cross-entropy:
    the forward sums plus the batch, at the loss's own scale (log of the class count at the start).
    """
    import tolerances

    model, size, batch = config.model, config.image_size, config.batch_size
    grad = tolerances.atol(config.grad_clip_norm, tolerances.vit_grad_sums(model, size, batch))
    params = config.learning_rate * tolerances.momentum_sgd_factor(steps, config.momentum) * grad
    loss = tolerances.atol(np.log(config.num_classes), tolerances.vit_sums(model, size) + batch)
    return loss, params


def batches(config, steps, seed=0):
    rng = np.random.default_rng(seed)
    size = config.image_size
    for _ in range(steps):
        labels = rng.integers(0, config.num_classes, config.batch_size)
        images = rng.normal(0, 0.5, (config.batch_size, size, size, 3)).astype(np.float32)
        images[:, :4, :4, 0] += labels[:, None, None] / 3.0  # learnable evidence
        yield {"image": images, "label": labels}


def setup(config, total_steps, devices=None):
    """The trainer's own state and jitted step for `config` on a mesh over `devices`."""
    from vit_se import sharding, train_setup

    mesh = sharding.make_mesh(devices)
    setup = train_setup.build(config, mesh, 100, total_steps)
    return train_setup.init_state(config, setup), setup.train_step, mesh


def run(config, steps):
    from vit_se import input_pipeline, sharding

    state, step_fn, mesh = setup(config, steps)
    per_process = config.batch_size // jax.process_count()
    lo = jax.process_index() * per_process
    losses = []
    for batch in batches(config, steps):
        local = {k: v[lo : lo + per_process] for k, v in batch.items()}
        state, m = step_fn(state, input_pipeline.to_global(local, sharding.batch_sharding(mesh)))
        losses.append(float(np.asarray(m["loss"].addressable_data(0))))
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(state.params, tiled=True)
    shardings = {
        jax.tree_util.keystr(k): str(v.sharding.spec)
        for k, v in jax.tree_util.tree_leaves_with_path(state.params)
    }
    return np.asarray(losses), params, shardings


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    if args.num_processes:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    from vit_se import checkpoint

    config = tiny_config(args.fsdp, args.accum, args.batch)
    losses, params, shardings = run(config, args.steps)
    if jax.process_index() == 0:
        flat = {f"params/{k}": np.asarray(v) for k, v in checkpoint.flatten(params).items()}
        np.savez(
            args.out,
            losses=losses,
            devices=jax.device_count(),
            processes=jax.process_count(),
            sharded=np.asarray([s for s in shardings.values() if "data" in s]),
            **flat,
        )


if __name__ == "__main__":
    main()
