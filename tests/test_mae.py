"""The masked autoencoder: exact random masks, the masked-patch loss, and an encoder that is the
classifier's backbone parameter for parameter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances

from vit_se import checkpoint, mae, model_configs, models

IMAGE = 48  # tiny/8: a 6 x 6 grid of 36 patches, 9 visible at ratio 0.75
PATCH = 8


def _model(ratio=0.75, **model_fields):
    config = model_configs.get_config("tiny/8")
    config.update(model_fields)
    return mae.build_model(
        config,
        mask_ratio=ratio,
        decoder_width=32,
        decoder_depth=1,
        decoder_heads=2,
        image_size=IMAGE,
    )


def _images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, (n, IMAGE, IMAGE, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def model_and_params():
    model = _model()
    return model, model.init(jax.random.PRNGKey(0), _images())["params"]


def test_masks_are_exact_disjoint_complete_and_differ_per_example_and_step():
    n, patches = 16, 36
    key = jax.random.PRNGKey(7)
    m = mae.random_masking(key, n, patches, 0.75)
    keep, mask, restore = np.asarray(m.keep), np.asarray(m.mask), np.asarray(m.restore)
    assert keep.shape == (n, 9) and mask.shape == (n, patches)
    np.testing.assert_array_equal(mask.sum(axis=1), np.full(n, 27.0))  # exactly 75% per example
    for b in range(n):
        masked = set(np.flatnonzero(mask[b]))
        visible = set(keep[b])
        assert len(visible) == 9 and not masked & visible
        assert masked | visible == set(range(patches))
        # restore puts each patch back: visible ones first in the shuffled order.
        assert set(np.flatnonzero(restore[b] < 9)) == visible
    assert len({tuple(sorted(k)) for k in keep}) == n  # a different mask for every example
    step2 = mae.random_masking(jax.random.fold_in(key, 2), n, patches, 0.75)
    assert not np.array_equal(np.asarray(step2.mask), mask)
    again = mae.random_masking(key, n, patches, 0.75)
    np.testing.assert_array_equal(np.asarray(again.mask), mask)  # reproducible from the key


def test_the_model_masks_from_its_mask_rng(model_and_params):
    model, params = model_and_params
    x = _images(8)
    _, mask_a = model.apply({"params": params}, x, rngs={"mask": jax.random.PRNGKey(1)})
    _, mask_b = model.apply({"params": params}, x, rngs={"mask": jax.random.PRNGKey(2)})
    _, mask_c = model.apply({"params": params}, x, rngs={"mask": jax.random.PRNGKey(1)})
    np.testing.assert_array_equal(np.asarray(mask_a).sum(1), np.full(8, 27.0))
    assert not np.array_equal(mask_a, mask_b)
    np.testing.assert_array_equal(mask_a, mask_c)
    with pytest.raises(Exception, match="mask"):
        model.apply({"params": params}, x)  # apply without a mask rng is refused, not defaulted


@pytest.mark.parametrize(
    "ratio,patches,message",
    [
        (0.0, 36, r"config\.mae\.mask_ratio: 0\.0 must lie strictly between 0 and 1"),
        (1.0, 36, r"strictly between 0 and 1"),
        (-0.5, 36, r"strictly between 0 and 1"),
        (0.99, 36, r"config\.mae\.mask_ratio: 0\.99 leaves no visible patch of 36"),
    ],
)
def test_bad_mask_ratios_are_one_line(ratio, patches, message):
    with pytest.raises(mae.MaeConfigError, match=message) as e:
        mae.num_visible(patches, ratio)
    assert "\n" not in str(e.value)


def test_bad_mask_ratio_is_refused_when_the_model_is_built():
    with pytest.raises(mae.MaeConfigError, match="leaves no visible patch"):
        _model(ratio=0.98)


def test_visible_count_is_the_paper_floor_without_float_surprises():
    assert mae.num_visible(196, 0.75) == 49
    assert mae.num_visible(100, 0.9) == 10  # 100 * (1 - 0.9) is 9.999999999999998
    assert mae.num_visible(36, 0.5) == 18


def test_patches_are_in_the_order_of_the_encoder_tokens(model_and_params):
    _, params = model_and_params
    x = _images(2)
    kernel = np.asarray(params["encoder"]["embedding"]["kernel"], np.float64)  # [8, 8, 3, D]
    bias = np.asarray(params["encoder"]["embedding"]["bias"], np.float64)
    conv = jax.lax.conv_general_dilated(
        x,
        jnp.asarray(kernel, jnp.float32),
        (PATCH, PATCH),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    tokens = np.asarray(conv).reshape(2, 36, -1) + bias
    by_patch = np.asarray(mae.patchify(x, PATCH), np.float64) @ kernel.reshape(-1, kernel.shape[-1])
    # One dense contraction of p*p*3 = 192 terms against a float64 reference.
    tolerances.assert_close(tokens, by_patch + bias, n=PATCH * PATCH * 3)
    np.testing.assert_array_equal(mae.unpatchify(mae.patchify(x, PATCH), PATCH, (6, 6)), x)


def test_loss_ignores_visible_patches_and_sees_masked_ones():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(4, 36, 192)).astype(np.float32)
    target = rng.normal(size=(4, 36, 192)).astype(np.float32)
    m = np.asarray(mae.random_masking(jax.random.PRNGKey(0), 4, 36, 0.75).mask)
    base = float(mae.loss(pred, target, m))
    changed = pred.copy()
    changed[m == 0] += 100.0  # every visible patch's prediction, far off
    assert float(mae.loss(changed, target, m)) == base
    np.testing.assert_array_equal(
        mae.per_example_loss(changed, target, m), mae.per_example_loss(pred, target, m)
    )
    one = pred.copy()
    b, i = np.argwhere(m == 1)[0]
    one[b, i] += 1.0
    assert float(mae.loss(one, target, m)) > base
    # The paper's reduction: the mean over masked patches of the per-pixel mean square.
    expected = np.sum(np.mean((pred - target) ** 2, -1) * m) / m.sum()
    # Each per-patch mean sums 192 squares, then a sum over the 108 masked patches.
    tolerances.assert_close(base, expected, n=192 + int(m.sum()))


def test_normalised_targets_are_each_patch_standardised():
    x = _images(2, seed=3)
    t = np.asarray(mae.targets(x, PATCH, norm_pix_loss=True), np.float64)
    raw = np.asarray(mae.patchify(x, PATCH), np.float64)
    mean, var = raw.mean(-1, keepdims=True), raw.var(-1, keepdims=True)
    # float32 mean and variance of 192 pixels each (n = 2 x 192 sums), then a division; the
    # checks of the result's own mean and variance sum 192 of its values again (float64 here).
    n = 2 * PATCH * PATCH * 3
    tolerances.assert_close(t, (raw - mean) / np.sqrt(var + mae.NORM_PIX_EPS), n=n)
    tolerances.assert_close(t.mean(-1), 0.0, n=n, scale=tolerances.scale_of(t))
    tolerances.assert_close(t.var(-1), var[..., 0] / (var[..., 0] + 1e-6), n=n, scale=1.0)
    np.testing.assert_array_equal(
        mae.targets(x, PATCH, norm_pix_loss=False), raw.astype(np.float32)
    )


@pytest.mark.slow
def test_gradient_reaches_every_encoder_and_decoder_parameter(model_and_params):
    model, params = model_and_params
    x = _images(8)

    def loss(p):
        pred, mask = model.apply({"params": p}, x, rngs={"mask": jax.random.PRNGKey(5)})
        return mae.loss(pred, mae.targets(x, PATCH), mask)

    grads = checkpoint.flatten(jax.grad(loss)(params))
    for key, g in grads.items():
        assert np.any(np.asarray(g) != 0), key
    # Only visible patches (and the class token) enter the encoder: masked rows of the position
    # embedding get no gradient at all.
    pe = np.asarray(grads["encoder/Transformer/posembed_input/pos_embedding"])[0]
    _, mask = model.apply({"params": params}, x, rngs={"mask": jax.random.PRNGKey(5)})
    seen = np.flatnonzero(np.asarray(mask).min(axis=0) == 0)  # visible in some example
    assert len(seen) < 36
    np.testing.assert_array_equal(np.flatnonzero(np.abs(pe).sum(-1)), np.r_[0, 1 + seen])


@pytest.mark.parametrize("scan", [False, True])
def test_encoder_tree_is_the_classifier_backbone(scan):
    model = _model(scan=scan)
    x = _images(1)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    vit = models.build_model(model_configs.get_config("tiny/8", use_se=True), 7, scan=scan)
    vit_params = jax.eval_shape(vit.init, jax.random.PRNGKey(0), x)["params"]
    encoder = {k: v.shape for k, v in checkpoint.flatten(mae.encoder_params(params)).items()}
    backbone = {
        k: v.shape
        for k, v in checkpoint.flatten(vit_params).items()
        if k.split("/")[0] not in ("se", "head")
    }
    assert encoder == backbone
    assert set(checkpoint.flatten(params["decoder"])) >= {
        "mask_token",
        "embed/kernel",
        "decoderblock_0/MultiHeadDotProductAttention_0/query/kernel",
        "decoder_norm/scale",
        "pred/kernel",
    }
    assert params["decoder"]["pred"]["kernel"].shape == (32, PATCH * PATCH * 3)


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
def test_encoder_on_every_token_is_the_classifier_encoder(impl):
    # keep = all tokens in order: the tokens of the classifier's own encoder (its class token is
    # what the classifier pools); in another order, the same tokens in that order.
    config = model_configs.get_config("tiny/8", use_se=False)
    vit = models.build_model(config, None, impl=impl, last_block_token_only=False)
    x = _images(2)
    params = vit.init(jax.random.PRNGKey(0), x)["params"]
    pooled = vit.apply({"params": params}, x)
    tokens = 37
    everything = jnp.tile(jnp.arange(tokens)[None], (2, 1))
    out = vit.apply({"params": params}, x, keep=everything)
    assert out.shape == (2, tokens, 64)
    # The same computation; float32 rounding only, in another order (tests/tolerances.py's rule
    # with the encoder's sums: pixels to the final LayerNorm).
    n = tolerances.vit_sums(config, 48)
    tolerances.assert_close(out[:, 0], pooled, n=n)
    perm = jnp.asarray(np.stack([np.random.default_rng(i).permutation(tokens) for i in range(2)]))
    shuffled = vit.apply({"params": params}, x, keep=perm)
    tolerances.assert_close(shuffled, jnp.take_along_axis(out, perm[..., None], 1), n=n)


@pytest.mark.slow
def test_reconstruction_keeps_visible_patches_and_greys_masked_ones(model_and_params):
    model, params = model_and_params
    x = _images(3)
    pred, mask = model.apply({"params": params}, x, rngs={"mask": jax.random.PRNGKey(9)})
    masked, recon = mae.reconstruction(pred, x, mask, PATCH, norm_pix_loss=True)
    assert masked.shape == recon.shape == x.shape
    p_in, p_masked, p_recon = (np.asarray(mae.patchify(a, PATCH)) for a in (x, masked, recon))
    visible = np.asarray(mask) == 0
    np.testing.assert_array_equal(p_recon[visible], p_in[visible])
    np.testing.assert_array_equal(p_masked[visible], p_in[visible])
    assert not np.any(p_masked[~visible])
    assert np.all(np.abs(p_recon) <= 1.0)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("decoder_heads", 3, r"config\.mae\.decoder_heads: 3 does not divide decoder_width 32"),
        ("decoder_depth", 0, r"config\.mae\.decoder_depth: 0 must be a positive integer"),
        ("decoder_width", 30, r"config\.mae\.decoder_width: 30 must be a multiple of 4"),
    ],
)
def test_bad_decoder_settings_are_one_line(field, value, message):
    kwargs = dict(decoder_width=32, decoder_depth=1, decoder_heads=2, image_size=IMAGE)
    kwargs[field] = value
    if field == "decoder_width":
        kwargs["decoder_heads"] = 2
    with pytest.raises(mae.MaeConfigError, match=message):
        mae.build_model(model_configs.get_config("tiny/8"), **kwargs)
