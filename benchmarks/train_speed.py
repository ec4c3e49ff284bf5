"""Train and inference speed of ViT-SE B/16 on this machine, next to its matmul rate and timm's.

  python benchmarks/train_speed.py                        # ViT-SE B/16, batch 8, 224 px
  python benchmarks/train_speed.py --peer                 # and timm's ViT-B/16 side by side
  python benchmarks/train_speed.py --peer --steps=20 --warmup=5 --json_out=/tmp/speed.json
  python benchmarks/train_speed.py --peer --rounds=3     # 3 alternating JAX/timm rounds
  python benchmarks/train_speed.py --from_json=/tmp/speed.json      # re-print a saved run
  python benchmarks/train_speed.py --impl=plain           # the plain computation on this CPU
  # an accelerator's measurement in one command:
  python benchmarks/train_speed.py --peer --batches=64,256 --dtype=bfloat16 --attention_impl=cudnn

Model options (`config.model.*`, README "The model"): --impl (auto: cpu_lean on a CPU, plain
elsewhere), --attention_impl (xla, cudnn), --scan, --remat_policy (none, full, save_dots).
--batches=64,256 runs the whole measurement at each batch size in turn (train and inference
batch both), one table per size: at batch 8 a GPU measures per-step overhead, not arithmetic.

What it prints, for the machine it runs on:
- the measured matmul rate: a jitted float32 2048^3 product (and bfloat16 8192^3 on a GPU), best
  repetition of a run before and a run after the models: the ceiling FLOPs utilisation is
  measured against;
- ViT-SE train images/s: the trainer's own jitted step (vit_se.train_step with AdamW and the
  schedule of configs/common.py, donated state, explicit shardings), so the figure is the step
  `python -m vit_se.main` runs, minus the input pipeline (pipeline_speed.py measures that);
- inference images/s of the jitted `model.apply(..., train=False)`;
- model FLOPs: 3x (train) / 1x (inference) the analytic forward FLOPs of the model, the same count
  for both frameworks; model FLOPs utilisation = model FLOP/s / matmul rate. XLA's cost analysis
  of the compiled program is shown beside it (smaller: vit_se skips the last block's work on the
  tokens the head never reads; on GPUs it also leaves out the dots it hands to cuBLAS);
- peak memory: on a GPU the allocator's peak bytes in use; on a CPU the peak RSS of the process;
  below it the scratch memory XLA planned for the step (activations, gradients, temporaries);
- with --peer (torch and timm installed; see benchmarks/README.md), timm's `vit_base_patch16_224`
  trained and run the same way (timm_peer.py), and the JAX/timm ratios;
- on a CPU, the share of the machine's CPU time other processes took during each measurement:
  on a shared machine, a slow figure measured while others took CPU is contention, not code.
  The mean and the best step are both shown for the same reason.

Every measurement runs in its own subprocess (`--only=NAME`), so that peak RSS is that
measurement's alone, JAX and torch never share a process (or a GPU's memory pool), and XLA_FLAGS
set in the environment reach every JAX measurement. A shared CPU's speed drifts by a few per cent
over minutes, as much as the JAX/timm difference: --rounds=N repeats each pair N times, alternating
which side goes first, and prints every round's ratio.

Only TF-free modules of vit_se are imported (train_setup, train_step, optim, sharding, models,
model_configs and configs.common), so this runs on accelerator machines that have JAX, Flax,
optax and ml_collections but no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ and, on machines where it is not installed, vit_se/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # timm_peer

MEASUREMENTS = ("matmul", "jax_train", "jax_infer", "timm_train", "timm_infer")
NUM_CLASSES = 7
MiB = 2**20
# The model's own choices; vit_se.choices imports nothing, so the parent process, which never
# imports JAX, can check the flags.
from vit_se.choices import ATTENTION_IMPLS, IMPLS, REMAT_POLICIES  # noqa: E402
from vit_se.progress import rate_figure  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="B/16", help="vit_se.model_configs variant")
    p.add_argument("--batch", type=int, default=8, help="train batch (the authors' 8)")
    p.add_argument("--inference_batch", type=int, default=8)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 5 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed (default 3 CPU, 10 GPU)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute dtype (parameters stay float32; timm uses autocast)",
    )
    p.add_argument("--impl", default="auto", choices=IMPLS, help="config.model.impl")
    p.add_argument(
        "--attention_impl",
        default="xla",
        choices=ATTENTION_IMPLS,
        help="config.model.attention_impl (cudnn: NVIDIA GPUs)",
    )
    p.add_argument("--scan", action="store_true", help="config.model.scan: nn.scan over blocks")
    p.add_argument(
        "--remat_policy", default="none", choices=REMAT_POLICIES, help="config.model.remat_policy"
    )
    p.add_argument(
        "--batches",
        default=None,
        help="comma-separated batch sizes (e.g. 64,256): the whole measurement at each, train "
        "and inference batch alike; overrides --batch and --inference_batch",
    )
    p.add_argument("--peer", action="store_true", help="also run timm's ViT-B/16")
    p.add_argument(
        "--peer_python",
        default=sys.executable,
        help="interpreter with torch+timm for the peer (default: this one)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --peer: run each JAX/timm pair this many times, alternating which goes first",
    )
    p.add_argument("--json_out", default=None, help="write every figure here as JSON")
    p.add_argument("--from_json", default=None, help="re-print the table of a --json_out file")
    p.add_argument("--only", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# FLOPs.


def analytic_forward_flops(model_config, image_size, num_classes=NUM_CLASSES, use_se=None):
    """FLOPs of one image's forward pass, counting matmuls and the patch conv (2 per MAC).

    Element-wise work (softmax, GELU, LayerNorm) is left out: it is under 1% of B/16's FLOPs.
    `use_se=False` gives plain ViT (timm's model); None follows the config.
    """
    hidden = model_config.hidden_size
    t = model_config.transformer
    patch = model_config.patches.size[0]
    n = (image_size // patch) ** 2
    tokens = n + (1 if model_config.classifier == "token" else 0)
    flops = 2 * n * (patch * patch * 3) * hidden
    per_layer = (
        2 * tokens * hidden * 3 * hidden  # q, k, v
        + 2 * 2 * tokens * tokens * hidden  # q.k and attention.v
        + 2 * tokens * hidden * hidden  # output projection
        + 2 * 2 * tokens * hidden * t.mlp_dim  # MLP in and out
    )
    flops += t.num_layers * per_layer
    width = model_config.representation_size or hidden
    if model_config.representation_size:
        flops += 2 * hidden * width
    if model_config.use_se if use_se is None else use_se:
        flops += 2 * 2 * width * (width // model_config.se_reduction)
    return flops + 2 * width * num_classes


def _xla_flops(compiled):
    """Total FLOPs XLA's cost analysis gives the compiled program, or None."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _xla_temp_bytes(compiled):
    """Scratch memory XLA planned for the compiled program (activations, gradients), or None."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


# ----------------------------------------------------------------------------------------------
# Measurements; each runs in a child process.


def _rss_peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _defaults(args, gpu):
    steps = args.steps if args.steps is not None else (50 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 3)
    return steps, warmup


def busy_jiffies():
    """(busy, total) CPU jiffies of the whole machine from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _time_steps(run, steps, warmup, sync, out=None):
    """Per-step wall times after `warmup` untimed steps.

    With `out`, also records how much of the machine's CPU this process and everybody else used
    while the timed steps ran: on a shared machine a slow figure with a large `others_cpu_share`
    was measured under contention, not a slow program.
    """
    for _ in range(warmup):
        sync(run())
    times = []
    cpu0, jiffies0, wall0 = os.times(), busy_jiffies(), time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        sync(run())
        times.append(time.perf_counter() - t0)
    if out is not None:
        cpu1, jiffies1, wall = os.times(), busy_jiffies(), time.perf_counter() - wall0
        own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        cores = os.cpu_count() or 1
        out["own_cpu_share"] = own / (wall * cores)
        if jiffies0 and jiffies1 and jiffies1[1] > jiffies0[1]:
            busy = (jiffies1[0] - jiffies0[0]) / (jiffies1[1] - jiffies0[1])
            out["others_cpu_share"] = max(busy - out["own_cpu_share"], 0.0)
    return times


def _device_info(jax):
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
    }


def _model_info(args):
    """The implementation 'auto' resolved to on this device, beside the other model options."""
    from vit_se import models

    return {
        "impl": models.resolve_impl(args.impl, args.attention_impl),
        "attention_impl": args.attention_impl,
        "scan": args.scan,
        "remat_policy": args.remat_policy,
    }


def _jax_peak(jax, out):
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["peak_device_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def measure_matmul(args):
    """float32 2048^3 (and, on a GPU, bfloat16 8192^3) jitted products, in FLOP/s."""
    import jax
    import jax.numpy as jnp

    info = _device_info(jax)
    gpu = info["platform"] == "gpu"
    sizes = [("float32", 2048)] + ([("bfloat16", 8192)] if gpu else [])
    out = dict(info)
    for dtype, n in sizes:
        ka, kb = jax.random.split(jax.random.PRNGKey(0))
        a = jax.random.normal(ka, (n, n), dtype)
        b = jax.random.normal(kb, (n, n), dtype)
        f = jax.jit(jnp.matmul)
        m = {"n": n}
        times = _time_steps(
            lambda a=a, b=b, f=f: f(a, b), 50 if gpu else 20, 3, jax.block_until_ready, m
        )
        # The best repetition: the machine's ceiling, which a shared CPU reaches only between
        # other jobs' bursts (the median is kept to show how much they cost).
        m["flops_per_s"] = 2 * n**3 / min(times)
        m["median_flops_per_s"] = 2 * n**3 / sorted(times)[len(times) // 2]
        out[f"matmul_{dtype}"] = m
    return out


def _jax_setup(args):
    from configs import common
    from vit_se import model_configs

    config = common.get_config()
    config.model = model_configs.get_config(args.model)
    config.model.dtype = args.dtype
    config.model.impl = args.impl
    config.model.attention_impl = args.attention_impl
    config.model.scan = args.scan
    config.model.remat_policy = args.remat_policy
    config.batch_size = args.batch
    config.image_size = args.image_size
    config.num_classes = NUM_CLASSES
    return config


def _batch(jax, n, size, sharding=None):
    import numpy as np

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, (n,)).astype(np.int32),
    }
    return jax.device_put(batch, sharding)


def measure_jax_train(args):
    """The trainer's jitted step: AdamW + step-decay schedule of configs/common.py."""
    import jax

    from vit_se import sharding, train_setup, train_step

    base_rss = _rss_peak_bytes()
    config = _jax_setup(args)
    info = _device_info(jax)
    steps, warmup = _defaults(args, info["platform"] == "gpu")
    # A 30-epoch run of RAF-DB's ~11k training images at batch 8, as configs/raf_db.py would.
    mesh = sharding.make_mesh()
    setup = train_setup.build(config, mesh, 1380, 30 * 1380)
    state = train_setup.init_state(config, setup)
    step = setup.train_step
    batch = _batch(jax, args.batch, args.image_size, sharding.batch_sharding(mesh))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    train_step.release_host_memory()  # as the trainer does after its first step
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch)
        return holder[0], metrics

    out = dict(info, compile_s=compile_s, base_rss_bytes=base_rss, **_model_info(args))
    out["step_times"] = _time_steps(run, steps, warmup, jax.block_until_ready, out)
    out["xla_flops"] = _xla_flops(compiled)
    out["xla_temp_bytes"] = _xla_temp_bytes(compiled)
    out["peak_rss_bytes"] = _rss_peak_bytes()
    return _jax_peak(jax, out)


def measure_jax_infer(args):
    """The jitted forward pass in eval mode on a batch of `inference_batch` images.

    The parameters are random arrays put on the device one at a time, as a loaded checkpoint
    ends up there (`vit_se.inference` puts them on the device once) and as timm builds its model
    in place; the speed does not depend on their values. `model.init` would add the compilation
    of the initialiser (about 200 MB of the process's peak), which inference never runs.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vit_se import train_setup, train_step

    base_rss = _rss_peak_bytes()
    config = _jax_setup(args)
    info = _device_info(jax)
    steps, warmup = _defaults(args, info["platform"] == "gpu")
    model = train_setup.create_model(config)
    dummy = jax.ShapeDtypeStruct((1, args.image_size, args.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: jax.device_put(0.02 * rng.standard_normal(s.shape, np.float32)), shapes
    )
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    images = _batch(jax, args.inference_batch, args.image_size)["image"]
    t0 = time.perf_counter()
    compiled = apply.lower(params, images).compile()
    compile_s = time.perf_counter() - t0
    train_step.release_host_memory()  # as the trainer does after compiling
    out = dict(info, compile_s=compile_s, base_rss_bytes=base_rss, **_model_info(args))
    run = lambda: compiled(params, images)
    out["step_times"] = _time_steps(run, steps, warmup, jax.block_until_ready, out)
    out["xla_flops"] = _xla_flops(compiled)
    out["peak_rss_bytes"] = _rss_peak_bytes()
    return _jax_peak(jax, out)


def _measure_timm(args, kind):
    import timm_peer

    base_rss = _rss_peak_bytes()
    batch = args.batch if kind == "train" else args.inference_batch
    run, sync, info = timm_peer.build(kind, batch, args.image_size, args.dtype, NUM_CLASSES)
    steps, warmup = _defaults(args, info["platform"] == "gpu")
    out = dict(info, base_rss_bytes=base_rss)
    out["step_times"] = _time_steps(run, steps, warmup, sync, out)
    if timm_peer.peak_device_bytes() is not None:
        out["peak_device_bytes"] = timm_peer.peak_device_bytes()
    out["peak_rss_bytes"] = _rss_peak_bytes()
    return out


CHILDREN = {
    "matmul": measure_matmul,
    "jax_train": measure_jax_train,
    "jax_infer": measure_jax_infer,
    "timm_train": lambda a: _measure_timm(a, "train"),
    "timm_infer": lambda a: _measure_timm(a, "infer"),
}


def child_main(args):
    try:
        result = CHILDREN[args.only](args)
    except Exception as e:  # reported by the parent as a missing figure
        result = {"error": f"{type(e).__name__}: {e}"}
    with open(args.result, "w") as f:
        json.dump(result, f)


# ----------------------------------------------------------------------------------------------
# The parent: runs each measurement in a subprocess, then prints the table.


def _forwarded_flags(args):
    flags = [
        f"--model={args.model}",
        f"--batch={args.batch}",
        f"--inference_batch={args.inference_batch}",
        f"--image_size={args.image_size}",
        f"--dtype={args.dtype}",
        f"--impl={args.impl}",
        f"--attention_impl={args.attention_impl}",
        f"--remat_policy={args.remat_policy}",
    ]
    if args.scan:
        flags.append("--scan")
    if args.steps is not None:
        flags.append(f"--steps={args.steps}")
    if args.warmup is not None:
        flags.append(f"--warmup={args.warmup}")
    return flags


def run_child(name, args, python):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [python, os.path.abspath(__file__), f"--only={name}", f"--result={path}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + _forwarded_flags(args), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if not os.path.exists(path):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        with open(path) as f:
            result = json.load(f)
    result["wall_s"] = wall
    return result


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def summarise(r, batch, flops_per_step, flops_source, rate):
    """Adds images/s, FLOP/s and utilisation to one measurement's raw result."""
    if "error" in r:
        return r
    times = r["step_times"]
    mean = sum(times) / len(times)
    r["mean_step_s"] = mean
    r["median_step_s"] = sorted(times)[len(times) // 2]
    r["images_per_s"] = batch / mean
    r["best_images_per_s"] = batch / min(times)
    r["flops_per_step"] = flops_per_step
    r["flops_source"] = flops_source
    r["flops_per_s"] = flops_per_step / mean
    r["utilisation"] = r["flops_per_s"] / rate if rate else None
    if "peak_device_bytes" in r:
        r["peak_memory_bytes"], r["memory_kind"] = r["peak_device_bytes"], "device peak"
    else:
        r["peak_memory_bytes"], r["memory_kind"] = r["peak_rss_bytes"], "peak RSS"
    return r


def _fmt(x, spec):
    if x is None:
        return "-"
    return rate_figure(x) if spec == "rate" else format(x, spec)


# (label, measurement kind, key, format, scale, ratio): ratio 'speed' is JAX/timm of a rate,
# 'time' the inverse ratio of a time (both > 1 when JAX is faster), 'size' JAX/timm of memory.
ROWS = [
    ("train images/s", "train", "images_per_s", "rate", 1, "speed"),
    ("train images/s, best", "train", "best_images_per_s", "rate", 1, "speed"),
    ("train step s (mean)", "train", "mean_step_s", ".3g", 1, "time"),
    ("train GFLOP/step", "train", "flops_per_step", ".4g", 1e-9, None),
    ("  XLA's count", "train", "xla_flops", ".4g", 1e-9, None),
    ("train FLOPs util.", "train", "utilisation", ".1%", 1, "speed"),
    ("train peak MiB", "train", "peak_memory_bytes", ".0f", 1 / MiB, "size"),
    ("  XLA scratch MiB", "train", "xla_temp_bytes", ".0f", 1 / MiB, None),
    ("infer images/s", "infer", "images_per_s", "rate", 1, "speed"),
    ("infer images/s, best", "infer", "best_images_per_s", "rate", 1, "speed"),
    ("infer GFLOP/batch", "infer", "flops_per_step", ".4g", 1e-9, None),
    ("  XLA's count", "infer", "xla_flops", ".4g", 1e-9, None),
    ("infer FLOPs util.", "infer", "utilisation", ".1%", 1, "speed"),
    ("infer peak MiB", "infer", "peak_memory_bytes", ".0f", 1 / MiB, "size"),
]
CPU_ROWS = [
    ("train: others' CPU", "train", "others_cpu_share", ".0%", 1, None),
    ("infer: others' CPU", "infer", "others_cpu_share", ".0%", 1, None),
]


def print_table(results, args, header, show_cpu):
    print()
    print(header)
    peer = args.peer
    line = f"{'':22s}{'vit_se (JAX)':>14s}"
    print(line + (f"{'timm (torch)':>14s}{'JAX/timm':>10s}" if peer else ""))
    for label, kind, key, spec, scale, ratio_kind in ROWS + (CPU_ROWS if show_cpu else []):
        j = results.get(f"jax_{kind}", {}).get(key)
        line = f"{label:22s}{_fmt(None if j is None else j * scale, spec):>14s}"
        if peer:
            t = results.get(f"timm_{kind}", {}).get(key)
            line += f"{_fmt(None if t is None else t * scale, spec):>14s}"
            ratio = None
            if ratio_kind and j and t:
                ratio = t / j if ratio_kind == "time" else j / t
            line += f"{'-' if ratio is None else f'{ratio:.2f}x':>10s}"
        print(line)
    if peer:
        print("  JAX/timm: > 1 is faster for rates and times, larger for memory")
    if show_cpu:
        print("  others' CPU: share of the machine's CPU time other processes used meanwhile")
    for name in ("jax_train", "timm_train"):
        r = results.get(name, {})
        if "flops_source" in r:
            print(f"  {name} FLOPs: {r['flops_source']}; memory: {r['memory_kind']}")


def measure_all(args):
    """Runs every measurement in its own subprocess; returns the raw results and load averages.

    With --rounds=N each JAX measurement and its timm counterpart run N times, in turn and in
    alternating order (JAX first, then timm first, ...), so that a machine that speeds up or slows
    down during the run moves both sides alike; each round's ratio is reported besides the pooled
    figures.
    """
    kinds = ("train", "infer")
    frameworks = ("jax", "timm") if args.peer else ("jax",)
    runs = {f"{fw}_{kind}": [] for kind in kinds for fw in frameworks}
    load0 = os.getloadavg()
    results = {"matmul": _run_reported("matmul", args)}
    for r in range(args.rounds):
        for kind in kinds:
            for fw in frameworks if r % 2 == 0 else frameworks[::-1]:
                name = f"{fw}_{kind}"
                round_note = f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""
                runs[name].append(_run_reported(name, args, round_note))
    results.update({name: merge_rounds(rs) for name, rs in runs.items()})
    # Again at the end: the better of the two is the machine's rate.
    results["matmul_end"] = _run_reported("matmul", args)
    return results, [load0, os.getloadavg()]


def _run_reported(name, args, note=""):
    print(f"measuring {name}{note} ...", flush=True)
    python = args.peer_python if name.startswith("timm") else sys.executable
    r = run_child(name, args, python)
    if "error" in r:
        print(f"  {name}: not measured ({r['error']})", flush=True)
    elif "step_times" in r:
        print(f"  step times s: {', '.join(f'{t:.3g}' for t in r['step_times'])}", flush=True)
    return r


ROUND_KEYS = ("step_times", "peak_rss_bytes", "peak_device_bytes", "others_cpu_share")


def merge_rounds(rounds):
    """One measurement's rounds as one result: all step times pooled, the highest peak memory,
    the mean share of others' CPU; each round's own figures kept under 'rounds'."""
    failed = [r for r in rounds if "error" in r]
    if failed:
        return failed[0]
    merged = dict(rounds[0])
    if len(rounds) == 1:
        return merged
    merged["step_times"] = [t for r in rounds for t in r["step_times"]]
    for key in ("peak_rss_bytes", "peak_device_bytes"):
        if key in merged:
            merged[key] = max(r[key] for r in rounds)
    shares = [r["others_cpu_share"] for r in rounds if "others_cpu_share" in r]
    if shares:
        merged["others_cpu_share"] = sum(shares) / len(shares)
    merged["rounds"] = [{k: r[k] for k in ROUND_KEYS if k in r} for r in rounds]
    return merged


def round_ratios(jax_result, timm_result, batch):
    """JAX/timm images/s and peak memory of each round, or None without rounds."""
    a, b = jax_result.get("rounds"), timm_result.get("rounds")
    if not a or not b or len(a) != len(b):
        return None

    def speed(r):
        return batch * len(r["step_times"]) / sum(r["step_times"])

    def peak(r):
        return r.get("peak_device_bytes", r["peak_rss_bytes"])

    return {
        "speed": [speed(x) / speed(y) for x, y in zip(a, b, strict=True)],
        "memory": [peak(x) / peak(y) for x, y in zip(a, b, strict=True)],
    }


def _median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def print_round_ratios(results, args):
    for kind, batch in (("train", args.batch), ("infer", args.inference_batch)):
        ratios = round_ratios(
            results.get(f"jax_{kind}", {}), results.get(f"timm_{kind}", {}), batch
        )
        if not ratios:
            continue
        for what in ("speed", "memory"):
            each = ", ".join(f"{x:.2f}x" for x in ratios[what])
            label = "images/s" if what == "speed" else "peak memory"
            print(
                f"  {kind} {label} JAX/timm by round: {each} "
                f"(median {_median(ratios[what]):.2f}x, range {min(ratios[what]):.2f}x"
                f"-{max(ratios[what]):.2f}x)"
            )


def _rate(flops_per_s):
    if flops_per_s >= 1e12:
        return f"{flops_per_s / 1e12:.1f} TFLOP/s"
    return f"{flops_per_s / 1e9:.1f} GFLOP/s"


def report(args, results, loads):
    """Adds the derived figures to `results`, prints them, and returns the JSON summary."""
    from vit_se import model_configs  # ml_collections only; JAX stays out of this process

    model_config = model_configs.get_config(args.model)
    fwd = analytic_forward_flops(model_config, args.image_size)
    fwd_plain = analytic_forward_flops(model_config, args.image_size, use_se=False)

    mm = results["matmul"]
    if "error" in mm:
        sys.exit(f"matmul: {mm['error']}")
    end = results.get("matmul_end", {})
    for key in ("matmul_float32", "matmul_bfloat16"):
        if key in end and end[key]["flops_per_s"] > mm[key]["flops_per_s"]:
            mm[key] = dict(end[key], measured="at the end")
    gpu = mm["platform"] == "gpu"
    rate_key = "matmul_bfloat16" if args.dtype == "bfloat16" and gpu else "matmul_float32"
    rate = mm[rate_key]["flops_per_s"]
    # Model FLOPs utilisation counts the model's FLOPs, not what an implementation executes: vit_se
    # skips the last block's work on tokens the head never reads, which XLA's count leaves out.
    for kind, batch, mult in (("train", args.batch, 3), ("infer", args.inference_batch, 1)):
        analytic = f"analytic, matmuls only ({mult}x forward)"
        summarise(results[f"jax_{kind}"], batch, mult * fwd * batch, analytic, rate)
        if args.peer:
            summarise(results[f"timm_{kind}"], batch, mult * fwd_plain * batch, analytic, rate)

    if gpu:
        machine = f"{mm['device_kind']} x{mm['device_count']}"
    else:
        machine = f"{_cpu_name()}, {os.cpu_count()} cores"
    print()
    print(
        f"machine: {machine}; jax {mm['jax']}; load average {loads[0][0]:.2f} -> {loads[1][0]:.2f}"
    )
    for key in ("matmul_float32", "matmul_bfloat16"):
        if key in mm:
            m = mm[key]
            others = m.get("others_cpu_share")
            busy = "" if gpu or others is None else f"; others used {others:.0%} of the CPUs"
            median = m.get("median_flops_per_s")
            median = f", median {_rate(median)}" if median else ""
            when = m.get("measured", "at the start")
            print(
                f"matmul {key[7:]} {m['n']}^3: {_rate(m['flops_per_s'])} "
                f"(best repetition {when}{median}{busy})"
            )
    if gpu:
        precision = mm.get("default_matmul_precision")
        print(f"jax_default_matmul_precision={precision}: float32 dots may run as TF32 on GPUs")
    peer = results.get("timm_train", {})
    if args.peer and "error" not in peer:
        tf32 = peer.get("float32_matmul_precision")
        tf32 = f"; torch float32 matmul precision '{tf32}'" if gpu and tf32 else ""
        print(f"peer: {peer['framework']}; {peer['note']}{tf32}")
    print(
        f"analytic forward: {fwd / 1e9:.2f} GFLOP/image (ViT-SE), {fwd_plain / 1e9:.2f} "
        f"(plain ViT); utilisation = achieved FLOP/s / the {rate_key[7:]} matmul rate"
    )
    header = (
        f"{args.model} at {args.image_size} px, {args.dtype}, train batch {args.batch}, "
        f"inference batch {args.inference_batch}"
    )
    train = results.get("jax_train", {})
    if "impl" in train:
        header += (
            f"\nvit_se model: impl {args.impl} ({train['impl']}), attention_impl "
            f"{train['attention_impl']}, scan {train['scan']}, remat_policy {train['remat_policy']}"
        )
    print_table(results, args, header, show_cpu=not gpu)
    if args.peer:
        print_round_ratios(results, args)
    return {
        "args": {k: v for k, v in vars(args).items() if k not in ("only", "result", "from_json")},
        "machine": machine,
        "load_average": loads,
        "analytic_forward_flops": fwd,
        "utilisation_against": rate_key,
        "results": results,
    }


def parse_batches(text):
    """'64,256' -> [64, 256]; None -> [None] (one run at --batch / --inference_batch)."""
    if not text:
        return [None]
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sys.exit(f"--batches: expected comma-separated integers, got {text!r}")
    if not sizes or min(sizes) < 1:
        sys.exit(f"--batches: expected batch sizes of at least 1, got {text!r}")
    return sizes


def _at_batch(args, batch):
    run_args = argparse.Namespace(**vars(args))
    if batch is not None:
        run_args.batch = run_args.inference_batch = batch
    return run_args


def _replay(args, saved):
    """Re-prints one saved run; returns its summary."""
    run_args = argparse.Namespace(**vars(args))
    for key, value in saved["args"].items():
        if key not in ("json_out", "peer_python"):
            setattr(run_args, key, value)
    return report(run_args, saved["results"], saved["load_average"])


def main(argv=None):
    args = parse_args(argv)
    if args.rounds < 1:
        sys.exit(f"--rounds: expected at least 1, got {args.rounds}")
    if args.only:
        return child_main(args)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        summaries = [_replay(args, run) for run in saved.get("runs", [saved])]
    else:
        summaries = []
        for batch in parse_batches(args.batches):
            run_args = _at_batch(args, batch)
            results, loads = measure_all(run_args)
            summaries.append(report(run_args, results, loads))
    summary = summaries[0] if len(summaries) == 1 else {"runs": summaries}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
