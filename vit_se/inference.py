"""A trained model back from disk, and images prepared exactly as evaluation prepares them.

evaluate, predict, analyze and export all start here, so a run's exported parameters +
`export.json` (or an official `.npz` plus a label list) is the only thing they need, and the
preprocessing cannot drift from the trainer's: it is the input pipeline's own `eval_transform`,
driven by the `ExportInfo` the trainer wrote.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from vit_se import checkpoint, model_configs, models, workdir
from vit_se.datasets import common, faces
from vit_se.input_pipeline import eval_transform


class Trained:
    """model + params + the `ExportInfo` that says how to feed it; `source` says where from."""

    def __init__(self, model, params, info: workdir.ExportInfo, source=None):
        self.model = model
        # On the device once: host (numpy) parameters would be copied in again on every call,
        # the whole model per batch, with a second copy of it in memory while it runs
        # (benchmarks/README.md, "What the CPU figures come from").
        self.params = jax.device_put(params)
        self.info = info
        self.source = source or {}
        self._apply = jax.jit(lambda p, x: model.apply({"params": p}, x))

    @property
    def class_names(self):
        return list(self.info.class_names)

    @property
    def image_size(self):
        return int(self.info.image_size)

    def logits(self, images):
        """float32 [N, S, S, 3] in [-1, 1] -> logits [N, C]."""
        return np.asarray(self._apply(self.params, images))

    def probabilities(self, images):
        return np.asarray(jax.nn.softmax(self.logits(images), axis=-1))


def load_trained(run_dir, params_file=None):
    """Loads a finished run's export; `params_file` defaults to `workdir.default_params`."""
    info = workdir.read_export_info(run_dir)
    params_file = params_file or workdir.default_params(run_dir)
    model = models.build_model(ml_collections.ConfigDict(info.model), info.num_classes)
    params = _load_params(model, os.path.join(run_dir, params_file), info.image_size)
    source = {"workdir": run_dir, "params": params_file, "step": info.step_of(params_file)}
    return Trained(model, params, info, source)


def load_official(
    path, variant, class_names, image_size=224, use_se=False, face_crop="none", **model_overrides
):
    """An official-format (or exported) .npz plus a label list, e.g. a fine-tuned vit_jax file.

    Evaluated as vit_jax evaluates: the whole image resized to `image_size`, after the face crop
    `face_crop` names ('none', 'haar', 'aligned'; True/False as 'haar'/'none').
    """
    config = model_configs.get_config(variant, use_se=use_se)
    for k, v in model_overrides.items():
        config[k] = v
    info = workdir.ExportInfo(
        model=config.to_dict(),
        class_names=list(class_names),
        image_size=int(image_size),
        eval_resize=int(image_size),
        face_crop=faces.face_crop_mode(face_crop, "--face_crop"),
    )
    model = models.build_model(config, len(class_names))
    params = _load_params(model, path, image_size)
    return Trained(model, params, info, {"npz": path, "variant": variant})


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


def preprocess(image, info: workdir.ExportInfo):
    """uint8 HxWx{1,3} RGB -> float32 SxSx3 in [-1, 1], with the run's face crop and eval resize.

    The face crop is `common.crop_face` in the run's mode, the same function the input pipeline
    applied before caching (colour order and resize methods: `vit_se.datasets.faces`).
    """
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if info.face_crop != "none":
        image, _ = common.crop_face(image, info.face_crop)
    return to_input(image, info)


def to_input(image, info: workdir.ExportInfo):
    """An already cropped uint8 HxWx{1,3} image -> the model's input (eval resize, [-1, 1])."""
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = tf.constant(np.ascontiguousarray(image), tf.uint8)
    return eval_transform(image, info.image_size, info.eval_resize).numpy()


def detector_mode(info: workdir.ExportInfo, requested=None):
    """The face-crop mode per-face prediction uses: `requested` ('haar' or 'aligned'), else the
    run's own crop, else 'aligned' (a run trained on whole images still gets one row per face)."""
    if requested:
        mode = faces.face_crop_mode(requested, "--detector")
        if mode == "none":
            raise ValueError("--detector must be 'haar' or 'aligned', got 'none'")
        return mode
    return info.face_crop if info.face_crop != "none" else "aligned"


def preprocess_face(image, face, info: workdir.ExportInfo, mode):
    """One detected face (`faces.Face`) of an RGB image -> the model's input.

    The crop is the one training used for a face of this mode (`faces.crop`: aligned at
    `faces.ALIGNED_SIZE` by its landmarks, or the Haar box square), then `to_input`.
    """
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return to_input(faces.crop(image, face, mode), info)
