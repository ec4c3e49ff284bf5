"""A trained ViT-SE as a TensorFlow SavedModel and a TFLite flatbuffer (jax2tf).

What the SavedModel holds:
  - signature `serving_default`: input `images` float32 [batch, S, S, 3] in [-1, 1] (batch is
    polymorphic), outputs `probabilities` and `logits`, float32 [batch, num_classes]. The same
    function is `loaded.serve(images)`.
  - the parameters as tf.Variables (`loaded.params`), `loaded.class_names` (string variable) and
    `loaded.image_size`.
  - the `assets` given to `write` (the export command passes `labels.txt` and
    `preprocessing.json`), each also an attribute: `loaded.labels_file.asset_path`.

How: `jax2tf.convert` of `model.apply` + softmax. JAX 0.10 only has native serialization (the
`native_serialization=False` graph mode is gone; the flag is deprecated and ignored), so the graph
is one `XlaCallModule` op carrying StableHLO, lowered for cpu, cuda and tpu so the SavedModel runs
on any of them. Batch polymorphism uses `polymorphic_shapes=[None, '(b, ...)']`.

TFLite: the converter turns the StableHLO into TFLite builtins, except the dynamic-shape gather
that the class-token slice `x[:, 0]` becomes under a symbolic batch ('vhlo.dynamic_gather_v1 op is
not part of the vhlo support yet', TF 2.21). So the `.tflite` file is converted (with
`TFLiteConverter.from_saved_model`) from a second, fixed-batch SavedModel (cpu lowering) written to
a scratch folder; its signature `serving_default` has the same input and output names. No
Select-TF (flex) ops are needed.

Both are read back on the CPU (`outputs`): TensorFlow runs the SavedModel's cpu lowering whatever
devices it sees, and TFLite (LiteRT's interpreter when installed) its XNNPACK kernels.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

from vit_se.errors import Error

PLATFORMS = ("cpu", "cuda", "tpu")
TFLITE_SUFFIX = ".tflite"


class TFExportError(Error, RuntimeError):
    """A SavedModel read back does not hold what was written."""


def serving_fn(trained, float32=False):
    """(params, images) -> {'probabilities', 'logits'}: what every export computes.

    Attention is XLA's: the SavedModel is lowered for every platform at once, and a cuDNN
    attention call (a GPU-only custom call) would not lower for cpu or tpu. `float32` computes in
    float32 whatever the model's dtype.
    """
    import jax

    model = trained.model.clone(attention_impl="xla")
    if float32:
        model = model.clone(dtype="float32")

    def fn(params, images):
        logits = model.apply({"params": params}, images)
        return {"probabilities": jax.nn.softmax(logits, axis=-1), "logits": logits}

    return fn


def build_module(trained, batch=None, platforms=PLATFORMS):
    """A tf.Module whose `serve` is the jax2tf-converted model (batch None: polymorphic)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    size = trained.image_size
    kwargs = dict(with_gradient=False, native_serialization_platforms=tuple(platforms))
    if batch is None:
        kwargs["polymorphic_shapes"] = [None, "(b, ...)"]
    converted = jax2tf.convert(serving_fn(trained), **kwargs)

    module = tf.Module()
    module.params = tf.nest.map_structure(
        lambda a: tf.Variable(np.asarray(a), trainable=False), trained.params
    )
    module.class_names = tf.Variable(trained.class_names, trainable=False, name="class_names")
    module.image_size = tf.Variable(size, trainable=False, name="image_size")
    spec = tf.TensorSpec([batch, size, size, 3], tf.float32, name="images")
    module.serve = tf.function(
        lambda images: converted(module.params, images), autograph=False, input_signature=[spec]
    )
    return module


def save_saved_model(trained, path, batch=None, platforms=PLATFORMS, assets=None):
    """Writes the SavedModel to `path` (not atomic); `assets`: {file name: text} for `assets/`."""
    import tensorflow as tf

    module = build_module(trained, batch, platforms)
    with tempfile.TemporaryDirectory(prefix="vit_se_assets_") as scratch:
        for name, text in (assets or {}).items():
            source = os.path.join(scratch, name)
            with open(source, "w", encoding="utf-8") as f:
                f.write(text)
            # labels.txt -> loaded.labels_file; saving copies the file into path/assets/.
            setattr(module, name.split(".")[0] + "_file", tf.saved_model.Asset(source))
        signature = module.serve.get_concrete_function()
        tf.saved_model.save(module, path, signatures={"serving_default": signature})
    return module


def convert_tflite(trained, batch=1):
    """TFLite flatbuffer bytes of the model at a fixed batch (see the module docstring)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="vit_se_tflite_") as scratch:
        save_saved_model(trained, scratch, batch=batch, platforms=("cpu",))
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


def _is_tflite(path):
    return os.fspath(path).endswith(TFLITE_SUFFIX)


def write(trained, path, *, batch=1, assets=None):
    """A SavedModel folder at `path`, or a TFLite file when it ends in .tflite (fixed `batch`).

    Returns the facts the export report keeps about it.
    """
    if _is_tflite(path):
        with open(path, "wb") as f:
            f.write(convert_tflite(trained, batch=batch))
        return {"batch": batch}
    save_saved_model(trained, path, assets=assets)
    size = trained.image_size
    return {
        "signature": {
            "name": "serving_default",
            "inputs": {"images": f"float32 [batch, {size}, {size}, 3] in [-1, 1]"},
            "outputs": {"probabilities": "float32 [batch, C]", "logits": "float32 [batch, C]"},
        },
        "jax2tf": {
            "native_serialization": True,
            "platforms": list(PLATFORMS),
            "polymorphic_shapes": "[None, '(b, ...)']",
        },
    }


def check(trained, path):
    """The SavedModel's class names are the model's (a TFLite file holds none); {} of facts."""
    if not _is_tflite(path):
        import tensorflow as tf

        names = [n.decode() for n in tf.saved_model.load(path).class_names.numpy()]
        if names != trained.class_names:
            raise TFExportError(f"SavedModel class names {names} != {trained.class_names}")
    return {}


def outputs(path, batches):
    """[{'logits', 'probabilities'}] of the file read back once, one per batch of images."""
    if _is_tflite(path):
        return [_tflite_outputs(path, x) for x in batches]
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    results = []
    for x in batches:
        with tf.device("/CPU:0"):  # the cpu lowering, whatever devices TensorFlow sees
            out = serve(images=tf.constant(x))
        results.append({k: v.numpy() for k, v in out.items()})
    return results


def logits(path, images):
    """Logits of the SavedModel or TFLite file at `path` on float32 images [N, S, S, 3]."""
    return outputs(path, [images])[0]["logits"]


def tflite_interpreter(model_path_or_bytes):
    """A TFLite interpreter (LiteRT's when installed, else tf.lite's)."""
    kwargs = (
        {"model_content": model_path_or_bytes}
        if isinstance(model_path_or_bytes, bytes)
        else {"model_path": os.fspath(model_path_or_bytes)}
    )
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "deprecated, use ai_edge_litert"
            return tf.lite.Interpreter(**kwargs)
    return Interpreter(**kwargs)


def _tflite_outputs(path, images):
    """The fixed-batch model over any number of images: the last chunk is padded with zeros."""
    runner = tflite_interpreter(path).get_signature_runner("serving_default")
    batch = int(runner.get_input_details()["images"]["shape"][0])
    chunks = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
        chunks.append({k: v[:n] for k, v in runner(images=chunk).items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in ("logits", "probabilities")}
