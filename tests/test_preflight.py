"""The TPU preflight: the trainer's programs compiled for Cloud TPU slices by libtpu, on a CPU.

The compile tests need libtpu (the `tpu` extra); without it they skip, saying so. `.ci/run`
installs the extra and runs this file, so in CI they run. A tiny ViT is compiled for v5e-4 and for
v4-16 (two hosts), replicated and with fsdp.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vit_se import config_checks, preflight, tpu_slices

ROOT = Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU,
    reason="libtpu is not installed (pip install -e '.[tpu]'); .ci/run installs it",
)
if HAS_LIBTPU:
    # Before libtpu loads in this process (it loads at the first topology): see
    # tpu_slices.compile_only_environment. Another xdist worker may hold libtpu's lock.
    tpu_slices.compile_only_environment(tpu_slices.parse("v5e-4"))


def _demo_config():
    spec = importlib.util.spec_from_file_location("demo_config", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_config(chips, mode):
    """Two blocks, wide enough that parameters and optimizer state are nearly all the per-chip
    arguments. The attention kernels are [width, heads, head size] = [1024, 8, 128]: fsdp splits
    the width, and a shard's [8, 128] still fills TPU tiles (with [4, 64] the shards are padded
    to tiles, and under fsdp a v5e-4 chip held 2.9x less instead of 4x)."""
    from vit_se import config_checks

    config = _demo_config()
    config.model.hidden_size = 1024
    config.model.transformer.update(num_layers=2, num_heads=8, mlp_dim=2048)
    config.model.impl = "auto"
    config.image_size = 32
    config.batch_size = chips
    config.eval_batch_size = chips
    config.param_sharding = mode
    config.fsdp_min_size = 1024
    config_checks.check_values(config)
    return config_checks.resolve(config)


SLICES = ("v5e-4", "v4-16")


@pytest.fixture(scope="module")
def reports():
    out = {}
    for name in SLICES:
        slice_ = tpu_slices.parse(name)
        for mode in ("replicate", "fsdp"):
            config = tiny_config(slice_.devices, mode)
            out[name, mode] = (config, preflight.run(config, slice_))
    return out


# ----------------------------------------------------------------------------------------------
# Slice names (no libtpu needed).


def test_slice_names_as_users_type_them():
    assert tpu_slices.parse("v5litepod-8") == tpu_slices.parse("v5e-8")
    assert tpu_slices.parse("V4-32").name == "v4-32"
    v4 = tpu_slices.parse("v4-32")
    assert (v4.chips, v4.hosts, v4.topology, v4.chip_config) == (16, 4, "v4:2x2x4", "megacore")
    v5e = tpu_slices.parse("v5e-8")
    assert (v5e.chips, v5e.hosts, v5e.topology) == (8, 1, "v5e:2x4")
    assert tpu_slices.parse("v5e-32").hosts == 8
    assert tpu_slices.parse("v5p-64").chips == 32
    assert tpu_slices.parse("v6e-8", num_slices=2).devices == 16
    hbm = {g: tpu_slices.parse(f"{g}-8").hbm_bytes >> 30 for g in ("v4", "v5e", "v5p", "v6e")}
    assert hbm == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


@pytest.mark.parametrize("name", ["v5e-12", "v7-8", "tpu", "v4-6"])
def test_an_unknown_slice_lists_the_known_ones(name):
    with pytest.raises(tpu_slices.SliceError) as e:
        tpu_slices.parse(name)
    message = str(e.value)
    assert "\n" not in message and repr(name) in message
    for known in ("v4-8", "v4-32", "v5e-8", "v5e-16", "v5p-8", "v5p-64", "v6e-8"):
        assert known in message


def test_a_batch_that_does_not_divide_names_both_numbers():
    config = _demo_config()
    config.batch_size = 12
    with pytest.raises(preflight.PreflightError, match=r"batch_size 12 .* 8 chips of v5e-8"):
        preflight.check_batch(config, tpu_slices.parse("v5e-8"))
    config.batch_size, config.accum_steps = 16, 4
    with pytest.raises(preflight.PreflightError, match=r"accum_steps 4 .* 8 chips"):
        preflight.check_batch(config, tpu_slices.parse("v5e-8"))


def test_without_libtpu_one_line_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
    )
    with pytest.raises(preflight.PreflightError, match=r"\.\[tpu\]") as e:
        preflight.target_devices(tpu_slices.parse("v5e-8"))
    assert "\n" not in str(e.value)


def test_collectives_count_loops_and_async_pairs_once():
    hlo = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ag = (f32[2]{0}, f32[8]{0}) all-gather-start(f32[2]{0} %x), dimensions={0}
  %agd = f32[8]{0} all-gather-done((f32[2]{0}, f32[8]{0}) %ag)
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %agd)
}

ENTRY %main (a: f32[4,4], b: bf16[16]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %ar = (f32[4,4]{1,0}, bf16[16]{0}) all-reduce(%a, %b), to_apply=%add
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, TRIP
  ROOT %rs = f32[1,4]{1,0} reduce-scatter(%a), dimensions={0}, to_apply=%add
}
"""
    got = preflight.collectives(
        hlo.replace("TRIP", 'backend_config={"known_trip_count":{"n":"12"}}')
    )
    assert got["all-reduce"] == (1, 4 * 4 * 4 + 16 * 2)
    assert got["all-gather"] == (12, 12 * 8 * 4)  # 12 trips, the done op's f32[8]
    assert got["reduce-scatter"] == (1, 4 * 4)
    assert got["all-to-all"] == (0, 0) and got["collective-permute"] == (0, 0)


def test_collectives_read_the_trip_count_from_the_loop_condition():
    """The TPU compiler writes no `known_trip_count`: its loops say `i < N` in their condition."""
    hlo = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %n = s32[]{:T(128)} constant(24)
  %p = (s32[]{:T(128)}, f32[8]{0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT, metadata={op_name="while/cond/lt"}
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ar = f32[8]{0:T(8,128)} all-reduce(%x), to_apply=%add
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %ar)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body
  ROOT %r = f32[8]{0} get-tuple-element(%w), index=1
}
"""
    assert preflight.collectives(hlo)["all-reduce"] == (24, 24 * 8 * 4)
    # A condition it cannot read counts the loop once rather than guessing.
    unread = hlo.replace("direction=LT", "direction=NE")
    assert preflight.collectives(unread)["all-reduce"] == (1, 8 * 4)


def test_loops_with_matmuls_are_found_for_the_flops_line():
    """XLA's FLOPs count a loop's body once: the preflight names the loops with a matmul inside
    (a TPU `convolution` in a fusion the body calls) that run more than once, and no others."""
    hlo = """HloModule m

%cond (p: (s32[], f32[8,8])) -> pred[] {
  %n = s32[]{:T(128)} constant(12)
  %p = (s32[]{:T(128)}, f32[8,8]{1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT
}

%fused (a: f32[8,8], b: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8]{1,0} parameter(0)
  %b = f32[8,8]{1,0} parameter(1)
  ROOT %c = f32[8,8]{1,0:T(8,128)} convolution(%a, %b), dim_labels=bf_io->bf
}

%body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %p = (s32[], f32[8,8]{1,0}) parameter(0)
  %x = f32[8,8]{1,0} get-tuple-element(%p), index=1
  %y = f32[8,8]{1,0} fusion(%x, %x), kind=kOutput, calls=%fused
  ROOT %t = (s32[], f32[8,8]{1,0}) tuple(%i, %y)
}

%plain_body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %p = (s32[], f32[8,8]{1,0}) parameter(0)
  %x = f32[8,8]{1,0} get-tuple-element(%p), index=1
  %y = f32[8,8]{1,0} add(%x, %x), metadata={op_name="jit(f)/dot_general"}
  ROOT %t = (s32[], f32[8,8]{1,0}) tuple(%i, %y)
}

ENTRY %main (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8]{1,0} parameter(0)
  %d = f32[8,8]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %w = (s32[], f32[8,8]{1,0}) while(%init), condition=%cond, body=%body
  %v = (s32[], f32[8,8]{1,0}) while(%w), condition=%cond, body=%plain_body
  ROOT %r = f32[8,8]{1,0} get-tuple-element(%v), index=1
}
"""
    assert preflight.matmul_loops(hlo) == (1, 12)
    # Run once, a loop leaves XLA's count whole.
    assert preflight.matmul_loops(hlo.replace("constant(12)", "constant(1)")) == (0, 0)
    p = preflight.Program(
        "train step",
        1.0,
        memory=dict(argument=preflight.GiB, output=0, alias=0, temp=preflight.GiB, code=0),
        flops=1e12,
        analytic_flops=1.2e12,
        collectives={op: (0, 0) for op in preflight.COLLECTIVES},
        matmul_loops=(1, 12),
    )
    table = preflight.format_program(p, 16 * preflight.GiB, state=preflight.GiB // 2)
    row = next(line for line in table.splitlines() if "FLOPs" in line)
    assert "0.83x); 1 loop with matmuls runs up to 12 times per step" in row


@pytest.mark.parametrize(
    "remat, scan, says, never",
    [
        ("none", False, "remat_policy=save_dots (or full)", "scan="),
        ("save_dots", False, "remat_policy=full", "scan="),
        ("full", False, "accum_steps=2", "remat_policy"),
        ("full", True, "--config.model.scan=False", "scan=True"),
    ],
)
def test_advice_for_temp_follows_the_compiler_table(remat, scan, says, never):
    """Scan is never offered as a memory fix: the TPU compiler plans more temp for a scanned
    stack (the table's remat and scan cells); a scanned config is told to unroll."""
    config = tiny_config(4, "replicate")
    config.model.remat_policy, config.model.scan, config.batch_size = remat, scan, 64
    gib = 2**30
    program = preflight.Program("train step", 1.0, memory={"argument": gib, "temp": 20 * gib})
    text = preflight.advice(config, tpu_slices.parse("v5e-4"), program, state=gib)
    assert says in text and never not in text, text
    assert text.index("accum_steps") < text.index("param_sharding=fsdp"), "temp first"


def test_forward_flops_of_b16_match_the_published_count():
    # ViT-B/16 at 224 px: 17.6 GMACs (timm / the ViT paper's 17.6 "GFLOPs", counted as MACs);
    # the last block for the class token alone saves about 7% of it.
    config = _demo_config()
    from vit_se import model_configs

    config.model = model_configs.get_config("B/16", use_se=False)
    config.image_size, config.num_classes = 224, 1000
    config.model.last_block_token_only = False
    assert preflight.forward_flops(config) / 2 == pytest.approx(17.56e9, rel=0.01)
    config.model.last_block_token_only = True
    saved = 1 - preflight.forward_flops(config) / 2 / 17.56e9
    assert 0.06 < saved < 0.08


def test_no_module_reads_the_default_backend_where_the_target_matters():
    """Every platform decision takes the platform compiled for; these are the reads left, each
    where the program runs on the machine that builds it."""
    # models.py: resolve_impl(backend=None) and resolve_attention_impl(backend=None), for a model
    # run where it is built (inference, export, analyze; the trainer, the preflight and the
    # masked autoencoder pass the mesh's platform); attention_impl='cudnn' off a GPU gives 'xla'
    # either way.
    allowed = {"models.py": 2}
    found = {}
    for path in sorted((ROOT / "vit_se").rglob("*.py")):
        n = len(re.findall(r"default_backend\(", path.read_text()))
        if n:
            found[path.name] = n
    assert found == allowed


# ----------------------------------------------------------------------------------------------
# Compiled for TPU.


@needs_libtpu
@pytest.mark.parametrize("name", tpu_slices.NAMES)
def test_every_slice_name_gives_its_topology(name):
    from vit_se import tpu_slices as ts

    slice_ = ts.parse(name)
    devices = preflight.target_devices(slice_)
    assert len(devices) == slice_.devices
    assert {d.platform for d in devices} == {"tpu"}
    assert len({d.process_index for d in devices}) == slice_.hosts
    kind = {"v4": "TPU v4", "v5p": "TPU v5", "v5e": "TPU v5 lite", "v6e": "TPU v6 lite"}
    assert {d.device_kind for d in devices} == {kind[slice_.generation]}


@needs_libtpu
def test_multislice_devices():
    slice_ = tpu_slices.parse("v5e-16", num_slices=2)
    devices = preflight.target_devices(slice_)
    assert len(devices) == 32 and {d.slice_index for d in devices} == {0, 1}


@needs_libtpu
@pytest.mark.parametrize("name", SLICES)
@pytest.mark.slow
def test_auto_resolves_to_plain_and_every_program_compiles(reports, name):
    for mode in ("replicate", "fsdp"):
        config, report = reports[name, mode]
        assert config.model.impl == "auto" and report.impl == "plain"
        assert set(report.programs) == {"train step", "eval step", "initialiser"}
        for p in report.programs.values():
            assert p.refused is None and p.memory is not None, p.name
        assert preflight.verdict(config, report) is None


@needs_libtpu
@pytest.mark.parametrize("name", SLICES)
@pytest.mark.slow
def test_fsdp_divides_the_arguments_by_about_the_chip_count(reports, name):
    chips = tpu_slices.parse(name).devices
    (_, rep), (_, fsdp) = reports[name, "replicate"], reports[name, "fsdp"]
    a_rep = rep.programs["train step"].memory["argument"]
    a_fsdp = fsdp.programs["train step"].memory["argument"]
    # What fsdp leaves whole (the batch, arrays under fsdp_min_size) keeps the ratio below
    # `chips`; here that is well under 1% of the replicated bytes.
    assert 0.95 * chips <= a_rep / a_fsdp <= chips, (a_rep, a_fsdp)
    assert rep.state / fsdp.state == pytest.approx(chips, rel=0.05)


@needs_libtpu
@pytest.mark.parametrize("name", SLICES)
@pytest.mark.slow
def test_collectives_follow_the_sharding(reports, name):
    rep = reports[name, "replicate"][1].programs["train step"].collectives
    fsdp = reports[name, "fsdp"][1].programs["train step"].collectives
    assert rep["all-reduce"][0] >= 1 and rep["all-gather"][0] == 0
    # Replicated: the gradients' all-reduce carries every parameter once.
    state = reports[name, "replicate"][1].state
    assert rep["all-reduce"][1] >= state / 3 * 0.95  # parameters are a third of params + Adam
    # fsdp gathers parameters where they are used.
    assert fsdp["all-gather"][0] >= 1


@needs_libtpu
@pytest.mark.slow
def test_a_scanned_model_all_reduces_every_block(reports):
    """Scanned, the gradients' all-reduce sits in the backward loop, one block per trip: counted
    once per trip, it carries the same bytes as the unrolled model's."""
    config = tiny_config(4, "replicate")
    config.model.scan = True
    scanned = preflight.run(config, tpu_slices.parse("v5e-4")).programs["train step"]
    plain = reports["v5e-4", "replicate"][1].programs["train step"]
    assert scanned.collectives["all-reduce"][1] == pytest.approx(
        plain.collectives["all-reduce"][1], rel=0.01
    )
    # And its FLOPs line says the compiler counted the scanned blocks once.
    assert scanned.matmul_loops[1] == config.model.transformer.num_layers, scanned.matmul_loops
    assert plain.matmul_loops == (0, 0)


@needs_libtpu
@pytest.mark.slow
def test_no_decision_reads_the_default_backend(monkeypatch):
    """Compiling for TPU on this CPU: no code path may ask JAX's default backend (it would
    answer 'cpu'), and no XLA:CPU option may reach the TPU compiler."""
    import jax

    def default_backend():
        raise AssertionError("jax.default_backend() read while compiling for a TPU")

    options = []
    real_jit = jax.jit

    def jit(*args, **kwargs):
        options.append(kwargs.get("compiler_options"))
        return real_jit(*args, **kwargs)

    monkeypatch.setattr(jax, "default_backend", default_backend)
    monkeypatch.setattr(jax, "jit", jit)
    config = tiny_config(4, "replicate")
    report = preflight.run(config, tpu_slices.parse("v5e-4"))
    assert report.impl == "plain"
    assert options and not any(o for o in options), options


@pytest.mark.slow
@needs_libtpu
def test_a_pretraining_config_compiles_for_a_slice(tmp_path):
    """Task 'mae': the masked autoencoder's train and eval steps and initialiser, compiled for
    TPU with the classifier's shardings (fsdp divides its state as it divides a classifier's)."""
    from vit_se.configs import mae_faces

    reports = {}
    for mode in ("replicate", "fsdp"):
        config = mae_faces.get_config("variant=tiny/8")
        config.image_size, config.batch_size, config.eval_batch_size = 32, 16, 16
        config.param_sharding, config.fsdp_min_size = mode, 256
        config_checks.check_values(config)
        reports[mode] = preflight.run(config_checks.resolve(config), tpu_slices.parse("v5e-4"))
        report = reports[mode]
        assert report.impl == "plain"
        assert set(report.programs) == {"train step", "eval step", "initialiser"}
        for p in report.programs.values():
            assert p.refused is None and p.memory is not None and p.flops, p.name
        assert preflight.verdict(config, report) is None
    assert reports["replicate"].state / reports["fsdp"].state == pytest.approx(4, rel=0.1)


def _main(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "vit_se.main", f"--config={ROOT / 'configs' / 'demo.py'}", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@needs_libtpu
@pytest.mark.slow
def test_a_config_that_fits_exits_0_quietly_and_writes_nothing(tmp_path):
    proc = _main("--compile_for=v5e-4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no libtpu warnings without --verbose
    assert "train step" in proc.stdout and "eval step" in proc.stdout
    assert proc.stdout.rstrip().endswith("fits: every program compiled for v5e-4 within its HBM")
    assert list(tmp_path.iterdir()) == []


@needs_libtpu
@pytest.mark.slow
def test_a_config_that_overflows_hbm_is_refused_in_one_line(tmp_path):
    # tiny/8 at 448 px, 512 images per chip: 3137 tokens each, about 170 MB of temporaries per
    # image (64 per chip took 10.4 GiB), far over v5e's 16 GiB; the compiler refuses it.
    proc = _main(
        "--compile_for=v5e-4", "--config.image_size=448", "--config.batch_size=2048", cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("vit_se.main: the train step does not fit on v5e-4: ")
    for remedy in ("remat_policy", "accum_steps=2", "batch_size=1024", "param_sharding=fsdp"):
        assert remedy in line
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_slice_on_the_command_line_is_one_line():
    proc = _main("--compile_for=v5e-12")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("vit_se.main: unknown TPU slice 'v5e-12'; known: v4-8")


def test_without_compile_for_the_workdir_is_required():
    proc = _main()
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "--workdir is required" in line and "--compile_for" in line
