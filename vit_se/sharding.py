"""The device mesh and where each array lives on it.

One mesh axis, 'data', spans every device of every process. Batches are split along it. Parameters
and optimizer state are either replicated (plain data parallelism) or, with `fsdp`, split along it
on their largest divisible dimension when their path matches a regex, as big_vision's fsdp rule
does. The same rule applies to optimizer moments because their paths end with the parameter's.

A scanned model (`config.model.scan`) stacks its blocks under 'Transformer/encoderblock/' with a
leading depth axis. That axis is never split: the scan takes one layer per step, and a layer that
lives on one device would be all-gathered whole. Each stacked array is split as one of its layers
would be, so a scanned and an unrolled model shard alike.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def make_mesh(devices=None):
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA,))


def batch_sharding(mesh):
    return NamedSharding(mesh, P(DATA))


def replicated(mesh):
    return NamedSharding(mesh, P())


def _path(keypath):
    parts = []
    for k in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def fsdp_spec(shape, num_shards, min_size):
    """Shards the largest dimension divisible by `num_shards`, or replicates."""
    if not shape or int(np.prod(shape)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % num_shards == 0:
            spec = [None] * len(shape)
            spec[dim] = DATA
            return P(*spec)
    return P()


def _stacked(path):
    return "Transformer/encoderblock/" in path


def state_shardings(mesh, abstract_state, mode="replicate", pattern=".*", min_size=2**14):
    """A NamedSharding for every leaf of a (possibly abstract) train-state pytree; `mode` is
    'replicate' or 'fsdp' (vit_se.choices.PARAM_SHARDINGS)."""
    regex = re.compile(pattern)
    num_shards = mesh.shape[DATA]

    def rule(keypath, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        path = _path(keypath)
        if mode == "fsdp" and regex.search(path):
            if _stacked(path) and shape:
                return NamedSharding(mesh, P(None, *fsdp_spec(shape[1:], num_shards, min_size)))
            return NamedSharding(mesh, fsdp_spec(shape, num_shards, min_size))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(rule, abstract_state)
