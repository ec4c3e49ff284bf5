"""A trained model back from disk, and images prepared exactly as evaluation prepares them.

evaluate, predict, analyze and export all start here, so a run's exported `params.npz` +
`export.json` (or an official `.npz` plus a label list) is the only thing they need, and the
preprocessing cannot drift from the trainer's: it is the input pipeline's own `eval_transform`.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from vit_se import checkpoint, model_configs, models
from vit_se.datasets import common
from vit_se.input_pipeline import eval_transform

EXPORT_INFO = "export.json"


class Trained:
    """model + params + the facts needed to feed it (image size, crop, face crop, class names)."""

    def __init__(self, model, params, info):
        self.model = model
        # On the device once: host (numpy) parameters would be copied in again on every call
        # (B/16: 330 MB per batch, and a second copy of the model in memory while it runs).
        self.params = jax.device_put(params)
        self.info = info
        self._apply = jax.jit(lambda p, x: model.apply({"params": p}, x))

    @property
    def class_names(self):
        return list(self.info["class_names"])

    @property
    def image_size(self):
        return int(self.info["image_size"])

    def logits(self, images):
        """float32 [N, S, S, 3] in [-1, 1] -> logits [N, C]."""
        return np.asarray(self._apply(self.params, images))

    def probabilities(self, images):
        return np.asarray(jax.nn.softmax(self.logits(images), axis=-1))


def _model_config(info):
    return ml_collections.ConfigDict(info["model"])


def load_trained(workdir, params_file="params.npz"):
    """Loads the export of a finished run (`params.npz` or `best_params.npz`)."""
    info_path = os.path.join(workdir, EXPORT_INFO)
    if not tf.io.gfile.exists(info_path):
        raise FileNotFoundError(
            f"{info_path} does not exist; expected the workdir of a finished vit_se run"
        )
    with tf.io.gfile.GFile(info_path) as f:
        info = json.load(f)
    model = models.build_model(_model_config(info), info["num_classes"])
    params = _load_params(model, os.path.join(workdir, params_file), info["image_size"])
    return Trained(model, params, info)


def load_official(path, variant, class_names, image_size=224, use_se=False, **model_overrides):
    """An official-format (or exported) .npz plus a label list, e.g. a fine-tuned vit_jax file."""
    config = model_configs.get_config(variant, use_se=use_se)
    for k, v in model_overrides.items():
        config[k] = v
    info = {
        "model": config.to_dict(),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "image_size": image_size,
        "face_crop": False,
        "eval_crop": "none",
        "resize_to": 256,
    }
    model = models.build_model(config, len(class_names))
    return Trained(model, _load_params(model, path, image_size), info)


def _load_params(model, path, image_size):
    dummy = np.zeros((1, image_size, image_size, 3), np.float32)
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)["params"]
    params = checkpoint.load_pretrained(path, init)
    fresh = [
        k for k, v in checkpoint.flatten(params).items() if isinstance(v, jax.ShapeDtypeStruct)
    ]
    if fresh:
        raise checkpoint.CheckpointError(
            f"{path}: no trained values for {', '.join(sorted(fresh))}; a model for "
            "inference needs every parameter (is the class count right?)"
        )
    return params


def preprocess_config(info):
    config = ml_collections.ConfigDict()
    config.image_size = int(info["image_size"])
    config.augment = ml_collections.ConfigDict(
        {"crop": info.get("eval_crop", "none"), "resize_to": int(info.get("resize_to", 256))}
    )
    return config


def read_image(path):
    """Any image file -> uint8 HxWx3 (gray repeated to RGB), naming the file when it fails."""
    image = common.decode_image(path)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def preprocess(image, info):
    """uint8 HxWx{1,3} -> float32 SxSx3 in [-1, 1], with the run's face crop and eval crop."""
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if info.get("face_crop"):
        image, _ = common.face_crop(image)
    return eval_transform(tf.constant(image, tf.uint8), preprocess_config(info)).numpy()
