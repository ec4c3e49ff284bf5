"""Every file of a run directory, by name, and the one way files are written: whole or not at all.

A run directory is read by many commands (evaluate, predict, analyze, export, kfold, experiments),
often on another machine and long after training, so its layout has one owner: this module. It
also owns `ExportInfo`, the record beside the exported parameters that holds exactly what inference
needs (model config, classes, input size, face crop, evaluation resize) so that no reader has to
rebuild a training config to preprocess an image.

    WORKDIR/config.json          the resolved training config and the model's identity
    WORKDIR/export.json          ExportInfo of the two parameter files below
    WORKDIR/params.npz           the final step's parameters (official vit_jax key layout)
    WORKDIR/best_params.npz      the checkpoint selected on the run's val_split
    WORKDIR/encoder.npz          a pretraining run's (task 'mae') backbone, official layout, no head
    WORKDIR/pretraining.json     what a pretraining run reached (steps, held-out loss, sources)
    WORKDIR/reconstructions/     its reconstruction figure at every evaluation (step_<N>.png)
    WORKDIR/checkpoints/         orbax training state (resumes the run)
    WORKDIR/checkpoints_unreadable/  checkpoints that failed to restore, moved aside, never deleted
    WORKDIR/curves.png           loss and accuracy per split over steps (from the TensorBoard logs)
    WORKDIR/lock.json            held by the live run (host, pid) so that no second run starts
    WORKDIR/fake_data/           the demo's synthetic dataset, when the config names no folder
    WORKDIR/eval/<name>/         `vit_se.evaluate` outputs
    WORKDIR/analysis/            `vit_se.analyze` outputs
    WORKDIR/fold{k}/             one run directory per fold of `vit_se.kfold`, with subjects.json
    WORKDIR/kfold.{json,md,csv}  the k-fold aggregate (and kfold_confusion.png)
    WORKDIR/seed{s}/             one run (or cross-validation) per seed of `--seeds`, and
    WORKDIR/seeds.{json,md,csv}  their mean ± sample std

Writes go to a temporary name in the destination folder and are renamed over the destination, so
a crash or a pre-empted VM never leaves half a file where a reader expects a whole one. Every path,
local or with a scheme (`gs://...`), goes through `etils.epath`, the path type tfds and orbax use
too; an object store shows an object only once its upload completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile

from etils import epath

from vit_se import choices
from vit_se.errors import Error

RUN_CONFIG = "config.json"
EXPORT_INFO = "export.json"
PARAMS = "params.npz"
BEST_PARAMS = "best_params.npz"
ENCODER = "encoder.npz"  # task 'mae': the pretrained backbone a fine-tune starts from
PRETRAINING_INFO = "pretraining.json"
RECONSTRUCTIONS = "reconstructions"
CHECKPOINTS = "checkpoints"
UNREADABLE_CHECKPOINTS = "checkpoints_unreadable"  # where a checkpoint that fails to restore goes
LOCK = "lock.json"
CURVES = "curves.png"  # loss and accuracy per split over steps, drawn at the end of every run
FAKE_DATA = "fake_data"  # built-in synthetic data (configs/demo.py) and its tfds build
EVAL_DIR = "eval"
ANALYSIS_DIR = "analysis"
SUBJECTS = "subjects.json"
FOLD_PREFIX = "fold"
SEED_PREFIX = "seed"
SEEDS_REPORT = "seeds"  # .json, .md, .csv: one row per seed and their mean ± std
KFOLD_REPORT = "kfold"  # .json, .md, .csv
KFOLD_CONFUSION = "kfold_confusion.png"
ABLATION_REPORT = "ablation"
CROSS_DATASET_REPORT = "cross_dataset"


class WorkdirError(Error, ValueError):
    """A run directory file that is not what its name promises."""


PARAMS_HELP = (
    f"Parameter file in --workdir. Default: {BEST_PARAMS} (the checkpoint selected on the run's "
    f"val_split) when the run has one, else {PARAMS} (the final step)."
)


# ----------------------------------------------------------------------------------------------
# Names.


def fold_dir(workdir, k):
    return os.path.join(workdir, f"{FOLD_PREFIX}{int(k)}")


def seed_dir(workdir, seed):
    return os.path.join(workdir, f"{SEED_PREFIX}{int(seed)}")


def folds_present(workdir):
    """The k of every WORKDIR/fold{k} folder, sorted."""
    if not isdir(workdir):
        return []
    names = (n.rstrip("/") for n in listdir(workdir))
    return sorted(
        int(n[len(FOLD_PREFIX) :])
        for n in names
        if n.startswith(FOLD_PREFIX) and n[len(FOLD_PREFIX) :].isdigit()
    )


def default_params(workdir):
    """The parameter file every command uses unless told otherwise (see PARAMS_HELP)."""
    return BEST_PARAMS if exists(os.path.join(workdir, BEST_PARAMS)) else PARAMS


def run_weights(workdir):
    """The file a fine-tune's `init_from` starts from: a pretraining run's encoder.npz, else the
    run's params.npz (the final step)."""
    encoder = os.path.join(workdir, ENCODER)
    return encoder if exists(encoder) else os.path.join(workdir, PARAMS)


def checkpoint_steps(workdir):
    """The steps of WORKDIR/checkpoints/<step> folders, sorted; nothing is created."""
    folder = os.path.join(workdir, CHECKPOINTS)
    if not isdir(folder):
        return []
    return sorted(int(n) for n in listdir(folder) if n.isdigit())


def is_best(params_file):
    return os.path.basename(params_file) == BEST_PARAMS


# ----------------------------------------------------------------------------------------------
# Files, local or in an object store.


def _remote(path):
    return "://" in os.fspath(path)


def exists(path):
    return epath.Path(path).exists()


def isdir(path):
    return epath.Path(path).is_dir()


def listdir(path):
    return [p.name for p in epath.Path(path).iterdir()]


def makedirs(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def open_binary(path):
    """A readable, seekable binary file object."""
    return epath.Path(path).open("rb")


def check_writable(path, where=None, folder=True, error=None):
    """Raises `error` (WorkdirError by default; one line starting with `where`, the path unless
    given) unless `path` can be written: with `folder`, a folder to write into, else a file; either
    may not exist yet, and then the nearest folder that does must take a new file.

    Checked before a command starts its work, so that a read-only mount or a typo in a parent
    folder costs a second, not a finished training or prediction. The test is a real write (an
    anonymous temporary file), so permissions, a read-only filesystem and root are judged as the
    write will be; nothing is left behind. Object stores (gs://) say so only on the first write.
    """
    error = error or WorkdirError
    where = where or os.fspath(path)
    if _remote(path):
        return
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target) and not folder:
        raise error(f"{where}: is a folder; expected a file name")
    existing = target if folder else os.path.dirname(target)
    while not os.path.isdir(existing):
        if os.path.exists(existing):
            raise error(f"{where}: {existing} is a file, not a folder")
        existing = os.path.dirname(existing)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise error(f"{where}: cannot write in {existing} ({e.strerror or e})") from None


def remove_if_empty(path):
    """Removes the folder `path` if nothing is in it (a run that failed before its first step
    leaves no empty workdir it created)."""
    if not _remote(path) and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)


def read_bytes(path):
    with open_binary(path) as f:
        return f.read()


def read_json(path):
    """The parsed file; a missing or malformed file is one line naming it."""
    if not exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(read_bytes(path))
    except ValueError as e:
        raise WorkdirError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def atomic_open(path):
    """A binary file to write `path` through: it appears there whole when the block ends, and
    never when the block raises (temporary name in the same folder, then rename)."""
    path = os.fspath(path)
    if _remote(path):
        target = epath.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            with tmp.open("wb") as f:
                yield f
            tmp.replace(target)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
        return
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; run outputs are for sharing
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes(path, data):
    with atomic_open(path) as f:
        f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# The run's config.


def write_run_config(workdir, config, identity):
    """config.json: the resolved config (a dict) and the model identity a resume must match."""
    write_json(os.path.join(workdir, RUN_CONFIG), {"config": config, "model_identity": identity})


def read_run_config(workdir):
    """The saved {'config', 'model_identity'}; {} when there is none (e.g. an official npz)."""
    path = os.path.join(workdir, RUN_CONFIG)
    return read_json(path) if exists(path) else {}


# ----------------------------------------------------------------------------------------------
# What inference needs.


@dataclasses.dataclass
class ExportInfo:
    """export.json: how to build the model, and how to turn a photo into its input.

    Preprocessing at inference is: decode to RGB; crop the face as `face_crop` says ('none',
    'haar' or 'aligned': `vit_se.datasets.common.crop_face`, the crop the input pipeline applied
    in training); resize (antialiased bilinear) to `eval_resize` x `eval_resize`; take the centre
    `image_size` square (none when the two are equal); scale to [-1, 1]. Files written when
    `face_crop` was a boolean read as 'haar' (true) and 'none' (false).
    """

    model: dict  # a model config (vit_se.model_configs fields)
    class_names: list
    image_size: int
    eval_resize: int
    face_crop: str = "none"  # a face-crop mode: vit_se.choices.FACE_CROPS
    dataset: str | None = None  # what the model was trained on, when vit_se trained it
    dataset_config: str | None = None
    step: int | None = None  # the step of params.npz
    best_step: int | None = None  # the step of best_params.npz
    metrics: dict = dataclasses.field(default_factory=dict)  # final evaluation, by split name
    best_metrics: dict = dataclasses.field(default_factory=dict)  # best_params.npz's, by split

    def __post_init__(self):
        self.face_crop = choices.face_crop_mode(self.face_crop, "face_crop")

    @property
    def num_classes(self):
        return len(self.class_names)

    def step_of(self, params_file):
        return self.best_step if is_best(params_file) else self.step

    def to_json(self):
        return dataclasses.asdict(self) | {"num_classes": self.num_classes}

    @classmethod
    def from_json(cls, d, where=EXPORT_INFO):
        """Also reads export.json files written before `eval_resize` existed."""
        d = dict(d)
        if "eval_resize" not in d and "image_size" in d:
            size = int(d["image_size"])
            five_crop = d.get("eval_crop") == "five_crop"  # the training crop; eval took its centre
            resize = round(int(d.get("resize_to", 256)) * size / 224)
            d["eval_resize"] = resize if five_crop else size

        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f)]
        if missing:
            raise WorkdirError(f"{where}: missing {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            info = cls(**{k: v for k, v in d.items() if k in known})
        except ValueError as e:
            raise WorkdirError(f"{where}: {e}") from None
        if int(d.get("num_classes", info.num_classes)) != info.num_classes:
            raise WorkdirError(
                f"{where}: num_classes {d['num_classes']} but {info.num_classes} class names"
            )
        info.image_size, info.eval_resize = int(info.image_size), int(info.eval_resize)
        if info.eval_resize < info.image_size:
            raise WorkdirError(
                f"{where}: eval_resize {info.eval_resize} is smaller than image_size "
                f"{info.image_size}"
            )
        return info


def _required(field):
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def write_export_info(workdir, info: ExportInfo):
    write_json(os.path.join(workdir, EXPORT_INFO), info.to_json())


def read_export_info(workdir) -> ExportInfo:
    path = os.path.join(workdir, EXPORT_INFO)
    if not exists(path):
        raise FileNotFoundError(
            f"{path} does not exist; expected the workdir of a finished vit_se run"
        )
    return ExportInfo.from_json(read_json(path), where=path)
