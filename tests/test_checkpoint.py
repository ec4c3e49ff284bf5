"""Loading official checkpoint layouts: parity, full key sets, pos-emb resize, and errors.

Every layout loads into both layouts of the model: unrolled blocks (vit_jax's tree) and scanned
ones (`config.model.scan`, big_vision's stacked tree); what vit_se writes is always unrolled.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.interpolate
import tolerances
from official_layout import (
    big_vision_shapes,
    naflex_shapes,
    random_arrays,
    two_tower_shapes,
    vit_jax_shapes,
    vit_jax_to_big_vision,
    zero_views,
)
from reference_vit import forward

from vit_se import checkpoint, model_configs, models

# A small model in the official layout: width 32, 2 blocks, 2 heads, mlp 64, patch 4, 16 px.
TINY = dict(width=32, depth=2, heads=2, mlp=64, patch=4, image=16)


def _tiny_config(use_se, representation_size=None, scan=False):
    cfg = model_configs.get_config("tiny/4", use_se=use_se)
    cfg.representation_size = representation_size
    cfg.scan = scan
    return cfg


def _init(cfg, num_classes, image):
    model = models.build_model(cfg, num_classes)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3)))["params"]
    return model, params


def _save(path, arrays):
    np.savez(path, **arrays)
    return str(path)


def _images(n=3, image=16, seed=5):
    return np.random.default_rng(seed).uniform(-1, 1, (n, image, image, 3)).astype(np.float32)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("use_se", [False, True])
@pytest.mark.parametrize("representation_size", [None, 24])
@pytest.mark.grid
def test_vit_jax_npz_matches_numpy_reference(tmp_path, use_se, representation_size, scan):
    weights = random_arrays(vit_jax_shapes(**TINY, head=7, pre_logits=representation_size))
    if use_se:
        rep = representation_size or TINY["width"]
        se = {
            "se/reduce/kernel": (rep, rep // 4),
            "se/reduce/bias": (rep // 4,),
            "se/expand/kernel": (rep // 4, rep),
            "se/expand/bias": (rep,),
        }
        weights.update(random_arrays(se, seed=1, scale=0.5))
    path = _save(tmp_path / "vit.npz", weights)
    model, init = _init(_tiny_config(use_se, representation_size, scan), 7, 16)
    params = checkpoint.load_pretrained(path, init)
    x = _images()
    got = np.asarray(model.apply({"params": params}, x))
    want = forward(weights, x, use_se=use_se)
    tolerances.assert_close(got, want, tolerances.vit_sums(model, 16))  # float64 reference
    assert np.max(np.abs(want)) > 0.1  # the comparison is not between two zero vectors


@pytest.mark.parametrize("model_scan", [False, True])
@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.grid
def test_big_vision_npz_matches_numpy_reference(tmp_path, scan, model_scan):
    weights = random_arrays(vit_jax_shapes(**TINY, head=7), seed=3)
    bv = vit_jax_to_big_vision(weights, scan=scan)
    path = _save(tmp_path / "bv.npz", bv)
    model, init = _init(_tiny_config(False, scan=model_scan), 7, 16)
    params = checkpoint.load_pretrained(path, init)
    x = _images()
    got = np.asarray(model.apply({"params": params}, x))
    want = forward(bv, x, big_vision=True)
    tolerances.assert_close(got, want, tolerances.vit_sums(model, 16))  # float64 reference
    pe = params["Transformer"]["posembed_input"]["pos_embedding"]
    np.testing.assert_array_equal(pe[0, 0], 0.0)


def test_big_vision_file_with_a_class_row_loads_in_vit_jax_order(tmp_path):
    # big_vision's first vit.py concatenated the class token before adding 1 + grid^2 position
    # embeddings (big_vision's fix_old_checkpoints recognises them by that count).
    weights = random_arrays(vit_jax_shapes(**TINY, head=7), seed=3)
    old = vit_jax_to_big_vision(weights)
    old["params/pos_embedding"] = weights["Transformer/posembed_input/pos_embedding"]
    path = _save(tmp_path / "old_bv.npz", old)
    model, init = _init(_tiny_config(False), 7, 16)
    params = checkpoint.load_pretrained(path, init)
    x = _images()
    want = forward(weights, x)  # the vit_jax file of the same weights
    got = np.asarray(model.apply({"params": params}, x))
    tolerances.assert_close(got, want, tolerances.vit_sums(model, 16))  # float64 reference


def _expected_shapes(cfg, num_classes, image=224):
    model = models.build_model(cfg, num_classes)
    return jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3)))
    )["params"]


def _shapes(tree):
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)


# (name, width, depth, heads, mlp, patch)
OFFICIAL = [("B/16", 768, 12, 12, 3072, 16), ("L/16", 1024, 24, 16, 4096, 16)]


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name,width,depth,heads,mlp,patch", OFFICIAL)
@pytest.mark.parametrize(
    "family",
    ["i21k_with_pre_logits", "augreg", "i1k_finetuned", "big_vision", "big_vision_scan"],
)
@pytest.mark.grid
def test_full_official_key_set_loads(name, width, depth, heads, mlp, patch, family, scan):
    dims = dict(width=width, depth=depth, heads=heads, mlp=mlp, patch=patch)
    if family == "i21k_with_pre_logits":
        flat = vit_jax_shapes(**dims, head=21843, pre_logits=width)
    elif family == "augreg":
        flat = vit_jax_shapes(**dims, head=21843)
    elif family == "i1k_finetuned":
        flat = vit_jax_shapes(**dims, image=384, head=1000)
    else:
        flat = big_vision_shapes(**dims, head=1000, scan=family == "big_vision_scan")
    cfg = model_configs.get_config(name, use_se=True)
    cfg.scan = scan
    expected = _expected_shapes(cfg, 7)
    stacked = expected["Transformer"].get("encoderblock")
    assert (stacked is not None) == scan
    if scan:
        assert stacked["MlpBlock_0"]["Dense_0"]["kernel"].shape == (depth, width, mlp)
    params = checkpoint.params_from_flat(zero_views(flat), expected, path=family)
    assert _shapes(params) == _shapes(expected)
    loaded = checkpoint.flatten(params)
    # Every backbone weight came from the file (zero views), not from the initialiser.
    for key, value in loaded.items():
        if key.split("/")[0] in ("head", "se"):
            assert isinstance(value, jax.ShapeDtypeStruct), key
        else:
            assert isinstance(value, np.ndarray), key


def test_pre_logits_kept_when_configured():
    flat = vit_jax_shapes(768, 12, 12, 3072, 16, head=21843, pre_logits=768)
    cfg = model_configs.get_config("B/16", representation_size=768)
    expected = _expected_shapes(cfg, 7)
    params = checkpoint.params_from_flat(zero_views(flat), expected)
    assert isinstance(params["pre_logits"]["kernel"], np.ndarray)
    assert isinstance(params["head"]["kernel"], jax.ShapeDtypeStruct)


def test_head_loaded_when_class_count_matches(tmp_path):
    weights = random_arrays(vit_jax_shapes(**TINY, head=7))
    _, init = _init(_tiny_config(False), 7, 16)
    params = checkpoint.load_pretrained(_save(tmp_path / "c.npz", weights), init)
    np.testing.assert_array_equal(params["head"]["kernel"], weights["head/kernel"])
    _, init5 = _init(_tiny_config(False), 5, 16)
    params5 = checkpoint.load_pretrained(_save(tmp_path / "c.npz", weights), init5)
    np.testing.assert_array_equal(params5["head"]["kernel"], np.zeros((32, 5)))


def _direct_bilinear(grid, new):
    """Align-corners bilinear sampling of an old x old grid at new x new points."""
    old = grid.shape[0]
    axis = np.arange(old)
    interp = scipy.interpolate.RegularGridInterpolator((axis, axis), grid, method="linear")
    pts = np.linspace(0, old - 1, new)
    yy, xx = np.meshgrid(pts, pts, indexing="ij")
    return interp(np.stack([yy.ravel(), xx.ravel()], -1)).reshape(new * new, -1)


@pytest.mark.parametrize("new_grid", [24, 4])
def test_posemb_resize_keeps_class_row_and_is_bilinear(new_grid):
    rng = np.random.default_rng(0)
    pe = rng.normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
    out = checkpoint.resize_posemb(pe, 1 + new_grid * new_grid, has_cls=True)
    assert out.shape == (1, 1 + new_grid * new_grid, 8)
    np.testing.assert_array_equal(out[0, 0], pe[0, 0])
    want = _direct_bilinear(pe[0, 1:].reshape(14, 14, 8).astype(np.float64), new_grid)
    tolerances.assert_close(out[0, 1:], want, n=4)  # 4 bilinear taps, float64 reference


def test_loading_224_checkpoint_into_384_model_resizes(tmp_path):
    flat = vit_jax_shapes(**{**TINY, "image": 16}, head=7)
    weights = random_arrays(flat)
    _, init = _init(_tiny_config(False), 7, 24)  # 4x4 grid -> 6x6 grid
    params = checkpoint.load_pretrained(_save(tmp_path / "c.npz", weights), init)
    pe = params["Transformer"]["posembed_input"]["pos_embedding"]
    assert pe.shape == (1, 37, 32)
    np.testing.assert_array_equal(
        pe[0, 0], weights["Transformer/posembed_input/pos_embedding"][0, 0]
    )


# ----- bad checkpoints -----


def test_missing_file(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"nope\.npz: cannot read checkpoint"):
        checkpoint.load_npz(str(tmp_path / "nope.npz"))


def test_not_an_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("hello")
    message = (
        r"notes\.npz: not an \.npz checkpoint \(the file starts with b'hello'; expected a zip\)"
    )
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_npz(str(path))
    path.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match=r"\(the file is empty; expected a zip\)"):
        checkpoint.load_npz(str(path))


def test_npz_that_is_not_a_vit(tmp_path):
    path = _save(tmp_path / "other.npz", {"conv1/weight": np.zeros(3)})
    _, init = _init(_tiny_config(False), 7, 16)
    with pytest.raises(checkpoint.CheckpointError, match=r"other\.npz: not a ViT checkpoint"):
        checkpoint.load_pretrained(path, init)


def test_other_width_or_depth_is_one_line(tmp_path):
    weights = random_arrays(vit_jax_shapes(width=64, depth=3, heads=2, mlp=128, patch=4, image=16))
    path = _save(tmp_path / "wide.npz", weights)
    _, init = _init(_tiny_config(False), 7, 16)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_pretrained(path, init)
    msg = str(e.value)
    assert "\n" not in msg
    assert "width 64, depth 3, patch 4" in msg and "expects width 32, depth 2, patch 4" in msg


@pytest.mark.parametrize("scan", [False, True])
def test_every_mismatched_key_is_reported_in_one_error(tmp_path, scan):
    # A scanned model's errors name the official per-block keys too.
    weights = random_arrays(vit_jax_shapes(**TINY, head=7))
    del weights["Transformer/encoderblock_1/LayerNorm_2/scale"]
    del weights["cls"]
    weights["Transformer/extra/kernel"] = np.zeros((2, 2), np.float32)
    weights["Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"] = np.zeros(65, np.float32)
    path = _save(tmp_path / "broken.npz", weights)
    _, init = _init(_tiny_config(False, scan=scan), 7, 16)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_pretrained(path, init)
    msg = str(e.value)
    assert "broken.npz (vit_jax) does not fit the model" in msg
    assert "missing: Transformer/encoderblock_1/LayerNorm_1/scale (32,); cls (1, 1, 32)" in msg
    assert "unexpected: Transformer/extra/kernel (2, 2)" in msg
    assert (
        "wrong shape: Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias checkpoint (65,) "
        "vs model (64,)" in msg
    )


def test_map_file_into_a_class_token_model_is_one_line_naming_both(tmp_path):
    bv = vit_jax_to_big_vision(random_arrays(vit_jax_shapes(**TINY, head=7)))
    del bv["params/cls"]
    bv["params/MAPHead_0/probe"] = np.zeros((1, 1, 32), np.float32)
    path = _save(tmp_path / "map.npz", bv)
    _, init = _init(_tiny_config(False), 7, 16)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_pretrained(path, init)
    assert str(e.value) == (
        f"{path}: the file pools by 'map' (MAPHead_0), the model by 'token' "
        "(set config.model.classifier='map')"
    )


# ----- big_vision pooling ('map', 'gap'), sincos2d position embeddings, SigLIP files -----

# A tiny text tower for two-tower files: width 16, 2 blocks, 2 heads, mlp 32.
TINY_TEXT = dict(text=(16, 2, 2, 32), vocab=50, seq_len=8)
POOLS = {"tok": "token", "gap": "gap", "map": "map"}


def _bv_config(pool="tok", posemb="learn", rep_size=None, scan=False, impl="auto", use_se=False):
    cfg = _tiny_config(use_se, rep_size, scan)
    cfg.classifier, cfg.posemb, cfg.impl = POOLS[pool], posemb, impl
    return cfg


BIG_VISION_LAYOUTS = {
    "map": dict(pool="map"),
    "map scan": dict(pool="map", scan=True),
    "map sincos2d": dict(pool="map", posemb="sincos2d"),
    "gap sincos2d pre_logits": dict(pool="gap", posemb="sincos2d", rep_size=24),
    "tok sincos2d": dict(pool="tok", posemb="sincos2d"),
}


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
@pytest.mark.parametrize("model_scan", [False, True])
@pytest.mark.parametrize("layout", list(BIG_VISION_LAYOUTS))
@pytest.mark.grid
def test_big_vision_layouts_match_numpy_reference(tmp_path, layout, model_scan, impl):
    kw = BIG_VISION_LAYOUTS[layout]
    weights = random_arrays(big_vision_shapes(**TINY, head=7, **kw), seed=3)
    path = _save(tmp_path / "bv.npz", weights)
    cfg = _bv_config(kw["pool"], kw.get("posemb", "learn"), kw.get("rep_size"), model_scan, impl)
    model, init = _init(cfg, 7, 16)
    params = checkpoint.load_pretrained(path, init)
    x = _images()
    got = np.asarray(model.apply({"params": params}, x))
    want = forward(weights, x, big_vision=True)
    assert np.max(np.abs(want)) > 0.1
    tolerances.assert_close(got, want, tolerances.vit_sums(model, 16))  # float64 reference


@pytest.mark.parametrize("impl", ["plain", "cpu_lean"])
@pytest.mark.parametrize("model_scan", [False, True])
@pytest.mark.parametrize("scan", [False, True])  # SigLIP's files / SigLIP 2's (scanned) files
@pytest.mark.grid
def test_two_tower_file_loads_its_image_tower(tmp_path, caplog, scan, model_scan, impl):
    weights = random_arrays(two_tower_shapes(**TINY, scan=scan, **TINY_TEXT), seed=4)
    path = _save(tmp_path / "siglip.npz", weights)
    model, init = _init(_bv_config("map", scan=model_scan, impl=impl), 7, 16)
    with caplog.at_level(logging.INFO):
        params = checkpoint.load_pretrained(path, init)
    tower_lines = [r.getMessage() for r in caplog.records if "two-tower" in r.getMessage()]
    assert tower_lines == [
        f"{path}: a two-tower (image-text) file; reading its image tower params/img/, not "
        f"params/b, params/t, params/txt/ ({len([k for k in weights if 'txt/' in k])} arrays, "
        f"{sum(v.size for k, v in weights.items() if 'txt/' in k):,} parameters)"
    ]
    # The image tower has no head: the classifier is the model's own (zeros). Give both passes
    # the same random one.
    np.testing.assert_array_equal(params["head"]["kernel"], np.zeros((32, 7)))
    rng = np.random.default_rng(9)
    head = {
        "kernel": rng.normal(0, 0.5, (32, 7)).astype(np.float32),
        "bias": rng.normal(0, 0.5, 7).astype(np.float32),
    }
    params["head"] = head
    x = _images()
    got = np.asarray(model.apply({"params": params}, x))
    want = forward(weights, x, big_vision=True, head=head)
    assert np.max(np.abs(want)) > 0.1
    tolerances.assert_close(got, want, tolerances.vit_sums(model, 16))  # float64 reference


def test_text_tower_is_never_read(tmp_path):
    weights = random_arrays(two_tower_shapes(**TINY, scan=True, **TINY_TEXT))
    flat = checkpoint.load_npz(_save(tmp_path / "siglip2.npz", weights))
    for key, value in flat.items():
        if key.startswith("params/txt/"):
            assert isinstance(value, checkpoint.Unread), key
            assert value.shape == weights[key].shape and value.dtype == np.float32
        else:
            np.testing.assert_array_equal(value, weights[key])


def test_image_tower_head_into_the_joint_embedding_is_dropped(tmp_path, caplog):
    weights = random_arrays(two_tower_shapes(**TINY, image_head=7, **TINY_TEXT))
    path = _save(tmp_path / "lit.npz", weights)
    _, init = _init(_bv_config("map"), 7, 16)
    with caplog.at_level(logging.INFO):
        params = checkpoint.load_pretrained(path, init)
    np.testing.assert_array_equal(params["head"]["kernel"], np.zeros((32, 7)))  # fresh, zeros
    assert "not loading params/img/head (32, 7), the image tower's projection" in caplog.text


def test_map_file_position_embedding_is_resized_without_a_class_row(tmp_path):
    weights = random_arrays(big_vision_shapes(**TINY, head=7, pool="map"))
    _, init = _init(_bv_config("map"), 7, 24)  # 4x4 grid -> 6x6 grid
    params = checkpoint.load_pretrained(_save(tmp_path / "m.npz", weights), init)
    pe = params["Transformer"]["posembed_input"]["pos_embedding"]
    assert pe.shape == (1, 36, 32)
    old = weights["params/pos_embedding"][0].reshape(4, 4, 32)
    tolerances.assert_close(
        pe[0].reshape(6, 6, 32)[[0, 0, -1, -1], [0, -1, 0, -1]],
        old[[0, 0, -1, -1], [0, -1, 0, -1]],
        n=4,
    )  # corners kept
    # Two passes of two-term weighted sums (bilinear), in float32.
    tolerances.assert_close(pe[0], _direct_bilinear(old.astype(np.float64), 6), n=4)


# (file, variant, image size, scanned file, text tower (width, depth, heads, mlp), vocab)
SIGLIP_FILES = [
    ("siglip2_b16_224.npz", "B/16", 224, True, (768, 12, 12, 3072), 256_000),
    ("siglip2_so400m16_256.npz", "So400m/16", 256, True, (1152, 27, 16, 4304), 256_000),
    ("siglip2_g-opt16_256.npz", "g-opt/16", 256, True, (1152, 27, 16, 4304), 256_000),
    ("webli_en_so400m_224_57633886.npz", "So400m/14", 224, False, (1152, 27, 16, 4304), 32_000),
    ("webli_en_so400m_384_58765454.npz", "So400m/14", 378, False, (1152, 27, 16, 4304), 32_000),
]


@pytest.mark.parametrize("model_scan", [False, True])
@pytest.mark.parametrize("name,variant,image,scan,text,vocab", SIGLIP_FILES)
@pytest.mark.grid
def test_full_siglip_key_sets_load(name, variant, image, scan, text, vocab, model_scan):
    width, depth, heads, mlp, patch = model_configs.VARIANTS[variant]
    embed = 1536 if variant.startswith("g-opt") else width  # g-opt's text tower projects up
    # So400m/14 at 384 px: the VALID patch convolution sees 27 x 14 = 378 px of it (729 tokens).
    file_image = 384 if image == 378 else image
    flat = two_tower_shapes(
        width, depth, heads, mlp, patch, file_image, scan, text, vocab, embed_dim=embed
    )
    assert flat["params/img/pos_embedding"] == (1, (image // patch) ** 2, width)
    cfg = model_configs.get_config(variant, use_se=True)
    cfg.classifier, cfg.scan = "map", model_scan
    expected = _expected_shapes(cfg, 7, image)
    params = checkpoint.params_from_flat(zero_views(flat), expected, path=name)
    assert _shapes(params) == _shapes(expected)
    for key, value in checkpoint.flatten(params).items():
        if key.split("/")[0] in ("head", "se"):
            assert isinstance(value, jax.ShapeDtypeStruct), key
        else:
            assert isinstance(value, np.ndarray), key


@pytest.mark.parametrize("pool", ["map", "gap"])
def test_full_big_vision_b16_sincos2d_key_set_loads(pool):
    flat = big_vision_shapes(768, 12, 12, 3072, 16, head=1000, pool=pool, posemb="sincos2d")
    assert not any("pos_embedding" in k for k in flat)
    cfg = model_configs.get_config("B/16")
    cfg.classifier, cfg.posemb = pool, "sincos2d"
    expected = _expected_shapes(cfg, 7)
    assert "posembed_input" not in expected["Transformer"]
    params = checkpoint.params_from_flat(zero_views(flat), expected)
    assert _shapes(params) == _shapes(expected)


def test_naflex_file_is_refused_in_one_line():
    flat = zero_views(naflex_shapes(768, 12, 12, 3072, 16))
    expected = _expected_shapes(_bv_config("map"), 7, 16)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.params_from_flat(flat, expected, path="siglip2_b16_naflex.npz")
    assert str(e.value).startswith(
        "siglip2_b16_naflex.npz: a NaFlex image tower (embedding/kernel (768, 768), "
        "pos_embedding (16, 16, 768): patches embedded by a Dense layer"
    )
    assert "naflex_vit.py" in str(e.value) and "\n" not in str(e.value)


def test_text_tower_without_an_image_tower_is_refused_in_one_line():
    flat = zero_views(two_tower_shapes(**TINY, **TINY_TEXT))
    text_only = {k: v for k, v in flat.items() if not k.startswith("params/img/")}
    expected = _expected_shapes(_bv_config("map"), 7, 16)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.params_from_flat(text_only, expected, path="txt.npz")
    assert str(e.value) == (
        "txt.npz: a two-tower (image-text) file without an image tower: it holds params/b, "
        "params/t, params/txt but no params/img/, the image model vit_se fine-tunes"
    )
    # The text model saved on its own: no embedding/kernel, text_transformer's names.
    alone = {"params/" + k[len("params/txt/") :]: v for k, v in text_only.items() if "txt/" in k}
    with pytest.raises(checkpoint.CheckpointError, match=r"^txt\.npz: a text tower \(Embed_0"):
        checkpoint.params_from_flat(alone, expected, path="txt.npz")


def test_g_opt_file_on_a_b16_config_is_the_one_line_variant_error():
    flat = zero_views(two_tower_shapes(1536, 40, 16, 6144, 16, 256, True, (1152, 27, 16, 4304)))
    expected = _expected_shapes(model_configs.get_config("B/16"), 7)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.params_from_flat(flat, expected, path="siglip2_g-opt16_256.npz")
    assert str(e.value) == (
        "siglip2_g-opt16_256.npz: checkpoint is a ViT g-opt/16 (width 1536, depth 40, patch 16); "
        "the config expects width 768, depth 12, patch 16"
    )


@pytest.mark.parametrize(
    "file_kw,model_kw,message",
    [
        (
            dict(pool="map", posemb="sincos2d"),
            dict(pool="map"),
            "the file's position embedding is 'sincos2d' (none stored), the model's 'learn' "
            "(set config.model.posemb='sincos2d')",
        ),
        (
            dict(pool="gap"),
            dict(pool="gap", posemb="sincos2d"),
            "the file's position embedding is 'learn' (pos_embedding (1, 16, 32)), the model's "
            "'sincos2d' (set config.model.posemb='learn')",
        ),
        (
            dict(pool="gap", posemb="sincos2d"),
            dict(pool="map"),
            "the file pools by 'gap' (neither 'cls' nor MAPHead_0), the model by 'map' (set "
            "config.model.classifier='gap'); the file's position embedding is 'sincos2d' (none "
            "stored), the model's 'learn' (set config.model.posemb='sincos2d')",
        ),
        (
            dict(pool="tok"),
            dict(pool="map"),
            "the file pools by 'token' (class token 'cls'), the model by 'map' (set "
            "config.model.classifier='token')",
        ),
    ],
)
def test_pooling_or_posemb_mismatch_is_one_line_naming_both(tmp_path, file_kw, model_kw, message):
    path = _save(tmp_path / "bv.npz", random_arrays(big_vision_shapes(**TINY, head=7, **file_kw)))
    _, init = _init(_bv_config(**model_kw), 7, 16)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_pretrained(path, init)
    assert str(e.value) == f"{path}: {message}"


def test_inspect_names_tower_pooling_posemb_and_resolution(tmp_path, capsys):
    siglip2 = zero_views(two_tower_shapes(768, 12, 12, 3072, 16, 224, True, vocab=256_000))
    info = checkpoint.describe(siglip2)
    assert (info["variant"], info["format"], info["tower"]) == ("B/16", "big_vision", "params/img/")
    assert (info["classifier"], info["posemb"], info["image_size"]) == ("map", "learn", 224)
    assert info["head_classes"] is None and info["grid"] == (14, 14)
    assert info["not_read"].startswith("params/b, params/t, params/txt/ (")
    # The image tower's own count: B/16's 86,567,656 without cls and the 1000-class head
    # (768 + 769,000), with the MAP head (probe, attention, LayerNorm, MLP: 7,087,104).
    assert info["num_params"] == 86_567_656 - 768 - 768 * 1000 - 1000 - 768 + 7_087_104
    sincos = big_vision_shapes(384, 12, 6, 1536, 16, pool="gap", posemb="sincos2d", rep_size=384)
    info = checkpoint.describe(zero_views(sincos))
    assert (info["variant"], info["classifier"], info["posemb"]) == ("S/16", "gap", "sincos2d")
    assert info["image_size"] is None and info["representation_size"] == 384
    weights = random_arrays(two_tower_shapes(**TINY, scan=True, **TINY_TEXT))
    path = _save(tmp_path / "siglip2_tiny.npz", weights)
    assert checkpoint.inspect_main([path]) == 0
    out = capsys.readouterr().out
    for line in (
        "tower                params/img/",
        "classifier           map",
        "posemb               learn",
        "image_size           16",
    ):
        assert line in out, out
    sincos_path = _save(
        tmp_path / "sincos.npz",
        random_arrays(big_vision_shapes(**TINY, pool="gap", posemb="sincos2d")),
    )
    assert checkpoint.inspect_main([sincos_path]) == 0
    assert (
        "image_size           not stored (sincos2d: computed for any size)"
        in capsys.readouterr().out
    )


def test_exported_map_sincos2d_model_reloads_identically(tmp_path):
    model, params = _init(_bv_config("map", "sincos2d", use_se=True), 7, 16)
    params = jax.tree_util.tree_map(lambda p: np.asarray(p) + 0.1, params)
    path = tmp_path / "params.npz"
    checkpoint.save_npz(params, str(path))
    again = checkpoint.load_pretrained(str(path), params)
    leaves = jax.tree_util.tree_leaves
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(params)
    for a, b in zip(leaves(params), leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


# ----- inspect -----


def test_inspect_reports_the_variant(tmp_path, capsys):
    b16 = vit_jax_shapes(768, 12, 12, 3072, 16, head=21843, pre_logits=768)
    info = checkpoint.describe(zero_views(b16))
    assert info["variant"] == "B/16" and info["format"] == "vit_jax"
    assert info["grid"] == (14, 14) and info["image_size"] == 224
    assert info["head_classes"] == 21843 and info["representation_size"] == 768
    l16 = checkpoint.describe(zero_views(big_vision_shapes(1024, 24, 16, 4096, 16, scan=True)))
    assert (l16["variant"], l16["format"], l16["depth"], l16["heads"]) == (
        "L/16",
        "big_vision",
        24,
        16,
    )
    path = _save(tmp_path / "tiny.npz", random_arrays(vit_jax_shapes(**TINY, head=7)))
    assert checkpoint.inspect_main([path]) == 0
    out = capsys.readouterr().out
    assert "variant              tiny/4" in out and "head_classes         7" in out
    assert checkpoint.inspect_main([str(tmp_path / "missing.npz")]) == 1


def test_save_npz_round_trips_and_leaves_no_temp_file(tmp_path):
    model, params = _init(_tiny_config(True), 7, 16)
    path = tmp_path / "out" / "params.npz"
    checkpoint.save_npz(params, str(path))
    assert [p.name for p in path.parent.iterdir()] == ["params.npz"]
    again = checkpoint.load_pretrained(str(path), params)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(params), leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def _official_linen_keys(use_se=True):
    """The key set vit_se writes: vit_jax's linen names (per block), from the published layout."""
    rename = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0"}
    rename.update({"LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"})
    keys = {
        "/".join(rename.get(p, p) for p in k.split("/")): shape
        for k, shape in vit_jax_shapes(**TINY, head=7).items()
    }
    if use_se:
        keys.update({"se/reduce/kernel": (32, 8), "se/reduce/bias": (8,)})
        keys.update({"se/expand/kernel": (8, 32), "se/expand/bias": (32,)})
    return keys


@pytest.mark.slow
def test_scanned_params_export_to_the_official_layout_and_reload_identically(tmp_path):
    model, params = _init(_tiny_config(True, scan=True), 7, 16)
    assert params["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (2, 32)
    path = tmp_path / "params.npz"
    checkpoint.save_npz(params, str(path))
    with np.load(path) as z:
        written = {k: tuple(z[k].shape) for k in z.files}
    assert written == _official_linen_keys()
    # Back into the scanned model: identical arrays.
    again = checkpoint.load_pretrained(str(path), params)
    leaves = jax.tree_util.tree_leaves
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(params)
    for a, b in zip(leaves(params), leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    # And into the unrolled model: the same logits.
    unrolled, init = _init(_tiny_config(True), 7, 16)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # non-zero head
    checkpoint.save_npz(params, str(path))
    loaded = checkpoint.load_pretrained(str(path), init)
    x = _images()
    want = model.apply({"params": params}, x)
    assert np.max(np.abs(want)) > 0.1
    # Every weight shifted by 0.1: the head's sum cancels, so its terms set the scale.
    got, sown = unrolled.apply({"params": loaded}, x, mutable=["intermediates"])
    scale = tolerances.terms_scale(sown["intermediates"]["pre_logits"][0], loaded["head"]["kernel"])
    tolerances.assert_close(got, want, tolerances.vit_sums(unrolled, 16), scale=scale)


def test_stack_and_unstack_blocks_are_inverse():
    _, params = _init(_tiny_config(False), 7, 16)
    stacked = checkpoint.stack_blocks(params)
    assert checkpoint.is_scanned(stacked) and not checkpoint.is_scanned(params)
    assert stacked["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_1"]["kernel"].shape == (
        2,
        64,
        32,
    )
    assert set(stacked["Transformer"]) == {"encoderblock", "encoder_norm", "posembed_input"}
    back = checkpoint.unstack_blocks(stacked)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
    assert checkpoint.unstack_blocks(params) is params
