"""Cloud TPU slices by the names users rent them under, as libtpu describes their topology.

`vit_se.preflight` compiles the trainer for a slice that is not there; JAX gets the slice's
devices from libtpu's topology description (`jax.experimental.topologies.get_topology_desc`),
which wants the physical shape, not the product name. Names follow Cloud TPU's accelerator types:
v4-N and v5p-N count TensorCores (two per chip; a VM shows one device per chip, "megacore"),
v5e-N (Cloud's v5litepod-N) and v6e-N count chips. Hosts carry four chips, except that v5e and
v6e slices of up to eight chips are one host.

Imports nothing from JAX: `parse` runs before libtpu is loaded, so a mistyped name costs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re

from vit_se.errors import Error

GiB = 2**30


class SliceError(Error, ValueError):
    """A slice name that is not one of `NAMES`."""


@dataclasses.dataclass(frozen=True)
class Generation:
    prefix: str  # libtpu's topology prefix
    per_core: bool  # the number in the name counts TensorCores (two per chip)
    chip_config: str  # 'megacore': one JAX device per chip, as on a TPU VM
    hbm_bytes: int  # per chip
    sizes: tuple  # the numbers the name may end in


GENERATIONS = {
    "v4": Generation("v4", True, "megacore", 32 * GiB, (8, 16, 32, 64, 128, 256, 512)),
    "v5p": Generation("v5", True, "megacore", 95 * GiB, (8, 16, 32, 64, 128, 256, 512)),
    "v5e": Generation("v5e", False, "default", 16 * GiB, (1, 4, 8, 16, 32, 64, 128, 256)),
    "v6e": Generation("v6e", False, "default", 32 * GiB, (1, 4, 8, 16, 32, 64, 128, 256)),
}
ALIASES = {"v5litepod": "v5e"}

# Chips -> the physical shape Cloud TPU gives a slice of that many chips.
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4)}
_SHAPES_3D.update({128: (4, 4, 8), 256: (4, 8, 8)})
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8)}
_SHAPES_2D.update({128: (8, 16), 256: (16, 16)})


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # canonical: 'v5e-8', 'v4-32'
    generation: str
    chips: int
    shape: tuple
    chips_per_host_bounds: tuple
    wrap: tuple
    num_slices: int = 1

    @property
    def topology(self):
        """libtpu's name, e.g. 'v5e:2x4', 'v4:2x2x4'."""
        return f"{GENERATIONS[self.generation].prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def chip_config(self):
        return GENERATIONS[self.generation].chip_config

    @property
    def hbm_bytes(self):
        return GENERATIONS[self.generation].hbm_bytes

    @property
    def hosts(self):
        per_host = 1
        for b in self.chips_per_host_bounds:
            per_host *= b
        return self.num_slices * (self.chips // per_host)

    @property
    def devices(self):
        """JAX devices of the whole job (every slice)."""
        return self.num_slices * self.chips

    def describe(self):
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        hosts = f"{self.hosts} host{'s' if self.hosts > 1 else ''}"
        hbm = self.hbm_bytes / GiB
        return (
            f"{self.name}{slices} ({self.topology}, {self.devices} chips, {hosts}, "
            f"{hbm:g} GiB HBM per chip)"
        )


def _make(generation, n):
    gen = GENERATIONS[generation]
    chips = n // 2 if gen.per_core else n
    if gen.per_core:
        shape = _SHAPES_3D[chips]
        bounds = (2, 2, 1)
        wrap = (True, True, True) if min(shape) >= 4 else (False, False, False)
    else:
        shape = _SHAPES_2D[chips]
        bounds = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}.get(chips, (2, 2, 1))
        wrap = (shape[0] >= 16, shape[1] >= 16, False)
    return Slice(f"{generation}-{n}", generation, chips, shape, bounds, wrap)


SLICES = {s.name: s for s in (_make(g, n) for g, gen in GENERATIONS.items() for n in gen.sizes)}
NAMES = tuple(SLICES)


def parse(name, num_slices=1):
    """'v5e-8', 'v5litepod-8', 'V4-32' -> a Slice; anything else is one line listing the names."""
    match = re.fullmatch(r"\s*([a-z0-9]+)-(\d+)\s*", str(name).lower())
    generation = match and ALIASES.get(match.group(1), match.group(1))
    key = f"{generation}-{int(match.group(2))}" if match else None
    if key not in SLICES:
        raise SliceError(
            f"unknown TPU slice {name!r}; known: {', '.join(NAMES)} (v5litepod-N is v5e-N)"
        )
    if num_slices < 1:
        raise SliceError(f"--num_slices {num_slices} must be at least 1")
    return dataclasses.replace(SLICES[key], num_slices=num_slices)


def compile_only_environment(slice_, verbose=False):
    """Before libtpu loads: compile-only, quiet, and no question to a metadata server.

    JAX itself stays on the CPU (nothing runs), libtpu is told which accelerator and host it is
    on (there is none; unset, it warns about both on every start and asks GCE's metadata server),
    and a second libtpu process (another preflight, a run on a TPU VM) is no reason to refuse:
    compiling takes no chip. A user's own settings win.
    """
    cloud_name = slice_.name.replace("v5e-", "v5litepod-")
    defaults = {
        "JAX_PLATFORMS": "cpu",
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
        "TPU_SKIP_MDS_QUERY": "1",
        "TPU_ACCELERATOR_TYPE": cloud_name,
        "TPU_WORKER_HOSTNAMES": "localhost",
    }
    if not verbose:
        defaults.update(TPU_MIN_LOG_LEVEL="3", TPU_STDERR_LOG_LEVEL="3", TF_CPP_MIN_LOG_LEVEL="3")
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
