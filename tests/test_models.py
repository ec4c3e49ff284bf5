"""Model tree, parameter counts, numerics options, and the two implementations of ViT-SE.

Tests run on CPU (tests/conftest.py pins JAX_PLATFORMS=cpu); assertions that hold for XLA:CPU only
say so.
"""

import dataclasses
import itertools
import logging

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances
from parity import assert_same_grads, assert_same_logits, grads_and_logits, perturbed

from vit_se import cpu_lean, model_configs, models

# Published vit_jax / timm counts with a 1000-class head and no pre_logits, at 224 px.
PUBLISHED_COUNTS = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "L/16": 304_326_632,
    "L/32": 306_535_400,
    "H/14": 632_045_800,
}
# big_vision's widths (decode_variant), with the same 1000-class head and class token at 224 px:
# no published count in this layout, so the architecture's (`_vit_jax_count`) is written out here.
BIG_VISION_COUNTS = {
    "M/16": 38_837_736,
    "So400m/14": 413_597_656,
    "So400m/16": 413_735_896,
    "g-opt/16": 1_136_286_184,
}
# Test-only widths, not official: counted from the architecture (`_vit_jax_count`).
UNPUBLISHED = ("tiny/8", "tiny/4", "cpu/6")


def _vit_jax_count(hidden, layers, mlp, patch, image=224, num_classes=1000):
    """ViT's parameter count from its architecture: patch embedding, cls, position embedding,
    per block two LayerNorms, q/k/v/out and the MLP, the final LayerNorm, the head."""
    tokens = (image // patch) ** 2 + 1
    block = 2 * 2 * hidden + 4 * (hidden * hidden + hidden) + 2 * hidden * mlp + mlp + hidden
    embed = patch * patch * 3 * hidden + hidden + hidden + tokens * hidden
    return embed + layers * block + 2 * hidden + hidden * num_classes + num_classes


def _siglip_tower_count(hidden, layers, mlp, patch, image):
    """A SigLIP image tower's count: big_vision vit.py with pool 'map' and no head (no class
    token; a position embedding of the patches only; MAPHead_0's probe, attention, LayerNorm
    and MLP of the model's mlp_dim)."""
    block = 2 * 2 * hidden + 4 * (hidden * hidden + hidden) + 2 * hidden * mlp + mlp + hidden
    embed = patch * patch * 3 * hidden + hidden + (image // patch) ** 2 * hidden
    map_head = (
        hidden + 4 * (hidden * hidden + hidden) + 2 * hidden + 2 * hidden * mlp + mlp + hidden
    )
    return embed + layers * block + 2 * hidden + map_head


def test_every_variant_has_an_exact_count():
    counted = set(PUBLISHED_COUNTS) | set(BIG_VISION_COUNTS) | set(UNPUBLISHED)
    assert counted == set(model_configs.VARIANTS)
    for name, count in {**PUBLISHED_COUNTS, **BIG_VISION_COUNTS}.items():
        hidden, layers, _, mlp, patch = model_configs.VARIANTS[name]
        assert _vit_jax_count(hidden, layers, mlp, patch) == count, name


def test_big_vision_widths_are_decode_variants():
    # big_vision/models/vit.py decode_variant: width, depth, mlp_dim, num_heads.
    assert model_configs.VARIANTS["M/16"] == (512, 12, 8, 2048, 16)
    assert model_configs.VARIANTS["So400m/14"] == (1152, 27, 16, 4304, 14)
    assert model_configs.VARIANTS["So400m/16"] == (1152, 27, 16, 4304, 16)
    assert model_configs.VARIANTS["g-opt/16"] == (1536, 40, 16, 6144, 16)
    assert model_configs.get_config("so400m14").name == "So400m/14"
    assert model_configs.get_config("g-opt16").name == "g-opt/16"


@pytest.mark.parametrize("name", list(BIG_VISION_COUNTS))
def test_big_vision_width_parameter_counts(name):
    params = _param_shapes(model_configs.get_config(name, use_se=False), 1000)
    assert _count(params) == BIG_VISION_COUNTS[name]


# SigLIP / SigLIP 2 image towers at their released resolutions (So400m/14 at 384 px sees 378 of
# them: 27 x 27 patches): vit_se with classifier 'map', no SE and no head. So400m/14 at 384 is
# the 428,225,600 of the released SigLIP So400m vision model.
SIGLIP_TOWERS = {
    ("B/16", 224): 92_884_224,
    ("B/32", 256): 94_552_320,
    ("L/16", 256): 315_956_224,
    ("So400m/14", 224): 427_680_704,
    ("So400m/14", 378): 428_225_600,
    ("So400m/16", 256): 427_888_064,
    ("g-opt/16", 256): 1_163_168_256,
}


@pytest.mark.parametrize("name,image", list(SIGLIP_TOWERS))
def test_siglip_image_tower_parameter_counts(name, image):
    hidden, layers, _, mlp, patch = model_configs.VARIANTS[name]
    assert _siglip_tower_count(hidden, layers, mlp, patch, image) == SIGLIP_TOWERS[name, image]
    cfg = model_configs.get_config(name, use_se=False)
    cfg.classifier = "map"
    assert _count(_param_shapes(cfg, None, image=image)) == SIGLIP_TOWERS[name, image]


@pytest.mark.parametrize("name", UNPUBLISHED)
def test_unpublished_variants_count_as_the_architecture_says(name):
    hidden, layers, _, mlp, patch = model_configs.VARIANTS[name]
    params = _param_shapes(model_configs.get_config(name, use_se=False), 1000, image=32)
    assert _count(params) == _vit_jax_count(hidden, layers, mlp, patch, image=32)


def _param_shapes(config, num_classes, image=224):
    model = models.build_model(config, num_classes)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3)))
    )
    return variables["params"]


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", list(PUBLISHED_COUNTS))
def test_published_parameter_counts(name):
    params = _param_shapes(model_configs.get_config(name, use_se=False), 1000)
    assert _count(params) == PUBLISHED_COUNTS[name]


@pytest.mark.parametrize("name,reduction", [("B/16", 4), ("B/16", 2), ("S/16", 4), ("L/16", 4)])
def test_se_adds_exactly_its_two_dense_layers(name, reduction):
    cfg = model_configs.get_config(name, use_se=True, se_reduction=reduction)
    width = cfg.hidden_size
    hidden = width // reduction
    se = width * hidden + hidden + hidden * width + width
    assert _count(_param_shapes(cfg, 1000)) == PUBLISHED_COUNTS[name] + se
    if name == "B/16" and reduction == 4:
        assert se == 295_872


def test_tree_names_match_vit_jax_linen():
    params = _param_shapes(model_configs.get_config("B/16"), 7)
    assert set(params) == {"cls", "embedding", "Transformer", "se", "head"}
    block = params["Transformer"]["encoderblock_11"]
    assert set(block) == {
        "LayerNorm_0",
        "MultiHeadDotProductAttention_0",
        "LayerNorm_1",
        "MlpBlock_0",
    }
    assert block["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (768, 12, 64)
    assert block["MultiHeadDotProductAttention_0"]["out"]["kernel"].shape == (12, 64, 768)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 197, 768)
    assert params["se"]["reduce"]["kernel"].shape == (768, 192)
    assert params["se"]["expand"]["kernel"].shape == (192, 768)
    assert params["head"]["kernel"].shape == (768, 7)


def test_representation_size_adds_pre_logits_and_se_follows_it():
    cfg = model_configs.get_config("B/16", representation_size=768)
    params = _param_shapes(cfg, 7)
    assert params["pre_logits"]["kernel"].shape == (768, 768)
    assert params["se"]["reduce"]["kernel"].shape == (768, 192)


def test_map_classifier_has_big_vision_map_head_and_no_class_token():
    cfg = model_configs.get_config("B/16")
    cfg.classifier = "map"
    params = _param_shapes(cfg, 7)
    assert set(params) == {"embedding", "Transformer", "MAPHead_0", "se", "head"}
    head = params["MAPHead_0"]
    assert set(head) == {"probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0"}
    assert head["probe"].shape == (1, 1, 768)
    attention = head["MultiHeadDotProductAttention_0"]
    assert attention["query"]["kernel"].shape == (768, 12, 64)  # as a block's attention
    assert attention["out"]["kernel"].shape == (12, 64, 768)
    assert head["MlpBlock_0"]["Dense_0"]["kernel"].shape == (768, 3072)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 196, 768)


def test_sincos2d_has_no_position_parameter_and_is_big_vision_formula():
    cfg = model_configs.get_config("tiny/4")
    cfg.posemb = "sincos2d"
    params = _param_shapes(cfg, 7, image=32)
    assert "posembed_input" not in params["Transformer"]
    # big_vision's posemb_sincos_2d, written out: token (y, x) of the grid gets
    # [sin(x w_d), cos(x w_d), sin(y w_d), cos(y w_d)], w_d = 10000 ** (-d / (width/4 - 1)).
    h, w, width = 3, 5, 32
    pe = models.posemb_sincos_2d(h, w, width)
    assert pe.shape == (1, 15, 32) and pe.dtype == np.float32
    omega = [10000.0 ** (-d / 7) for d in range(8)]
    for y in range(h):
        for x in range(w):
            row = pe[0, y * w + x]
            for d in range(8):
                want = (np.sin(x * omega[d]), np.cos(x * omega[d]))
                # float32 rounds the argument (scale x) and the sine of it (scale 1).
                tolerances.assert_close(row[[d, 8 + d]], want, n=2, scale=max(x, 1))
                want = (np.sin(y * omega[d]), np.cos(y * omega[d]))
                tolerances.assert_close(row[[16 + d, 24 + d]], want, n=2, scale=max(y, 1))
    with pytest.raises(ValueError, match="a multiple of 4 \\(>= 8\\), got 30"):
        models.posemb_sincos_2d(2, 2, 30)


@pytest.mark.parametrize("classifier", ["token", "map"])
@pytest.mark.grid
def test_sincos2d_is_a_fixed_embedding_of_the_patches_alone(classifier):
    # big_vision adds it before the class token joins: the same as a learned embedding holding a
    # zero class row and the sin-cos rows.
    sincos = _tiny(posemb="sincos2d", classifier=classifier, impl="plain")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = perturbed(sincos.init(jax.random.PRNGKey(0), x)["params"])
    table = models.posemb_sincos_2d(8, 8, 32)
    if classifier == "token":
        table = np.concatenate([np.zeros((1, 1, 32), np.float32), table], axis=1)
    learned = dict(
        params, Transformer=dict(params["Transformer"], posembed_input={"pos_embedding": table})
    )
    want = _tiny(classifier=classifier, impl="plain").apply({"params": learned}, x)
    assert_same_logits(sincos.apply({"params": params}, x), want, sincos, x)


def test_gap_classifier_has_no_class_token():
    cfg = model_configs.get_config("tiny/4")
    cfg.classifier = "gap"
    params = _param_shapes(cfg, 7, image=32)
    assert "cls" not in params
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 64, 32)


def test_model_names_are_normalised_and_unknown_names_rejected():
    assert model_configs.get_config("ViT-B_16").name == "B/16"
    assert model_configs.get_config("b16").name == "B/16"
    with pytest.raises(ValueError, match="unknown model name 'X/99'"):
        model_configs.get_config("X/99")


def _tiny(use_se=True, **kw):
    cfg = model_configs.get_config("tiny/4", use_se=use_se)
    for k, v in kw.items():
        if k in cfg.transformer:
            cfg.transformer[k] = v
        else:
            cfg[k] = v
    return models.build_model(cfg, 7)


def test_se_is_excitation_on_the_class_token():
    model = _tiny()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, state = model.apply({"params": params}, x, mutable=["intermediates"])
    pooled = state["intermediates"]["pre_logits"][0]
    w = state["intermediates"]["se"]["excitation"][0]
    assert w.shape == (2, 32)
    assert np.all((np.asarray(w) > 0) & (np.asarray(w) < 1))
    # Turning SE off in the same weights gives the un-excited vector.
    plain = _tiny(use_se=False)
    p2 = {k: v for k, v in params.items() if k != "se"}
    _, s2 = plain.apply({"params": p2}, x, mutable=["intermediates"])
    tolerances.assert_close(pooled, s2["intermediates"]["pre_logits"][0] * w, n=1)


def test_head_starts_at_zero_and_se_reduction_must_divide_width():
    model = _tiny()
    x = jnp.ones((1, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(model.apply(variables, x), np.zeros((1, 7)))
    with pytest.raises(ValueError, match="se_reduction 5 does not divide the width 32"):
        _tiny(se_reduction=5).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
@pytest.mark.grid
def test_dropout_and_stochastic_depth_only_in_training(impl):
    model = _tiny(dropout_rate=0.1, attention_dropout_rate=0.1, stochastic_depth=0.5, impl=impl)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params)  # non-zero head
    a = model.apply({"params": params}, x)
    b = model.apply({"params": params}, x)
    np.testing.assert_array_equal(a, b)
    t1 = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    t2 = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not np.allclose(t1, t2)
    assert np.all(np.isfinite(t1))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
    model = _tiny(dtype="bfloat16")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    dtypes = {p.dtype for p in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype("float32")}
    params = jax.tree_util.tree_map(lambda p: p + 0.05, variables["params"])
    logits_bf16 = model.apply({"params": params}, x)
    logits_f32 = _tiny().apply({"params": params}, x)
    assert logits_bf16.dtype == jnp.float32
    n = tolerances.vit_roundings(model)
    tolerances.assert_close(logits_bf16, logits_f32, n, eps=tolerances.EPS_BF16)


# Attention implementations this machine runs: cuDNN's needs an NVIDIA GPU, and the suite is
# pinned to CPU, so on CPU only 'xla' is compared (test_cudnn_attention_matches_xla is GPU-only).
ATTENTION_IMPLS_HERE = [
    a for a in models.ATTENTION_IMPLS if a != "cudnn" or jax.default_backend() == "gpu"
]


# Every combination in the full suite; in the fast tier the paper's model: token classifier with SE
# and no pre-logits (each case compiles both implementations' gradients, 15-20 s on 2 cores).
# sincos2d adds a constant to the patches;
# test_scanned_map_sincos2d_model_is_the_unrolled_one runs it through both implementations.
_FAST_CASES = {("token", True, None)}


@pytest.mark.parametrize(
    "classifier,posemb,use_se,representation_size",
    [
        pytest.param(
            c, "learn", se, rep, marks=() if (c, se, rep) in _FAST_CASES else pytest.mark.slow
        )
        for c, se, rep in itertools.product(["token", "gap", "map"], [True, False], [None, 24])
    ],
)
@pytest.mark.parametrize("attention_impl", ATTENTION_IMPLS_HERE)
def test_plain_and_cpu_lean_agree_on_logits_and_every_gradient(
    classifier, posemb, use_se, representation_size, attention_impl
):
    # The reference is vit_jax's computation: plain, every token through every block.
    ref_model = _tiny(
        use_se=use_se,
        classifier=classifier,
        posemb=posemb,
        representation_size=representation_size,
        impl="plain",
        last_block_token_only=False,
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
    params = perturbed(ref_model.init(jax.random.PRNGKey(0), x)["params"])
    ref_grads, ref_logits = jax.jit(lambda p: grads_and_logits(ref_model, p, x))(params)
    assert float(np.max(np.abs(ref_logits))) > 0.1
    variants = [
        dict(impl="plain", attention_impl=attention_impl),
        dict(impl="cpu_lean", last_block_token_only=False),
        dict(impl="cpu_lean"),
    ]
    for fields in variants:
        model = ref_model.clone(**{"last_block_token_only": True, **fields})
        grads, logits = jax.jit(lambda p, m=model: grads_and_logits(m, p, x))(params)
        assert_same_logits(logits, ref_logits, ref_model, x, err_msg=str(fields))
        assert_same_grads(grads, ref_grads, ref_model, x)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype,atol", [("float32", 2e-2), ("bfloat16", 5e-2)])
def test_cudnn_attention_matches_xla(dtype, atol):
    # GPU-only. cuDNN computes in bfloat16 even for float32 models (its kernels take 16-bit
    # inputs), hence tolerances of bfloat16's precision on logits of scale ~1.
    xla = _tiny(impl="plain", dtype=dtype)  # head_dim 16: cuDNN needs a multiple of 8
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    params = perturbed(xla.init(jax.random.PRNGKey(0), x)["params"])
    ref_grads, ref_logits = jax.jit(lambda p: grads_and_logits(xla, p, x))(params)
    cudnn = xla.clone(attention_impl="cudnn")
    grads, logits = jax.jit(lambda p: grads_and_logits(cudnn, p, x))(params)
    np.testing.assert_allclose(logits, ref_logits, atol=atol)
    leaves = jax.tree_util.tree_leaves
    for g, r in zip(leaves(grads), leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, atol=atol * max(1.0, float(np.max(np.abs(r)))))


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
@pytest.mark.slow
def test_sow_attention_only_sows(impl):
    # The same logits and gradients with and without the sown weights: sowing does not switch
    # the computation to another path.
    model = _tiny(impl=impl)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = perturbed(model.init(jax.random.PRNGKey(0), x)["params"])
    grads, logits = jax.jit(lambda p: grads_and_logits(model, p, x))(params)
    sowing = model.clone(sow_attention=True)
    s_grads, s_logits = jax.jit(lambda p: grads_and_logits(sowing, p, x, mutable=True))(params)
    assert_same_logits(s_logits, logits, model, x)
    assert_same_grads(s_grads, grads, model, x)


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
def test_attention_weights_can_be_sown_for_analysis(impl):
    model = _tiny(sow_attention=True, last_block_token_only=False, impl=impl)
    x = jnp.ones((1, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    _, state = model.apply(variables, x, mutable=["intermediates"])
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    key = "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/attention_weights"
    (weights,) = flat[key]
    assert weights.shape == (1, 2, 65, 65)
    tolerances.assert_close(np.asarray(weights).sum(-1), np.ones(weights.shape[:-1]), n=65)


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
@pytest.mark.grid
def test_a_class_token_only_last_block_sows_the_class_token_row(impl):
    full = _tiny(sow_attention=True, last_block_token_only=False, impl=impl)
    lean = full.clone(last_block_token_only=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = perturbed(full.init(jax.random.PRNGKey(0), x)["params"])
    key = "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/attention_weights"

    def weights(model):
        _, state = model.apply({"params": params}, x, mutable=["intermediates"])
        return flax.traverse_util.flatten_dict(state["intermediates"], sep="/")[key][0]

    row, whole = weights(lean), weights(full)
    assert row.shape == (2, 2, 1, 65)
    n = tolerances.vit_sums(full, 32)  # weights of the last block: most of the model's sums
    tolerances.assert_close(row, whole[:, :, :1], n, scale=1.0)


@pytest.mark.slow
def test_attention_backward_equals_autodiff_of_softmax():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    logits = 3.0 * jax.random.normal(k1, (2, 3, 5, 7))
    values = jax.random.normal(k2, (2, 3, 7, 4))
    g = jax.random.normal(k3, (2, 3, 5, 4))

    def plain(s, v):
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s), v)

    out, vjp = jax.vjp(cpu_lean.attend, logits, values)
    ref_out, ref_vjp = jax.vjp(plain, logits, values)
    # Sums over 7 keys (and 4 value dims for the logits' gradient), of softmax-scale terms.
    tolerances.assert_close(out, ref_out, n=7)
    for a, b in zip(vjp(g), ref_vjp(g), strict=True):
        tolerances.assert_close(a, b, n=7 + 4)


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
def test_last_block_computes_the_class_token_only(impl):
    # Its queries come from token 0 alone ([B, 1, heads, d]), the other blocks' from all 65 tokens;
    # with the option off every block sees every token, and the logits are the same.
    model = _tiny(impl=impl)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = perturbed(model.init(jax.random.PRNGKey(0), x)["params"])
    query = "Transformer/encoderblock_{}/MultiHeadDotProductAttention_0/query/__call__"
    outputs = {}
    for only in (True, False):
        logits, state = model.clone(last_block_token_only=only).apply(
            {"params": params}, x, capture_intermediates=True, mutable=["intermediates"]
        )
        flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
        outputs[only] = logits
        assert flat[query.format(0)][0].shape == (2, 65, 2, 16)
        assert flat[query.format(1)][0].shape == ((2, 1, 2, 16) if only else (2, 65, 2, 16))
        assert flat["Transformer/encoder_norm/__call__"][0].shape == (
            (2, 1, 32) if only else (2, 65, 32)
        )
    assert_same_logits(outputs[True], outputs[False], model, x)


def test_gap_classifier_computes_every_token_in_the_last_block():
    model = _tiny(classifier="gap")  # last_block_token_only is on by default; gap needs all
    x = jnp.ones((2, 32, 32, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, state = model.apply(
        {"params": params}, x, capture_intermediates=True, mutable=["intermediates"]
    )
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    assert flat["Transformer/encoder_norm/__call__"][0].shape == (2, 64, 32)


def test_map_classifier_computes_every_token_in_the_last_block():
    model = _tiny(classifier="map")  # last_block_token_only has no effect: the probe reads all
    x = jnp.ones((2, 32, 32, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, state = model.apply(
        {"params": params}, x, capture_intermediates=True, mutable=["intermediates"]
    )
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    assert flat["Transformer/encoder_norm/__call__"][0].shape == (2, 64, 32)
    assert flat["MAPHead_0/__call__"][0].shape == (2, 32)


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
def test_map_head_sows_the_probe_attention_over_every_token(impl):
    model = _tiny(classifier="map", sow_attention=True, impl=impl)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = perturbed(model.init(jax.random.PRNGKey(0), x)["params"])
    logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    (weights,) = flat["MAPHead_0/MultiHeadDotProductAttention_0/attention_weights"]
    assert weights.shape == (2, 2, 1, 64)  # N, heads, the probe, every patch token
    tolerances.assert_close(np.asarray(weights).sum(-1), np.ones(weights.shape[:-1]), n=64)
    assert_same_logits(
        logits, model.clone(sow_attention=False).apply({"params": params}, x), model, x
    )


@pytest.mark.parametrize("remat_policy", ["none", "full"])
@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
@pytest.mark.slow
def test_scanned_map_sincos2d_model_is_the_unrolled_one(impl, remat_policy):
    from vit_se import checkpoint

    unrolled = _tiny(classifier="map", posemb="sincos2d", impl=impl)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = perturbed(unrolled.init(jax.random.PRNGKey(0), x)["params"])
    ref_grads, ref_logits = jax.jit(lambda p: grads_and_logits(unrolled, p, x))(params)
    scanned = unrolled.clone(scan=True, remat_policy=remat_policy)
    stacked = checkpoint.stack_blocks(params, jnp.stack)
    grads, logits = jax.jit(lambda p: grads_and_logits(scanned, p, x))(stacked)
    assert_same_logits(logits, ref_logits, unrolled, x)
    assert_same_grads(checkpoint.unstack_blocks(grads), ref_grads, unrolled, x)


def test_auto_is_the_cpu_path_on_cpu_and_plain_elsewhere():
    assert models.resolve_impl("auto", backend="cpu") == "cpu_lean"
    assert models.resolve_impl("auto", backend="gpu") == "plain"
    assert models.resolve_impl("auto", backend="tpu") == "plain"
    assert models.resolve_impl("plain", backend="cpu") == "plain"
    assert models.resolve_impl("cpu_lean", backend="gpu") == "cpu_lean"
    # CPU-only assertion: the suite is pinned to CPU, where 'auto' means cpu_lean.
    assert jax.default_backend() == "cpu"
    assert models.resolve_impl("auto") == "cpu_lean"


def test_cudnn_attention_falls_back_to_xla_off_gpu(caplog):
    # CPU-only assertion: cuDNN is unavailable, so the model computes with XLA's attention (a
    # model trained on a GPU with cuDNN attention still evaluates on a CPU) and says so.
    assert jax.default_backend() != "gpu"
    xla = _tiny(impl="plain")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    params = perturbed(xla.init(jax.random.PRNGKey(0), x)["params"])
    with caplog.at_level(logging.WARNING):
        got = xla.clone(attention_impl="cudnn").apply({"params": params}, x)
    assert "attention_impl 'cudnn' needs an NVIDIA GPU" in caplog.text
    np.testing.assert_array_equal(got, xla.apply({"params": params}, x))


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("impl", "fast", "'auto', 'plain', 'cpu_lean'"),
        ("attention_impl", "flash", "'xla', 'cudnn'"),
        ("remat_policy", "dots", "'none', 'full', 'save_dots'"),
        ("classifier", "tok", "'token', 'gap', 'map'"),
        ("posemb", "learned", "'learn', 'sincos2d'"),
    ],
)
def test_unknown_option_is_one_line_naming_field_and_choices(field, value, allowed):
    with pytest.raises(ValueError) as e:
        _tiny(**{field: value})
    assert str(e.value) == f"model.{field} must be one of {allowed}, got {value!r}"


def test_cudnn_attention_with_the_cpu_path_is_refused():
    model = _tiny(impl="cpu_lean", attention_impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl 'cudnn' needs model.impl 'plain'"):
        model.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 3)))


def test_every_model_field_is_declared_in_the_config():
    declared = set(model_configs.get_config("B/16")) - {"name"}
    fields = {f.name for f in dataclasses.fields(models.VisionTransformer)}
    assert declared == fields - {"num_classes", "parent", "name"}
    defaults = model_configs.get_config("B/16")
    assert (defaults.impl, defaults.attention_impl, defaults.scan, defaults.remat_policy) == (
        "auto",
        "xla",
        False,
        "none",
    )
    assert defaults.last_block_token_only is True
    # The dataclass defaults are the config's, so an export.json written before a field existed
    # builds the same model.
    for f in dataclasses.fields(models.VisionTransformer):
        if f.name == "dtype":
            assert jnp.dtype(defaults.dtype) == jnp.dtype(f.default)
        elif f.name in declared and f.default is not dataclasses.MISSING:
            assert defaults[f.name] == f.default, f.name


@pytest.mark.parametrize("name", list(model_configs.VARIANTS))
def test_variant_name_of_each_named_config(name):
    assert model_configs.variant_name(model_configs.get_config(name)) == name


def test_variant_name_of_custom_widths():
    cfg = model_configs.get_config("B/16")
    cfg.hidden_size = 512
    assert model_configs.variant_name(cfg) == "custom"
    cfg = model_configs.get_config("B/16")
    cfg.transformer.num_layers = 6
    assert model_configs.variant_name(cfg) == "custom"
    cfg = model_configs.get_config("B/16")
    cfg.patches.size = (16, 8)
    assert model_configs.variant_name(cfg) == "custom"
    assert model_configs.variant_name(model_configs.get_config("B/16").to_dict()) == "B/16"
