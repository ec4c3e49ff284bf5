"""The orbax checkpoints of the training state: which are kept, and a restore that survives a
broken one.

Kept: the last `keep_checkpoints` and the best by `selection_metric` on val_split (orbax stores
each checkpoint's metrics beside it and ranks them for `best_step`).

A checkpoint can be broken on disk (a truncated or missing data file after a full disk, a killed
copy, a bucket hiccup). Restoring then raises deep inside TensorStore; instead of dying there,
`restore_latest` warns naming the step, moves its folder to WORKDIR/checkpoints_unreadable/
(renamed, never deleted: it may be evidence, or repairable) and tries the one before. Only when
none restores does the run stop, with one line naming the workdir and the steps tried. With
several processes all must succeed: the verdict is agreed before anything is moved, and only
process 0 moves folders.
"""

from __future__ import annotations

import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vit_se import choices, workdir
from vit_se.errors import Error


class NoCheckpointRestores(Error):
    """Every checkpoint of the workdir failed to restore."""


def manager(run_dir, keep, selection_metric):
    """Keeps the newest `keep` checkpoints and the best by `selection_metric` (higher is better,
    but for `choices.LOWER_IS_BETTER`: a reconstruction loss); creates WORKDIR/checkpoints."""
    sign = -1.0 if selection_metric in choices.LOWER_IS_BETTER else 1.0

    def score(m):
        return sign * m[selection_metric]

    policy = preservation_policy.AnyPreservationPolicy(
        [
            preservation_policy.LatestN(n=keep),
            preservation_policy.BestN(
                get_metric_fn=score,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    # best_fn makes orbax store the metrics with each checkpoint (and rank them for best_step).
    # cleanup_tmp_directories: a save interrupted by a kill leaves a *.orbax-checkpoint-tmp folder.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=score,
        best_mode="max",
        create=True,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(os.path.join(run_dir, workdir.CHECKPOINTS), options=options)


def _all_agree(ok):
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(min(multihost_utils.process_allgather(int(ok))))


def _move_aside(run_dir, step):
    source = epath.Path(run_dir) / workdir.CHECKPOINTS / str(step)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = epath.Path(run_dir) / workdir.UNREADABLE_CHECKPOINTS / f"{step}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if "://" in os.fspath(run_dir):
        # Object stores have no folder rename: copy every object, then remove the originals.
        for folder, _, files in source.walk():
            dest = target / folder.relative_to(source)
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                (folder / f).copy(dest / f)
        source.rmtree()
    else:
        source.rename(target)
    return os.fspath(target)


def restore_latest(mngr, target, run_dir):
    """(step, state) of the newest checkpoint that restores, or (None, None) when there is none."""
    tried = []
    for step in sorted(mngr.all_steps(), reverse=True):
        error = None
        try:
            state = mngr.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # noqa: BLE001 - any failure of a restore means "unreadable"
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if _all_agree(error is None):
            return step, state
        tried.append(step)
        moved = "?"
        if jax.process_index() == 0:
            moved = _move_aside(run_dir, step)
        logging.warning(
            "Checkpoint %d of %s does not restore (%s); moved it to %s, trying the one before",
            step,
            run_dir,
            error or "failed on another process",
            moved,
        )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("vit_se: unreadable checkpoint moved")
        mngr.reload()
    if tried:
        raise NoCheckpointRestores(
            f"{run_dir}: no checkpoint restores (tried steps {', '.join(map(str, tried))}, now in "
            f"{os.path.join(run_dir, workdir.UNREADABLE_CHECKPOINTS)}); rerun to start afresh"
        )
    return None, None
