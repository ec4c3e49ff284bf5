"""Model tree, parameter counts and numerics options of ViT-SE."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_se import model_configs, models

# Published vit_jax / timm counts with a 1000-class head and no pre_logits, at 224 px.
PUBLISHED_COUNTS = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "L/16": 304_326_632,
    "H/14": 632_045_800,
}


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
    np.testing.assert_allclose(pooled, s2["intermediates"]["pre_logits"][0] * w, rtol=1e-5)


def test_head_starts_at_zero_and_se_reduction_must_divide_width():
    model = _tiny()
    x = jnp.ones((1, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(model.apply(variables, x), np.zeros((1, 7)))
    with pytest.raises(ValueError, match="se_reduction 5 does not divide the width 32"):
        _tiny(se_reduction=5).init(jax.random.PRNGKey(0), x)


def test_dropout_and_stochastic_depth_only_in_training():
    model = _tiny(dropout_rate=0.1, attention_dropout_rate=0.1, stochastic_depth=0.5)
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
    np.testing.assert_allclose(logits_bf16, logits_f32, atol=0.1, rtol=0.05)


def test_attention_weights_can_be_sown_for_analysis():
    model = _tiny(sow_attention=True)
    x = jnp.ones((1, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    _, state = model.apply(variables, x, mutable=["intermediates"])
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    key = "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/attention_weights"
    (weights,) = flat[key]
    assert weights.shape == (1, 2, 65, 65)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)


def _grads_and_logits(model, params, x, mutable=False):
    def loss(p):
        kwargs = {"mutable": ["intermediates"]} if mutable else {}
        out = model.apply({"params": p}, x, train=True, **kwargs)
        logits = out[0] if mutable else out
        return jnp.sum(jnp.sin(logits)), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return grads, logits


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_training_path_matches_plain_autodiff(classifier):
    # The training path computes the last block for the class token only, recomputes the MLP's
    # GELU in the backward pass, differentiates attention by hand and orders each block's
    # backward; sow_attention=True switches all of that off (plain flax-style autodiff), so the
    # two must agree on logits and on every gradient.
    model = _tiny(classifier=classifier)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
    )
    grads, logits = jax.jit(lambda p: _grads_and_logits(model, p, x))(params)
    plain = model.clone(sow_attention=True)
    ref_grads, ref_logits = jax.jit(lambda p: _grads_and_logits(plain, p, x, True))(params)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    flat, ref = flax.traverse_util.flatten_dict(grads), flax.traverse_util.flatten_dict(ref_grads)
    assert flat.keys() == ref.keys()
    scale = max(float(np.max(np.abs(g))) for g in ref.values())
    for key, g in flat.items():
        np.testing.assert_allclose(g, ref[key], atol=1e-5 * scale, err_msg="/".join(key))


def test_attention_backward_equals_autodiff_of_softmax():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    logits = 3.0 * jax.random.normal(k1, (2, 3, 5, 7))
    values = jax.random.normal(k2, (2, 3, 7, 4))
    g = jax.random.normal(k3, (2, 3, 5, 4))

    def plain(s, v):
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s), v)

    out, vjp = jax.vjp(models._attend, logits, values)
    ref_out, ref_vjp = jax.vjp(plain, logits, values)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    for a, b in zip(vjp(g), ref_vjp(g), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_last_block_computes_the_class_token_only():
    # Its queries come from token 0 alone ([B, 1, heads, d]), the other blocks' from all 65 tokens.
    model = _tiny()
    x = jnp.ones((2, 32, 32, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, state = model.apply(
        {"params": params}, x, capture_intermediates=True, mutable=["intermediates"]
    )
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    query = "Transformer/encoderblock_{}/MultiHeadDotProductAttention_0/query/__call__"
    assert flat[query.format(0)][0].shape == (2, 65, 2, 16)
    assert flat[query.format(1)][0].shape == (2, 1, 2, 16)
    assert flat["Transformer/encoder_norm/__call__"][0].shape == (2, 1, 32)
