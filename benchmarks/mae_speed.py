"""What a masked-autoencoder pretraining step costs against the classifier's step of the same ViT.

  python benchmarks/mae_speed.py                        # B/16 at 224 px, batch 8, on this machine
  python benchmarks/mae_speed.py --variant=tiny/8 --image_size=48 --batch=64 --rounds=3

Both steps are the trainer's own (`vit_se.train_setup.build` on configs/common.py for the
classifier, configs/mae_faces.py for task 'mae'), jitted with the trainer's compiler options and
timed on the same random images. With 75% masking the encoder runs on a quarter of the patches
(plus the class token) and the light decoder on all of them: the table gives images/s of each, the
ratio, XLA's FLOP count of each compiled step and its planned scratch memory. Rounds alternate
which step is timed first, so that a ratio can be told from the machine's drift.
"""

from __future__ import annotations

import argparse
import statistics
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="B/16")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mask_ratio", type=float, default=0.75)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--impl", default="auto", help="config.model.impl")
    return p.parse_args(argv)


def _configs(args):
    from vit_se import config_checks, model_configs
    from vit_se.configs import common, mae_faces

    classify = common.get_config()
    classify.dataset = "raf_db"
    classify.model = model_configs.get_config(args.variant)
    pretrain = mae_faces.get_config(f"variant={args.variant}")
    pretrain.mae.mask_ratio = args.mask_ratio
    for c in (classify, pretrain):
        c.image_size, c.batch_size = args.image_size, args.batch
        c.model.impl = args.impl
        config_checks.check_values(c)
    return {"classifier": classify, "mae": pretrain}


class Step:
    """One task's jitted step, compiled, with its state and a batch."""

    def __init__(self, config):
        import jax
        import numpy as np

        from vit_se import config_checks, sharding, train_setup

        config = config_checks.resolve(config)
        mesh = sharding.make_mesh(jax.devices()[:1])
        self.setup = train_setup.build(config, mesh, 1000, 100_000)
        self.state = train_setup.init_state(config, self.setup)
        rng = np.random.default_rng(0)
        size, n = config.image_size, config.batch_size
        batch = {"image": rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)}
        if config.task != "mae":
            batch["label"] = rng.integers(0, config.num_classes, n).astype(np.int32)
        self.batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        t0 = time.perf_counter()
        self.compiled = self.setup.train_step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        self.flops = float(cost.get("flops", 0.0)) if cost else float("nan")
        self.temp = self.compiled.memory_analysis().temp_size_in_bytes
        self.times = []

    def run(self, steps, warmup):
        import jax

        for i in range(warmup + steps):
            t0 = time.perf_counter()
            self.state, metrics = self.compiled(self.state, self.batch)
            jax.block_until_ready(metrics)
            if i >= warmup:
                self.times.append(time.perf_counter() - t0)


def main(argv=None):
    args = parse_args(argv)
    import jax

    steps = {name: Step(config) for name, config in _configs(args).items()}
    names = list(steps)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            steps[name].run(args.steps, args.warmup)
    print(
        f"jax {jax.__version__}, {jax.default_backend()}, {jax.device_count()} device(s); "
        f"{args.variant} at {args.image_size} px, batch {args.batch}, mask ratio "
        f"{args.mask_ratio}, impl {args.impl}; {args.rounds} rounds of {args.steps} steps"
    )
    print(
        f"{'step':<12}{'images/s':>10}{'s/step':>9}{'GFLOP':>9}{'scratch MiB':>13}{'compile s':>11}"
    )
    rate = {}
    for name in names:
        s = steps[name]
        median = statistics.median(s.times)
        rate[name] = args.batch / median
        print(
            f"{name:<12}{rate[name]:>10.2f}{median:>9.3f}{s.flops / 1e9:>9.1f}"
            f"{s.temp / 2**20:>13.0f}{s.compile_s:>11.1f}"
        )
    flops = steps["classifier"].flops / steps["mae"].flops
    print(
        f"MAE / classifier: {rate['mae'] / rate['classifier']:.2f}x images/s "
        f"(the classifier's step does {flops:.2f}x the MAE step's FLOPs)"
    )


if __name__ == "__main__":
    main()
