"""The command layer: what `evaluate`, `predict`, `analyze` and `export` (and the trainer's
commands) share, so they cannot disagree.

- One way to load a model from flags (`define_model_flags` + `load_model`): a finished run's
  workdir, whose default parameter file is the same for every command (`workdir.PARAMS_HELP`), or
  an official-format `.npz` with its variant and class names. The flags this module defines are
  its callers' own (absl's `disclaim_key_flags`), so each command's `--help` lists them.
- Destinations checked before the work starts (`check_writable`).
- One error handler and log filter (`run`): a user's mistake (`vit_se.errors.Error` and the
  file/checkpoint errors) is one line on stderr and the error's exit status (1 unless it says
  otherwise: a pre-empted run exits 75, a diverged one 3), with nothing from TensorFlow's or
  libtpu's start-up before it; orbax's per-save INFO lines are dropped; TensorFlow, which only
  feeds data, is kept off the accelerators JAX owns.
- Config files named on the command line load from any folder (`resolve_config_paths`).

Finding and reading images and videos is `vit_se.media`'s.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

from absl import app, flags, logging

from vit_se import workdir
from vit_se.errors import Error

FLAGS = flags.FLAGS
# Every flag defined below is defined for the command that calls the DEFINE function: a key flag
# of that command, listed by its --help (absl lists only the main module's key flags there).
flags.disclaim_key_flags()


class CommandError(Error, ValueError):
    """Flags that do not fit together, or inputs that cannot be used."""


# ----------------------------------------------------------------------------------------------
# Destinations.


def check_writable(path, flag, folder=False):
    """Fails in one line naming `flag` when `path` (a file, or with `folder` a folder to write
    into) cannot be written, before any work is done (the test is `workdir.check_writable`'s)."""
    workdir.check_writable(path, f"{flag}={path}", folder=folder, error=CommandError)


# ----------------------------------------------------------------------------------------------
# The model.


def define_model_flags(official=True):
    """Flags that name the model: a run's workdir, or (with `official`) an official-format npz."""
    flags.DEFINE_string("workdir", None, "Workdir of a finished vit_se run (export.json + params).")
    flags.DEFINE_string("params", None, workdir.PARAMS_HELP)
    if not official:
        return
    flags.DEFINE_string(
        "npz",
        None,
        "Official-format .npz (vit_jax/big_vision layout or a vit_se export) to use instead of "
        "--workdir; needs --variant and --labels or --labels_file.",
    )
    flags.DEFINE_string("variant", None, "Model variant of --npz, e.g. B/16.")
    flags.DEFINE_list("labels", None, "Class names of --npz in head order, comma-separated.")
    flags.DEFINE_string("labels_file", None, "File with the class names of --npz, one per line.")
    flags.DEFINE_integer("image_size", 224, "Input size of the --npz model.")
    flags.DEFINE_bool("use_se", False, "The --npz model has the SE block (a vit_se fine-tune).")
    flags.DEFINE_integer("se_reduction", 4, "SE reduction of the --npz model.")
    face_crop = FaceCropParser()
    flags.DEFINE_flag(
        flags.Flag(
            face_crop,
            flags.ArgumentSerializer(),
            "face_crop",
            "none",
            f"<{'|'.join(face_crop.enum_values)}>: face crop of the --npz model's inputs "
            "(README, 'Preprocessing'); true and false also work, as haar and none, and so do a "
            "bare --face_crop (haar) and --noface_crop (none). A run's export says itself how "
            "it was trained.",
        )
    )


class FaceCropParser(flags.EnumParser):
    """`--face_crop=MODE`: a mode of `vit_se.datasets.faces`, or a boolean as before.

    Not an absl boolean flag, whose help would read `--[no]face_crop` and hide the modes; the
    boolean spellings that flag had are rewritten by `run` (`BARE_SPELLINGS`).
    """

    def __init__(self):
        from vit_se.datasets import faces

        super().__init__(faces.MODES)

    def parse(self, argument):
        from vit_se.datasets import faces

        return faces.face_crop_mode(argument, "--face_crop")

    def flag_type(self):
        return "face crop mode"


# Flags with values that keep the spellings of the boolean flags they were: --NAME means
# --NAME=ON, --noNAME means --NAME=OFF.
BARE_SPELLINGS = {"face_crop": ("haar", "none")}


def with_bare_spellings(argv, flag_values=FLAGS):
    """argv with every bare `--NAME` / `--noNAME` of BARE_SPELLINGS given its value (up to `--`,
    for defined flags only)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        for name, (on, off) in BARE_SPELLINGS.items():
            if name not in flag_values:
                continue
            if arg in (f"--{name}", f"-{name}"):
                out[i] = f"--{name}={on}"
            elif arg in (f"--no{name}", f"-no{name}"):
                out[i] = f"--{name}={off}"
    return out


def _labels_from_flags():
    if FLAGS.labels and FLAGS.labels_file:
        raise CommandError("give --labels or --labels_file, not both")
    if FLAGS.labels_file:
        with open(FLAGS.labels_file) as f:
            names = [line.strip() for line in f if line.strip()]
    elif FLAGS.labels:
        names = [n.strip() for n in FLAGS.labels]
    else:
        raise CommandError("--npz needs the class names: --labels=a,b,... or --labels_file=FILE")
    if len(set(names)) != len(names):
        raise CommandError(f"class names repeat: {names}")
    return names


def load_model():
    """The `inference.Trained` model the flags of `define_model_flags` name."""
    from vit_se import inference

    if bool(FLAGS.workdir) == bool(FLAGS.npz):
        raise CommandError("give exactly one of --workdir (a finished run) or --npz")
    if FLAGS.workdir:
        return inference.load_trained(FLAGS.workdir, FLAGS.params)
    if not FLAGS.variant:
        raise CommandError("--npz needs --variant (e.g. B/16)")
    return inference.load_official(
        FLAGS.npz,
        FLAGS.variant,
        _labels_from_flags(),
        image_size=FLAGS.image_size,
        use_se=FLAGS.use_se,
        face_crop=FLAGS.face_crop,
        se_reduction=FLAGS.se_reduction,
    )


# ----------------------------------------------------------------------------------------------
# Running a command.


class QuietLogs(py_logging.Filter):
    """Only vit_se's own INFO lines, and everyone's warnings and errors but EXPECTED ones.

    orbax (every save), clu (every scalar), tfds ("fields differ on disk and in the code") and
    JAX log at INFO many lines a minute, in which a person looks for the progress line in vain.
    `--verbose` lets them through.
    """

    OURS = os.sep + "vit_se" + os.sep
    # Warnings that say nothing wrong: orbax's for a periodic checkpoint saved between validation
    # evaluations (it has no metrics to rank by; the best-checkpoint policy expects that).
    EXPECTED = ("Requested `tracked_metric`; did not provide metrics",)

    def filter(self, record):
        if self.OURS in record.pathname:
            return True
        verbose = bool(getattr(FLAGS, "verbose", False)) if FLAGS.is_parsed() else False
        if record.levelno >= py_logging.WARNING:
            return verbose or not any(text in record.getMessage() for text in self.EXPECTED)
        return verbose


def define_verbose_flag():
    flags.DEFINE_bool(
        "verbose", False, "Also show other libraries' INFO logs (orbax, clu, tfds, JAX, TF)."
    )


def user_errors():
    """The exception types reported as one line: every user error is an errors.Error."""
    return (Error, FileNotFoundError)


def hide_accelerators_from_tensorflow():
    """TensorFlow only feeds data: it must not take the GPU memory JAX owns."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def _one_line(error):
    """A flag-parsing error as one line, keeping ml_collections' "did you mean"."""
    text = str(error)
    if isinstance(error, KeyError | AttributeError):
        # ml_collections nests the repr of a KeyError: unwrap its quotes and escapes.
        while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].encode().decode("unicode_escape")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    hint = next((line for line in lines[1:] if "did you mean" in line.lower()), None)
    first = lines[0]
    if "Traceback (most recent call last)" in text:  # a config file that raised: its error
        first = f"{first.removesuffix(':')}: {lines[-1]}"
    if isinstance(error, KeyError | AttributeError) and not first.startswith("config"):
        first = f"the config has no field {first}"
    return first + (f" ({hint})" if hint else "")


def run(main, name, *, hide_accelerators=True):
    """`app.run(main)` with the shared log filter and error handler; `name` prefixes errors.

    A flag that does not parse (an unknown `--config.FIELD`, a bad value) is one line too,
    keeping ml_collections' "did you mean". `hide_accelerators=False` leaves TensorFlow alone, for
    a command that first checks its config without importing it (`vit_se.main`). The native
    libraries' start-up lines are quieted here too, for a command that imports TensorFlow only
    when it runs (and at import, below, for one whose modules import it).
    """

    def parse(argv):
        try:
            return FLAGS(with_bare_spellings(argv))
        except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
            print(f"vit_se.{name}: {_one_line(e)}", file=sys.stderr, flush=True)
            sys.exit(1)

    def wrapped(argv):
        logging.get_absl_handler().addFilter(QuietLogs())
        if hide_accelerators:
            hide_accelerators_from_tensorflow()
        errors = user_errors()
        try:
            return main(argv)
        except errors as e:
            logging.flush()
            print(f"vit_se.{name}: {e}", file=sys.stderr, flush=True)
            sys.exit(getattr(e, "exit_code", 1))

    app.run(wrapped, flags_parser=parse)


def resolve_config_paths(argv, names=("config",), command="main"):
    """argv with `--NAME=PATH[:ARG]` pointing at a file that exists.

    A path that does not exist where the command runs (e.g. `configs/sfew.py` from another
    folder, or with vit_se installed from a wheel) is looked up among the config files installed
    with vit_se (`vit_se.configs`); one that exists nowhere stops the command with one line,
    prefixed `vit_se.COMMAND:` as every other error of the command is (`run`).
    """
    import vit_se.configs

    installed = os.path.dirname(vit_se.configs.__file__)
    out = []
    for item in argv:
        for name in names:
            prefix = f"--{name}="
            if not item.startswith(prefix):
                continue
            path, sep, arg = item[len(prefix) :].partition(":")
            if not os.path.exists(path):
                candidate = os.path.join(installed, os.path.basename(path))
                if not os.path.isfile(candidate):
                    sys.exit(
                        f"vit_se.{command}: --{name}: config file {path} does not exist (nor "
                        f"{candidate} among the installed configs)"
                    )
                item = f"{prefix}{candidate}{sep}{arg}"
        out.append(item)
    return out
