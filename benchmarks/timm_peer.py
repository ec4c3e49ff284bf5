"""timm's PyTorch ViT-B/16, trained and run the way train_speed.py runs ViT-SE, as its peer.

  python benchmarks/train_speed.py --peer      # the usual way in; this module has no main

The peer is `timm.create_model('vit_base_patch16_224', num_classes=7)`: the same widths as B/16
(ViT-SE adds only the small SE block before the head), trained with AdamW (lr 1e-4, weight decay
0.05, the authors' defaults in configs/common.py) on cross-entropy, in train mode.

timm imports torchvision at import time (FrozenBatchNorm2d for its norm-layer factory, the data
transforms), although ViT-B/16 uses none of it. PyPI's torchvision cannot be loaded beside the
CPU-only torch build (its C++ ops are linked against CUDA torch: `operator torchvision::nms does not
exist`), and a torchvision built for a CPU torch is not on PyPI. When torchvision is missing or
fails to load, `import_timm` therefore puts an inert stand-in under the `torchvision` name before
importing timm. The model's forward and backward are pure torch.nn, so the measured figures do not
depend on it; the stand-in lives only in the benchmark's own process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

TIMM_MODEL = "vit_base_patch16_224"


class _Anything(type):
    """Metaclass of the stand-in's classes: every attribute is another such class.

    Classes rather than instances so that timm can subclass them (transforms), test isinstance
    against them (always False: nothing is ever an instance) and use them as dict keys.
    """

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `torchvision` and every `torchvision.*` submodule as an inert module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0+vit_se_stand_in"
        return module

    def exec_module(self, module):
        pass


def import_timm():
    """Imports timm (and torch); with a torchvision stand-in if the real one is not installed.

    Returns:
      (torch, timm, note) where note says whether the stand-in was used.
    Raises:
      ImportError: torch or timm is not installed.
    """
    import torch  # an ImportError here means: no peer

    if any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        note = "torchvision: inert stand-in (ViT-B/16 does not use it)"
    elif importlib.util.find_spec("torchvision") is None:
        note = "torchvision: not installed, inert stand-in (ViT-B/16 does not use it)"
    else:
        try:
            import torchvision  # noqa: F401
        except Exception as e:  # PyPI's CUDA build beside a CPU torch fails here.
            for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                del sys.modules[name]
            note = f"torchvision: fails to load ({type(e).__name__}), inert stand-in instead"
        else:
            note = "torchvision: installed"
    if "stand-in" in note and not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StandInFinder())
    import timm

    return torch, timm, note


def build(kind, batch, image_size, dtype, num_classes=7):
    """timm's train step ('train') or forward pass ('infer') as a closure for the caller to time.

    Returns:
      (run, sync, info): `run()` does one step, `sync(_)` waits for the device, `info` describes
      the setup.
    """
    torch, timm, note = import_timm()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        # XLA runs float32 dots on GPUs' tensor cores in TF32 at JAX's default precision; torch
        # defaults to full float32 there. Compare like with like.
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    model = timm.create_model(
        TIMM_MODEL, pretrained=False, num_classes=num_classes, img_size=image_size
    ).to(device)
    images = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1
    labels = torch.randint(0, num_classes, (batch,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    if kind == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def run():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def run():
            with torch.inference_mode(), autocast:
                model(images)

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    info = {
        "platform": "gpu" if device == "cuda" else "cpu",
        "framework": f"torch {torch.__version__}, timm {timm.__version__}",
        "note": note,
        "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    return run, sync, info


def peak_device_bytes():
    """The CUDA allocator's peak since `build`, or None on a CPU."""
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
