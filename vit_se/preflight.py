"""Compile the trainer for a Cloud TPU slice on a machine that has none, before renting it.

  python -m vit_se.main --config=configs/raf_db.py --compile_for=v5e-8

JAX compiles for a TPU topology without a TPU: libtpu (the `tpu` extra) describes the slice's
devices (`vit_se.tpu_slices`), and the trainer's own programs, built by the trainer's own
functions from the config and laid out on a mesh of those devices, are lowered with abstract
inputs and compiled by the real TPU compiler. Nothing is executed, no data is read, no workdir is
created and no file is written. Per chip and per program (train step, eval step, initialiser)
the compiler tells the bytes of the state and the temporaries, the FLOPs, and the collectives the
partitioner put in; a program that does not fit in the chip's HBM is refused here, in one line
that says by how much and what would help, instead of on a slice that bills by the hour.

The learning-rate schedule is built from `config.num_train_steps` when it is set and from one step
per epoch otherwise: the preflight reads no data, so it does not know the split's size, and the
schedule's boundaries are constants of the program that change neither its memory nor its
collectives.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import time

from vit_se import config_checks, eval_step, mae_step, sharding, train_setup, train_step
from vit_se.errors import Error
from vit_se.tpu_slices import GiB

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
ALWAYS_SHOWN = COLLECTIVES[:3]


class PreflightError(Error):
    """The config does not compile or does not fit on the slice (one line: what and what helps)."""


def target_devices(slice_):
    """The slice's devices as libtpu describes them (compile-only: they run nothing)."""
    if importlib.util.find_spec("libtpu") is None:
        raise PreflightError(
            "libtpu is not installed: compiling for a TPU needs it; pip install -e '.[tpu]' "
            "(the tpu extra, jax[tpu])"
        )
    from jax.experimental import topologies

    return topologies.get_topology_desc(
        platform="tpu",
        topology_name=slice_.topology,
        chip_config_name=slice_.chip_config,
        chips_per_host_bounds=slice_.chips_per_host_bounds,
        num_slices=slice_.num_slices,
        wrap=slice_.wrap,
    ).devices


def check_batch(config, slice_):
    """`config_checks.check_devices` against the slice's chips instead of the local devices."""
    where = f"the {slice_.devices} chips of {slice_.name}"
    config_checks.check_devices(config, slice_.devices, where, error=PreflightError)


# ----------------------------------------------------------------------------------------------
# The programs.


@dataclasses.dataclass
class Program:
    name: str
    seconds: float  # compile time
    memory: dict | None = None  # per chip: argument, output, alias, temp, code (bytes)
    flops: float | None = None  # per chip, from the compiler
    analytic_flops: float | None = None  # per chip, from the model's shape
    collectives: dict | None = None  # op -> (count per step, bytes per step)
    refused: str | None = None  # the compiler's out-of-memory message
    matmul_loops: tuple = (0, 0)  # loops with a matmul that run > once: (count, most runs)

    @property
    def total(self):
        if self.memory is None:
            return None
        m = self.memory
        return m["argument"] + m["output"] - m["alias"] + m["temp"] + m["code"]


def _abstract(tree, shardings):
    import jax

    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def programs(config, devices):
    """{name: (jitted function, abstract arguments, analytic FLOPs per chip)}: the trainer's own
    pieces (model, optimizer, mesh, state and batch shardings, train step, eval step and the
    parameter initialiser), built as `vit_se.train` builds them."""
    import jax
    import jax.numpy as jnp

    mesh = sharding.make_mesh(devices)
    platform = train_step.platform_of(mesh)
    total_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs
    setup = train_setup.build(config, mesh, 1, max(int(total_steps), 1))
    model, abstract, state_sh = setup.model, setup.abstract, setup.state_sh
    batch_sh = sharding.batch_sharding(mesh)
    size, n = config.image_size, len(devices)

    mae = train_setup.is_mae(config)

    def batch(rows, **extra):
        out = {
            "image": jax.ShapeDtypeStruct((rows, size, size, 3), jnp.float32, sharding=batch_sh),
        }
        if not mae:
            out["label"] = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=batch_sh)
        out.update(
            {k: jax.ShapeDtypeStruct((rows,), v, sharding=batch_sh) for k, v in extra.items()}
        )
        return out

    # As vit_se.train's evaluator rounds it: the eval batch up to a multiple of the devices.
    eval_rows = math.ceil(config.eval_batch_size / n) * n
    one = jax.sharding.SingleDeviceSharding(devices[0])  # the trainer initialises on one device
    init_args = (
        jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=one),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32, sharding=one),
    )
    # A masked autoencoder's encoder sees a quarter of the tokens and its decoder the rest: the
    # classifier's analytic count does not apply, and the compiler's figure stands alone.
    forward = None if mae else forward_flops(config)
    state = sum(
        math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
        for a, s in zip(
            jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(state_sh), strict=True
        )
    )
    return (
        model,
        state,
        {
            "train step": (
                setup.train_step,
                (_abstract(abstract, state_sh), batch(config.batch_size)),
                forward and 3 * forward * config.batch_size / n,
            ),
            "eval step": _eval_program(config, setup, mesh, batch(eval_rows, mask=jnp.float32))
            + (forward and forward * eval_rows / n,),
            "initialiser": (train_step.jit_model_init(model, platform), init_args, None),
        },
    )


def _eval_program(config, setup, mesh, batch):
    """(jitted eval step, abstract arguments) of the task: exact counting for a classifier, the
    held-out reconstruction loss (with its mask rng) for a masked autoencoder."""
    import jax

    params = _abstract(setup.abstract.params, setup.state_sh.params)
    if train_setup.is_mae(config):
        step = mae_step.jit_eval_step(
            setup.model, setup.state_sh.params, mesh, norm_pix_loss=config.mae.norm_pix_loss
        )
        rng = jax.ShapeDtypeStruct((2,), "uint32", sharding=sharding.replicated(mesh))
        return step, (params, batch, rng)
    step = eval_step.jit_eval_step(setup.model, config.num_classes, setup.state_sh.params, mesh)
    return step, (params, batch)


_OOM = re.compile(r"RESOURCE_EXHAUSTED: (.*)", re.S)


def compile_program(name, fn, args, analytic):
    """Lower with abstract arguments and compile; an out-of-memory refusal is a result."""
    import jax

    start = time.time()
    try:
        compiled = fn.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
        oom = _OOM.search(str(e))
        if oom is None:
            raise PreflightError(
                f"the TPU compiler refused the {name}: {str(e).strip().splitlines()[0]}"
            ) from None
        return Program(name, time.time() - start, refused=oom.group(1).strip().splitlines()[0])
    seconds = time.time() - start
    stats = compiled.memory_analysis()
    memory = {
        "argument": stats.argument_size_in_bytes,
        "output": stats.output_size_in_bytes,
        "alias": stats.alias_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
        "code": stats.generated_code_size_in_bytes,
    }
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    text = compiled.as_text()
    return Program(
        name,
        seconds,
        memory=memory,
        flops=float(cost.get("flops", 0.0)) if cost else None,
        analytic_flops=analytic,
        collectives=collectives(text),
        matmul_loops=matmul_loops(text),
    )


# ----------------------------------------------------------------------------------------------
# What the compiled program says.

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "f16": 16, "f32": 32, "f64": 64, "s32": 32, "u32": 32}


def _bytes(type_text):
    total = 0
    for dtype, dims in _SHAPE.findall(type_text):
        bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype) or 32)
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * bits // 8
    return total


_CONSTANT = re.compile(r"^\s*%?([\w.\-]+) = [su]\d+\[\]\S* constant\((\d+)\)")
_COMPARE = re.compile(r"compare\(%?([\w.\-]+), %?([\w.\-]+)\), direction=(LT|GT)\b")


def _trip_count(while_line, bodies):
    """How often a `while` runs: its `known_trip_count`, else N from a condition `i < N` (or
    `N > i`); 1 when neither says, so an unreadable loop is counted once rather than guessed."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', while_line)
    if known:
        return int(known.group(1))
    condition = re.search(r"\bcondition=%?([\w.\-]+)", while_line)
    lines = bodies.get(condition.group(1), []) if condition else []
    constants = dict(m.groups() for m in map(_CONSTANT.match, lines) if m)
    for line in lines:
        if not line.lstrip().startswith("ROOT"):
            continue
        compare = _COMPARE.search(line)
        if compare:
            left, right, direction = compare.groups()
            bound = constants.get(right if direction == "LT" else left)
            if bound is not None:
                return int(bound)
    return 1


def _runs(hlo_text):
    """(computation -> its instruction lines, computation -> [(callee, times per call)],
    computation -> times it runs per step) of a compiled HLO module.

    Loops count as often as they run: a scanned model's blocks, accumulation micro-batches, the
    TPU compiler's windowed matmuls. XLA:CPU and GPU write the count on the loop
    (`known_trip_count`); the TPU compiler does not, and its loop condition (`i < N`, with `i`
    from 0 as every JAX scan and fori_loop lowers) says it instead.
    """
    bodies, entry = {}, None
    current = None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head and not line.startswith(" "):
            current = head.group(1)
            bodies[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        if current is None or "=" not in line:
            continue
        bodies[current].append(line)
    calls = {}  # computation -> [(callee, times)]
    for comp, lines in bodies.items():
        for line in lines:
            body = re.search(r"\bbody=%?([\w.\-]+)", line)
            if body:
                calls.setdefault(comp, []).append((body.group(1), _trip_count(line, bodies)))
            for callee in re.findall(
                r"\b(?:to_apply|calls|branch_computations)=\{?%?([\w.\-]+)", line
            ):
                calls.setdefault(comp, []).append((callee, 1))
    times = {}

    def visit(comp, factor):
        times[comp] = times.get(comp, 0) + factor
        for callee, n in calls.get(comp, []):
            visit(callee, factor * n)

    if entry is not None:
        visit(entry, 1)
    return bodies, calls, times


def collectives(hlo_text):
    """{op: (count, bytes)} per step of the compiled (partitioned, per-chip) HLO.

    An asynchronous pair counts once, at its `-done` (whose result is the collective's output);
    bytes are the outputs' sizes. Loops count as often as they run (`_runs`).
    """
    bodies, _, times = _runs(hlo_text)
    ops = {}
    for comp, lines in bodies.items():
        for line in lines:
            lhs, _, rhs = line.partition("=")
            for op in COLLECTIVES:
                m = re.match(rf"\s*(\(.*?\)|\S+)\s+{op}(-done)?\(", rhs)
                if m:
                    count, size = ops.get(op, (0, 0))
                    k = times.get(comp, 0)
                    ops[op] = (count + k, size + k * _bytes(m.group(1)))
                    break
    return {op: ops.get(op, (0, 0)) for op in COLLECTIVES}


_MATMUL = re.compile(r"=.*\s(dot|convolution)\(")


def matmul_loops(hlo_text):
    """(loops, most runs): the loops that run more than once per step with a matmul inside (a
    `dot`, or the `convolution` the TPU compiler turns one into). XLA's `cost_analysis()` counts
    a loop's body once, so with such loops its FLOPs fall short: a scanned model's blocks, and
    the windowed matmuls (`windowed_dot_general`) the TPU compiler makes of fsdp's gathers."""
    bodies, calls, times = _runs(hlo_text)

    def has_matmul(comp, seen):
        if comp in seen:
            return False
        seen.add(comp)
        if any(_MATMUL.search(line) for line in bodies.get(comp, [])):
            return True
        return any(has_matmul(callee, seen) for callee, _ in calls.get(comp, []))

    runs = [
        times.get(callee, 0)
        for callees in calls.values()
        for callee, n in callees
        if n > 1 and has_matmul(callee, set())
    ]
    return len(runs), max(runs, default=0)


def forward_flops(config):
    """FLOPs of one image's forward pass (two per multiply-add of every matmul), from the model's
    shape: patch embedding, attention's projections and its two batched matmuls, MLP, SE, head.
    With `last_block_token_only` the last block computes the class token's row only."""
    m, t = config.model, config.model.transformer
    d, mlp, depth = m.hidden_size, t.mlp_dim, t.num_layers
    ph, pw = m.patches.size
    patches = (config.image_size // ph) * (config.image_size // pw)
    tokens = patches + (m.classifier == "token")
    macs = patches * ph * pw * 3 * d

    def block(queries):
        # K and V for every token, Q/out/MLP for the queries, scores and weighted sum.
        return tokens * 2 * d * d + queries * (2 * d * d + 2 * d * mlp) + 2 * queries * tokens * d

    last_short = m.last_block_token_only and m.classifier == "token" and not m.scan
    macs += (depth - 1) * block(tokens) + block(1 if last_short else tokens)
    width = m.representation_size or d
    if m.representation_size:
        macs += d * width
    if m.use_se:
        macs += 2 * width * (width // m.se_reduction)
    macs += width * config.num_classes
    return 2.0 * macs


# ----------------------------------------------------------------------------------------------
# The verdict.


def advice(config, slice_, program, state):
    """What would help a program that does not fit, the larger of state and temp first."""
    if program.name == "eval step":
        return f"a smaller --config.eval_batch_size (now {config.eval_batch_size})"
    for_state, for_temp = [], []
    if config.param_sharding == "replicate" and slice_.devices > 1:
        for_state.append(
            f"--config.param_sharding=fsdp (state {size(state)} per chip, split over "
            f"{slice_.devices} chips)"
        )
    if config.model.remat_policy == "none":
        for_temp.append("--config.model.remat_policy=save_dots (or full)")
    elif config.model.remat_policy == "save_dots":
        for_temp.append("--config.model.remat_policy=full")
    # Never scan=True: the TPU compiler plans more temp for a scanned stack than for unrolled
    # blocks, with and without remat (benchmarks/README.md, "What fits on a TPU slice"); scan
    # buys compile time, not memory.
    if config.model.scan:
        for_temp.append("--config.model.scan=False")
    micro = config.batch_size // (slice_.devices * config.accum_steps)
    if micro >= 2:
        for_temp.append(f"--config.accum_steps={config.accum_steps * 2}")
    if config.batch_size // slice_.devices >= 2:
        for_temp.append(f"a smaller batch (--config.batch_size={config.batch_size // 2})")
    temp = program.memory["temp"] if program.memory else None
    helps = for_state + for_temp if temp is not None and state > temp else for_temp + for_state
    return ", ".join(helps) or "a slice with more HBM per chip"


# ----------------------------------------------------------------------------------------------
# The report.


def size(b):
    """Bytes for a person: GiB from one GiB up, MiB below."""
    return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / 2**20:.1f} MiB"


def format_program(p, hbm, state=None):
    """One program's table, per chip."""
    lines = [f"{p.name} (compiled in {p.seconds:.0f} s), per chip:"]
    if p.refused:
        lines.append(f"  refused by the TPU compiler: {p.refused}")
        return "\n".join(lines)
    m = p.memory
    rows = []
    if state is not None:
        rows.append(("parameters + optimizer state", size(state)))
        rows.append(("the batch (as laid out in HBM)", size(m["argument"] - state)))
    else:
        rows.append(("arguments", size(m["argument"])))
    rows.append(("temp (activations and scratch)", size(m["temp"])))
    rows.append(("outputs not aliased to arguments", size(m["output"] - m["alias"])))
    rows.append(("program code", size(m["code"])))
    headroom = hbm - p.total
    rows.append(("total", f"{size(p.total)} of {hbm / GiB:g} GiB HBM, headroom {size(headroom)}"))
    if p.flops is not None:
        flops = f"{p.flops:.3g}"
        if p.analytic_flops:
            flops += f" (analytic {p.analytic_flops:.3g}: {p.flops / p.analytic_flops:.2f}x)"
        loops, most = p.matmul_loops
        if loops:
            flops += (
                f"; {loops} loop{'s' if loops > 1 else ''} with matmuls "
                f"run{'' if loops > 1 else 's'} up to {most} times per step and the compiler"
                " counts each body once, so its figure falls short"
            )
        rows.append(("FLOPs", flops))
    for op in COLLECTIVES:
        count, nbytes = p.collectives[op]
        if op in ALWAYS_SHOWN or count:
            rows.append((f"{op} per step", f"{count}" + (f" ({size(nbytes)})" if count else "")))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {a:<{width}}  {b}" for a, b in rows]
    return "\n".join(lines)


def describe_config(config, impl, slice_):
    m = config.model
    per_chip = config.batch_size // slice_.devices
    return (
        f"ViT-{m.name} at {config.image_size} px, impl {impl}, {m.dtype}, scan {m.scan}, "
        f"remat {m.remat_policy}; batch {config.batch_size} ({per_chip} per chip"
        f"{f', {config.accum_steps} micro-batches' if config.accum_steps > 1 else ''}), "
        f"param_sharding {config.param_sharding}"
    )


@dataclasses.dataclass
class Report:
    slice: object
    impl: str
    programs: dict
    state: int  # parameters + optimizer state per chip, bytes (unpadded)
    text: str


def run(config, slice_, program_names=None):
    """Compiles the config's programs for the slice; returns a Report (prints nothing)."""
    check_batch(config, slice_)
    devices = target_devices(slice_)
    model, state, built = programs(config, devices)
    names = program_names or list(built)
    results = {n: compile_program(n, *built[n]) for n in names}
    hbm = slice_.hbm_bytes
    text = [
        f"vit_se preflight for {slice_.describe()}",
        describe_config(config, model.impl, slice_),
    ]
    for p in results.values():
        text += ["", format_program(p, hbm, state if p.name == "train step" else None)]
    return Report(slice_, model.impl, results, state, "\n".join(text))


def verdict(config, report):
    """None when every program fits; else the one line naming the shortfall and what helps."""
    hbm = report.slice.hbm_bytes
    for p in report.programs.values():
        if p.refused or p.total > hbm:
            if p.refused:
                need = p.refused.rstrip(".")
            else:
                short = size(p.total - hbm)
                need = f"{size(p.total)} per chip, {short} more than its {hbm / GiB:g} GiB HBM"
            helps = advice(config, report.slice, p, report.state or 0)
            return f"the {p.name} does not fit on {report.slice.name}: {need}; try {helps}"
    return None
