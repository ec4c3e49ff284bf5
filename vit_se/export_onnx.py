"""A trained ViT-SE as an ONNX graph, written from its parameters with the `onnx` package.

Why written node by node rather than converted. jax2tf in JAX 0.10 only serialises natively: the
SavedModel's graph is one `XlaCallModule` op holding StableHLO, which tf2onnx cannot convert
(it converts TensorFlow ops). jax2onnx (0.17) pins `orbax-checkpoint<0.11.37`, older than the
0.12 vit_se trains with, and pulls equinox, huggingface-hub and netron. The model is small and
fixed (`vit_se.models`: patch convolution, class token, position embeddings, pre-norm blocks,
final LayerNorm, token or mean pooling, optional pre_logits, SE, head), so its graph is written
here from the same parameter tree with `onnx.helper`, checked by `onnx.checker`, and every export
is run with onnxruntime and compared with JAX (`vit_se.export`), so a graph that drifted from
the model cannot be installed.

The graph (opset 20: `LayerNormalization`, `Gelu` with approximate='tanh' as flax's `nn.gelu`):
  input  `images`  float32 [batch, S, S, 3] (NHWC, RGB, [-1, 1]: the SavedModel's convention)
  output `logits`, `probabilities`  float32 [batch, num_classes]
The batch axis is symbolic ('batch'). Every block computes every token (the model's
`last_block_token_only` changes no value); float32 whatever the model's compute dtype.
"""

from __future__ import annotations

import os

import numpy as np

from vit_se import checkpoint
from vit_se.errors import Error

OPSET = 20
INPUT = "images"
OUTPUTS = ("logits", "probabilities")
LN_EPSILON = 1e-6


class OnnxExportError(Error, RuntimeError):
    """The ONNX packages are missing, or the model has a part the graph writer does not know."""


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise OnnxExportError(
            f"ONNX export needs the onnx and onnxruntime packages: pip install 'vit_se[export]' "
            f"({e})"
        ) from None
    return onnx, helper, numpy_helper


class _Graph:
    """Nodes and initializers with unique names."""

    def __init__(self):
        _, self.helper, self.numpy_helper = _onnx()
        self.nodes, self.inits = [], []
        self._n = 0

    def const(self, name, array):
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def dense(self, x, kernel, bias, name, in_dim=None):
        """x @ kernel + bias; kernel [in, out...] (in_dim given) or [in..., out], made 2-D."""
        kernel = np.asarray(kernel, np.float32)
        if in_dim is None:
            kernel = kernel.reshape(-1, kernel.shape[-1])
        else:
            kernel = kernel.reshape(in_dim, -1)
        w = self.const(f"{name}/kernel", kernel)
        b = self.const(f"{name}/bias", np.asarray(bias, np.float32).reshape(-1))
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layer_norm(self, x, p, name):
        scale = self.const(f"{name}/scale", np.asarray(p["scale"], np.float32))
        bias = self.const(f"{name}/bias", np.asarray(p["bias"], np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=LN_EPSILON)


def _block(g, x, p, name, heads):
    """One pre-norm encoder block on [N, T, D]."""
    attn = p["MultiHeadDotProductAttention_0"]
    width = np.asarray(attn["query"]["kernel"]).shape[0]
    head_dim = width // heads
    y = g.layer_norm(x, p["LayerNorm_0"], f"{name}/LayerNorm_0")
    split = g.const(f"{name}/heads_shape", np.array([0, 0, heads, head_dim], np.int64))

    def project(which, perm):
        z = g.dense(y, attn[which]["kernel"], attn[which]["bias"], f"{name}/{which}", width)
        return g.op("Transpose", [g.op("Reshape", [z, split])], perm=perm)

    q = project("query", [0, 2, 1, 3])  # [N, H, T, hd]
    k = project("key", [0, 2, 3, 1])  # [N, H, hd, T]
    v = project("value", [0, 2, 1, 3])
    scale = g.const(f"{name}/attention_scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    scores = g.op("Mul", [g.op("MatMul", [q, k]), scale])
    weights = g.op("Softmax", [scores], axis=-1)
    heads_out = g.op("Transpose", [g.op("MatMul", [weights, v])], perm=[0, 2, 1, 3])
    merge = g.const(f"{name}/merge_shape", np.array([0, 0, width], np.int64))
    attended = g.dense(
        g.op("Reshape", [heads_out, merge]),
        attn["out"]["kernel"],
        attn["out"]["bias"],
        f"{name}/out",
    )
    x = g.op("Add", [x, attended])
    mlp = p["MlpBlock_0"]
    y = g.layer_norm(x, p["LayerNorm_1"], f"{name}/LayerNorm_1")
    y = g.dense(y, mlp["Dense_0"]["kernel"], mlp["Dense_0"]["bias"], f"{name}/Dense_0")
    y = g.op("Gelu", [y], approximate="tanh")
    y = g.dense(y, mlp["Dense_1"]["kernel"], mlp["Dense_1"]["bias"], f"{name}/Dense_1")
    return g.op("Add", [x, y])


def build_model(params, model_config, image_size, class_names):
    """The onnx.ModelProto of a parameter tree (scanned or not) and its model config (a dict)."""
    onnx, helper, _ = _onnx()
    cfg = dict(model_config)
    params = checkpoint.unstack_blocks(params)
    if cfg.get("classifier", "token") not in ("token", "gap"):
        raise OnnxExportError(f"classifier {cfg.get('classifier')!r} has no ONNX graph here")
    heads = int(dict(cfg["transformer"])["num_heads"])
    depth = int(dict(cfg["transformer"])["num_layers"])
    g = _Graph()

    kernel = np.asarray(params["embedding"]["kernel"], np.float32)  # [P, P, 3, D]
    patch, width = kernel.shape[0], kernel.shape[-1]
    x = g.op("Transpose", [INPUT], perm=[0, 3, 1, 2])
    x = g.op(
        "Conv",
        [
            x,
            g.const("embedding/kernel", kernel.transpose(3, 2, 0, 1)),
            g.const("embedding/bias", np.asarray(params["embedding"]["bias"], np.float32)),
        ],
        kernel_shape=[patch, patch],
        strides=[patch, patch],
    )
    x = g.op("Reshape", [x, g.const("tokens_shape", np.array([0, width, -1], np.int64))])
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [N, L, D]
    if cfg.get("classifier", "token") == "token":
        batch = g.op(
            "Slice",
            [
                g.op("Shape", [INPUT]),
                g.const("zero", np.array([0], np.int64)),
                g.const("one", np.array([1], np.int64)),
            ],
        )
        shape = g.op("Concat", [batch, g.const("cls_tail", np.array([1, width], np.int64))], axis=0)
        cls = g.op("Expand", [g.const("cls", np.asarray(params["cls"], np.float32)), shape])
        x = g.op("Concat", [cls, x], axis=1)
    transformer = params["Transformer"]
    pos = np.asarray(transformer["posembed_input"]["pos_embedding"], np.float32)
    x = g.op("Add", [x, g.const("pos_embedding", pos)])
    for i in range(depth):
        x = _block(g, x, transformer[f"encoderblock_{i}"], f"encoderblock_{i}", heads)
    x = g.layer_norm(x, transformer["encoder_norm"], "encoder_norm")
    if cfg.get("classifier", "token") == "token":
        x = g.op("Gather", [x, g.const("token0", np.array(0, np.int64))], axis=1)
    else:
        x = g.op("ReduceMean", [x, g.const("token_axis", np.array([1], np.int64))], keepdims=0)
    if cfg.get("representation_size"):
        pre = params["pre_logits"]
        x = g.op("Tanh", [g.dense(x, pre["kernel"], pre["bias"], "pre_logits")])
    if cfg.get("use_se", True):
        se = params["se"]
        w = g.op("Relu", [g.dense(x, se["reduce"]["kernel"], se["reduce"]["bias"], "se/reduce")])
        w = g.op("Sigmoid", [g.dense(w, se["expand"]["kernel"], se["expand"]["bias"], "se/expand")])
        x = g.op("Mul", [x, w])
    logits = g.dense(x, params["head"]["kernel"], params["head"]["bias"], "head")
    num_classes = np.asarray(params["head"]["kernel"]).shape[-1]
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    g.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=-1))

    size = int(image_size)
    graph = helper.make_graph(
        g.nodes,
        "vit_se",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["batch", size, size, 3])],
        [
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", num_classes])
            for name in OUTPUTS
        ],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vit_se",
        doc_string="ViT-SE: images float32 [batch, S, S, 3] RGB in [-1, 1] -> logits, "
        "probabilities",
    )
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.20+ reads
    helper.set_model_props(model, {"class_names": "\n".join(class_names)})
    onnx.checker.check_model(model)
    return model


def write(trained, path):
    """Writes the model's graph to a local path (one file: B/16's 350 MB fits protobuf's 2 GB).

    Returns the facts the export report keeps about it.
    """
    onnx, _, _ = _onnx()
    model = build_model(trained.params, trained.info.model, trained.image_size, trained.class_names)
    onnx.save_model(model, path)
    return {
        "opset": OPSET,
        "inputs": {INPUT: "float32 [batch, S, S, 3] in [-1, 1]"},
        "outputs": {n: "float32 [batch, C]" for n in OUTPUTS},
        "runtime": "onnxruntime CPUExecutionProvider",
    }


def session(path):
    """An onnxruntime CPU session of the file."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise OnnxExportError(
            f"checking an ONNX export needs onnxruntime: pip install 'vit_se[export]' ({e})"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def check(trained, path):
    """The class names in the file's metadata are the model's; {} of facts."""
    names = session(path).get_modelmeta().custom_metadata_map.get("class_names", "").split("\n")
    if names != trained.class_names:
        raise OnnxExportError(f"{path}: class names {names} != {trained.class_names}")
    return {}


def outputs(path, batches):
    """[{'logits', 'probabilities'}] of the file under onnxruntime, one per batch of images."""
    sess = session(path)
    results = []
    for x in batches:
        values = sess.run(list(OUTPUTS), {INPUT: np.asarray(x, np.float32)})
        results.append(dict(zip(OUTPUTS, values, strict=True)))
    return results


def logits(path, images):
    """Logits of the ONNX file at `path` on float32 images [N, S, S, 3] (onnxruntime, CPU)."""
    return outputs(path, [images])[0]["logits"]
