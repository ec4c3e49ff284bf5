"""A vit_se `model.safetensors` as a PyTorch module: timm's ViT plus vit_se's SE and head.

It imports no vit_se module, and torch, timm and safetensors only when called, so it can be copied
into a PyTorch project as it is, and vit_se can import it without torch. The README shows its code
from the first import down (tests/test_export.py checks that the two agree); the export runs it on
every safetensors file it writes when torch and timm import (`vit_se.export_safetensors`).
"""

import functools
import json


def load_vit_se(path):
    """(model, class_names) from a vit_se model.safetensors."""
    import timm
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    state = load_file(path)
    extra = {k: state.pop(k) for k in list(state) if k.startswith(("se.", "pre_logits.", "head."))}
    kwargs = dict(json.loads(meta["timm_kwargs"]), num_classes=0)  # ViTSE holds the head
    gelu_tanh = functools.partial(torch.nn.GELU, approximate="tanh")  # flax's GELU, not erf
    vit = timm.models.vision_transformer.VisionTransformer(**kwargs, act_layer=gelu_tanh)
    vit.load_state_dict(state)
    return vit_se_class()(vit, extra).eval(), json.loads(meta["class_names"])


@functools.cache
def vit_se_class():
    """The module class, made on first use: its base class is torch's."""
    import torch

    class ViTSE(torch.nn.Module):
        """timm's ViT, then vit_se's pre_logits (tanh) and SE on the pooled token, then the head."""

        def __init__(self, vit, extra):
            super().__init__()
            self.vit = vit

            def linear(name):
                if name + ".weight" not in extra:
                    return None
                w, b = extra[name + ".weight"], extra[name + ".bias"]
                layer = torch.nn.Linear(w.shape[1], w.shape[0])
                layer.load_state_dict({"weight": w, "bias": b})
                return layer

            self.pre_logits = linear("pre_logits.fc")
            self.se_reduce, self.se_expand = linear("se.reduce"), linear("se.expand")
            self.head = linear("head")

        def forward(self, images):  # float32 [N, 3, S, S], RGB in [-1, 1]
            x = self.vit.forward_head(self.vit.forward_features(images), pre_logits=True)
            if self.pre_logits is not None:
                x = torch.tanh(self.pre_logits(x))
            if self.se_reduce is not None:
                x = x * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x))))
            return self.head(x)

    return ViTSE
