"""The command layer (vit_se.cli): each command's --help lists its flags, the model-loading ones
included; --face_crop shows its modes and keeps its boolean spellings; errors are one line on
stderr with nothing from TensorFlow, absl or oneDNN before them; destinations are checked by a
real write before any work."""

import os
import re
import subprocess
import sys

import pytest
from absl import flags

from vit_se import cli, native_logs
from vit_se.checkpoint import CheckpointError
from vit_se.datasets.common import BadImagesError, LayoutError
from vit_se.errors import Error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FLAGS = [
    "workdir",
    "params",
    "npz",
    "variant",
    "labels",
    "labels_file",
    "image_size",
    "use_se",
    "se_reduction",
    "face_crop",
]
# Each command's flags, as its --help must list them.
COMMAND_FLAGS = {
    "predict": MODEL_FLAGS + ["out", "batch_size", "every_nth_frame", "faces", "annotate"],
    "analyze": MODEL_FLAGS + ["out", "class_name", "layer", "head_fusion", "batch_size"],
    "export": MODEL_FLAGS + ["out", "format", "tflite", "overwrite"],
    "evaluate": ["workdir", "params", "split", "dataset", "manual_dir", "out", "batch_size"],
}
# What the native libraries read to quiet themselves; a user's own shell has none of them set.
NATIVE = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "TPU_MIN_LOG_LEVEL")


def _command(module, *args):
    """`python -m vit_se.<module>` as a user runs it: none of the variables the test session
    sets to quiet TensorFlow (conftest), so the command has to quiet it itself."""
    env = {k: v for k, v in os.environ.items() if k not in NATIVE}
    env["PYTHONPATH"] = ROOT
    return subprocess.run(
        [sys.executable, "-m", f"vit_se.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _listed_flags(help_text):
    """Names of the flags absl's --help lists (`--name:` or `--[no]name:` at a line's start)."""
    return set(re.findall(r"^  --(?:\[no\])?([a-z_]+):", help_text, re.MULTILINE))


@pytest.mark.parametrize("module", sorted(COMMAND_FLAGS))
@pytest.mark.grid
def test_help_lists_the_flags_the_command_uses(module):
    r = _command(module, "--help")
    listed = _listed_flags(r.stdout)
    missing = sorted(set(COMMAND_FLAGS[module]) - listed)
    assert not missing, f"{module} --help lacks {missing}:\n{r.stdout[-3000:]}"
    if "face_crop" in COMMAND_FLAGS[module]:
        assert "--[no]face_crop" not in r.stdout
        assert re.search(r"^  --face_crop: <none\|haar\|aligned>:", r.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    "command, doc, command_flags",
    [
        (
            "ablation",
            "The SE ablation: ViT vs ViT+SE",
            ["config", "workdir", "intermediate_config", "folds", "seeds", "select", "variants"],
        ),
        (
            "cross_dataset",
            "The cross-database matrix",
            ["workdirs", "datasets", "out", "params", "data_dir", "manual_dirs"],
        ),
    ],
)
@pytest.mark.slow
def test_experiments_command_help_is_the_commands_own(command, doc, command_flags):
    # absl's --help exits with status 1 for every absl command; the text is what is checked.
    r = _command("experiments", command, "--help")
    assert r.stdout.startswith(doc), r.stdout[:500] + r.stderr[-2000:]
    missing = sorted(set(command_flags) - _listed_flags(r.stdout))
    assert not missing, f"experiments {command} --help lacks {missing}:\n{r.stdout[-3000:]}"
    assert "usage: python -m vit_se.experiments" not in r.stdout + r.stderr  # not the dispatcher


@pytest.mark.parametrize(
    "module, args",
    [
        ("predict", ["--workdir=/nonexistent/run", "a.png"]),
        ("export", ["--workdir=/nonexistent/run", "--out=/nonexistent/export"]),
        ("evaluate", ["--workdir=/nonexistent/run"]),
        ("analyze", ["--workdir=/nonexistent/run", "a.png"]),
    ],
)
@pytest.mark.grid
def test_an_error_is_the_only_line_on_stderr(module, args):
    r = _command(module, *args)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"vit_se.{module}: /nonexistent/run/export.json does not exist; expected the workdir "
        "of a finished vit_se run"
    ], r.stderr


def test_verbose_leaves_the_native_libraries_alone(monkeypatch):
    for name in native_logs.DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    native_logs.quiet(["vit_se.main", "--verbose", "--config=c.py"])
    assert not any(name in os.environ for name in native_logs.DEFAULTS)
    native_logs.quiet(["vit_se.main", "--verbose", "--noverbose"])
    assert {n: os.environ[n] for n in native_logs.DEFAULTS} == native_logs.DEFAULTS
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own choice is kept
    native_logs.quiet(["vit_se.main", "--verbose=false"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def _face_crop_flags():
    fv = flags.FlagValues()
    flag = flags.Flag(cli.FaceCropParser(), flags.ArgumentSerializer(), "face_crop", "none", "")
    flags.DEFINE_flag(flag, flag_values=fv)
    return fv


@pytest.mark.parametrize(
    "args, mode",
    [
        ([], "none"),
        (["--face_crop"], "haar"),  # the boolean flag's spellings, as before
        (["--noface_crop"], "none"),
        (["--face_crop=aligned"], "aligned"),
        (["--face_crop=haar"], "haar"),
        (["--face_crop=True"], "haar"),
        (["--face_crop=false"], "none"),
        (["--face_crop", "aligned"], "haar"),  # bare, then a positional argument (as before)
    ],
)
def test_face_crop_parses_modes_and_boolean_spellings(args, mode):
    fv = _face_crop_flags()
    rest = fv(cli.with_bare_spellings(["prog", *args, "--", "--face_crop"], fv))
    assert fv.face_crop == mode
    assert rest[-1] == "--face_crop"  # after "--": an argument, not the flag


def test_face_crop_refuses_other_values_naming_them():
    fv = _face_crop_flags()
    with pytest.raises(flags.IllegalFlagValueError, match="--face_crop must be one of"):
        fv(["prog", "--face_crop=mtcnn"])


def test_every_one_line_error_derives_from_errors_error():
    assert issubclass(BadImagesError, Error) and issubclass(LayoutError, Error)
    assert issubclass(CheckpointError, Error)
    # older `except ValueError` still catches them
    assert issubclass(BadImagesError, ValueError) and issubclass(CheckpointError, ValueError)
    assert cli.user_errors() == (Error, FileNotFoundError)


# ------------------------------------------------------------------------------ destinations


def _read_only_folder(tmp_path):
    """A folder this process cannot write into, or None where chmod does not stop it (root)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return folder
    (folder / "probe").unlink()
    return None


@pytest.fixture
def unwritable(tmp_path, request):
    """(file path, folder path) that cannot be written: under a read-only folder, or under a
    regular file (whose folder cannot be made, for root too)."""
    if request.param == "read_only":
        folder = _read_only_folder(tmp_path)
        if folder is None:
            pytest.skip("chmod 0555 does not stop this user (root) from writing")
        yield folder / "p.csv", folder / "annotated", str(folder)
        folder.chmod(0o755)
    else:
        regular = tmp_path / "a_file"
        regular.write_text("")
        yield regular / "sub" / "p.csv", regular / "annotated", str(regular)


@pytest.mark.parametrize("unwritable", ["read_only", "under_a_file"], indirect=True)
def test_check_writable_fails_in_one_line_naming_the_flag(unwritable):
    out, folder, blocker = unwritable
    for path, is_folder, flag in ((out, False, "--out"), (folder, True, "--annotate")):
        with pytest.raises(cli.CommandError) as e:
            cli.check_writable(str(path), flag, folder=is_folder)
        text = str(e.value)
        assert "\n" not in text and text.startswith(f"{flag}={path}: ") and blocker in text


def test_check_writable_accepts_what_can_be_written_and_leaves_nothing(tmp_path):
    cli.check_writable(str(tmp_path / "new" / "deeper" / "p.csv"), "--out")
    cli.check_writable(str(tmp_path / "annotated"), "--annotate", folder=True)
    cli.check_writable(str(tmp_path), "--annotate", folder=True)
    cli.check_writable("gs://bucket/p.csv", "--out")  # only a write can tell
    assert os.listdir(tmp_path) == []
    with pytest.raises(cli.CommandError, match="is a folder; expected a file name"):
        cli.check_writable(str(tmp_path), "--out")
    (tmp_path / "f").write_text("")
    with pytest.raises(cli.CommandError, match="is a file, not a folder"):
        cli.check_writable(str(tmp_path / "f"), "--annotate", folder=True)
