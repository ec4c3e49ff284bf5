"""Defaults shared by every vit_se training config; each dataset config starts from these.

Not a runnable config by itself: `get_config()` here has no dataset. Every field any part of
vit_se reads is declared here (optional ones as typed placeholders), so each can be set from the
command line (`--config.fold=3`) and a misspelt one fails at once.

The values follow the authors' later code (AdamW 1e-4, batch 8, 30 epochs, step decay x0.2 every
10 epochs) where the paper is silent. The vit_jax fine-tuning recipe (SGD momentum 0.9, lr 0.03,
warmup + cosine, clip 1.0, batch 512) is the config argument `recipe=vit_jax`:

  python -m vit_se.main --config=configs/raf_db.py:variant=S/16,recipe=vit_jax --workdir=...

`recipe=cpu` is a ViT-SE small enough to learn from scratch on two CPU cores in minutes (the
`cpu/6` variant at 48 px, AdamW, cosine; `cpu_recipe` below): a way to see the whole pipeline
learn real data before renting an accelerator, not a way to reach the paper's numbers. On the
real FER-2013 image folders a user reported PublicTest / PrivateTest accuracy 29 / 27% at step
500, 35 / 33% at 1,000 and 39 / 40% at 3,000 (13 epochs, about 35 minutes on 2 cores; the
majority class is 25%), as the issue tracker records; this repository has not re-measured it.

  python -m vit_se.main --config=configs/fer2013.py:recipe=cpu --workdir=$W/fer_cpu \
      --config.dataset_config=folders --config.manual_dir=$FER

Config files import this module as `vit_se.configs.common`: the top-level `configs/` folder is
installed as the package `vit_se.configs`, so a config loads from any folder and from an
installed wheel.
"""

import ml_collections

from vit_se import model_configs

RECIPES = ("authors", "vit_jax", "cpu")


def parse_arg(arg, **defaults):
    """The config argument, big_vision style: `variant=S/16,recipe=vit_jax` -> ConfigDict.

    `defaults` names every accepted key and its default (whose type converts the given string);
    a bare first item (`S/16`) sets the first key, so `configs/sfew.py:S/16` still works.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    keys = list(defaults)
    for i, item in enumerate(arg.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            if i or not keys:
                raise ValueError(f"config argument {item!r}: expected KEY=VALUE")
            key, value = keys[0], item
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config argument {key!r}: unknown; expected one of {', '.join(keys)}")
        out[key] = _convert(value.strip(), defaults[key], key)
    return out


def _convert(value, default, key):
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config argument {key}={value!r}: expected True or False")
        return value.lower() in ("true", "1")
    try:
        return type(default)(value) if default is not None else value
    except ValueError:
        raise ValueError(
            f"config argument {key}={value!r}: expected a {type(default).__name__}"
        ) from None


def apply_recipe(config, recipe):
    """Sets the optimisation recipe named by the config argument `recipe`."""
    if recipe not in RECIPES:
        raise ValueError(f"config argument recipe={recipe!r}: expected one of {', '.join(RECIPES)}")
    if recipe == "vit_jax":
        vit_jax_recipe(config)
    elif recipe == "cpu":
        cpu_recipe(config)
    return config


def get_config():
    """The defaults. Each field's comment is its documentation (`python -m vit_se.config_fields`
    prints them all): keep one on every field."""
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.seed = 0  # parameter init, shuffling, augmentation and dropout
    # 'classify': ViT-SE on a labelled dataset; 'mae': masked-autoencoder pretraining of the
    # backbone on unlabelled images (the `mae` fields below; configs/mae_faces.py).
    config.task = "classify"

    # --- Data: tfds builders of vit_se.datasets.registry, tfds split strings.

    config.dataset = ""  # builder name: jaffe, ck_plus, raf_db, sfew, fer2013, affectnet
    config.dataset_config = placeholder(str)  # the builder's config (e.g. aligned); unset: default
    config.data_dir = placeholder(
        str
    )  # tfds data dir (built datasets); unset: ~/tensorflow_datasets
    config.manual_dir = placeholder(str)  # the folder of your downloaded files, to build from
    config.train_split = "train"  # the split trained on
    # The split that selects the checkpoint ("best"); never the split you report.
    config.val_split = "validation"
    config.test_split = ""  # reported separately, never used for selection; empty to skip
    config.num_classes = 7  # 7 (the canonical classes) or 8 (with contempt)
    config.image_size = 224  # input side in pixels (a multiple of the patch size)
    # Face crop before caching, the same at inference (export.json): 'none', 'haar' (OpenCV Haar
    # box) or 'aligned' (MTCNN 5-point alignment); vit_se.datasets.faces. True/False as before.
    config.face_crop = "none"
    # Skip (and count) images a builder cannot decode instead of failing the build naming them.
    config.skip_bad_images = False
    # k-fold builders (CK+, JAFFE): a fold number replaces train_split / test_split.
    config.fold = placeholder(int)
    config.num_folds = 10  # folds of a k-fold builder (fold files shipped with it)
    # Built-in synthetic data (configs/demo.py): written to manual_dir in the dataset's own
    # layout before training; the other fields go to `<dataset>/fake_data.py`'s writer.
    config.fake_data = ml_collections.ConfigDict({"enabled": False})

    # --- Training augmentation (vit_se.input_pipeline.train_preprocess).

    config.augment = ml_collections.ConfigDict()
    config.augment.crop = "random_resized"  # 'random_resized', 'five_crop', 'none'
    config.augment.crop_scale = (0.8, 1.0)  # random_resized: (min, max) fraction of the area
    # five_crop: resize to this many pixels, then one of 5 image_size crops; unset: 256 at 224 px,
    # scaled to the image size (the authors' ratio).
    config.augment.resize_to = placeholder(int)
    config.augment.flip = True  # random horizontal flip
    config.augment.rotation = 0.0  # max degrees, either way
    config.augment.color_jitter = 0.4  # brightness/contrast/saturation strength; 0 disables
    config.augment.grayscale = 0.1  # probability of a grey copy
    config.augment.cutout = 16  # square side in pixels at image_size; 0 disables
    config.class_balanced = False  # resample so every class is equally frequent
    config.shuffle_buffer = 50_000  # examples; also bounds each class's buffer when balanced
    # Training splits stored in at most this many bytes are cached in memory (a face crop then
    # runs once per example); larger ones (AffectNet) are read again each epoch.
    config.cache_max_bytes = 2 * 2**30
    # Learn from the builder's vote distributions (`label_distribution`, FER+ probability mode)
    # when it has them; False: from the arg-max label.
    config.soft_targets = True
    config.prefetch = 2  # batches prepared ahead on the host

    # --- Model: a named variant (vit_se.model_configs.VARIANTS); pick another with the config
    # argument (--config=configs/sfew.py:S/16), set fields with --config.model.use_se=False.

    config.model = model_configs.get_config("B/16")
    config.pretrained_path = placeholder(str)  # an official vit_jax / big_vision .npz
    config.init_from = placeholder(str)  # a finished run's workdir: start from its params.npz

    # --- Optimisation (authors' defaults).

    config.batch_size = 8  # global, over all devices of all processes
    config.accum_steps = 1  # micro-batches per step; batch_size is split among them
    config.num_epochs = 30.0  # training length, unless num_train_steps is set
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.optimizer = "adamw"  # 'adamw' or 'sgd'
    config.learning_rate = 1e-4  # peak rate, reached after warmup_steps
    config.momentum = 0.9  # sgd only
    config.weight_decay = 0.05  # on kernels, position embedding and class token only
    config.schedule = "step"  # 'cosine', 'linear', 'step', 'constant'
    config.warmup_steps = 0  # linear warmup from 0
    config.step_decay_every_epochs = 10.0  # schedule 'step': decay every this many epochs
    config.step_decay_factor = 0.2  # schedule 'step': multiply the rate by this
    config.grad_clip_norm = 0.0  # clip the global gradient norm to this; 0 disables
    config.label_smoothing = 0.0  # optax.smooth_labels on the targets
    config.freeze_backbone_steps = 0  # train only head and SE for this many steps
    # A step whose loss or gradient norm is not finite: 'stop' ends the run at once (exit 3, the
    # last finite checkpoint stays the latest, nothing exported); 'skip_step' drops that update
    # (optax.apply_if_finite) and stops only after max_consecutive_skips such steps in a row.
    config.on_nonfinite = "stop"
    config.max_consecutive_skips = 10  # skip_step: stop after this many in a row

    # --- Parallelism.

    config.param_sharding = "replicate"  # 'replicate' (data parallel) or 'fsdp' (sharded by name)
    # Regex on the parameter path: 'Transformer/encoderblock_3/...' ('Transformer/encoderblock/...'
    # with model.scan, one stacked array per kernel for all blocks).
    config.fsdp_pattern = r".*"
    config.fsdp_min_size = 2**14  # fsdp: smaller arrays stay replicated

    # --- Loop, logging, checkpoints.

    config.eval_every = 500  # steps between evaluations of val_split and test_split
    config.eval_batch_size = 64  # global evaluation batch (rounded up to the device count)
    config.log_every = 50  # steps between progress lines and TensorBoard scalars
    config.checkpoint_every = 500  # steps between checkpoints (also at every evaluation)
    config.keep_checkpoints = 2  # newest checkpoints kept, besides the best
    config.selection_metric = "accuracy"  # on val_split; the best checkpoint is kept too
    config.profile_steps = 0  # > 0: capture a profiler trace of this many steps after step 10

    # --- Masked-autoencoder pretraining (task 'mae'; vit_se.mae, configs/mae_faces.py).

    config.mae = ml_collections.ConfigDict()
    config.mae.mask_ratio = 0.75  # fraction of patches hidden from the encoder, drawn per example
    # The light decoder: width, blocks, heads (He et al.: 512 x 8 with 16 heads for B/16; the
    # default is the encoder's row of model_configs.MAE_DECODERS).
    config.mae.decoder_width = placeholder(int)
    config.mae.decoder_depth = placeholder(int)  # decoder blocks; unset: MAE_DECODERS
    config.mae.decoder_heads = placeholder(int)  # decoder attention heads; unset: MAE_DECODERS
    config.mae.decoder_mlp_dim = placeholder(int)  # decoder MLP width; unset: 4 x decoder_width
    config.mae.norm_pix_loss = True  # targets: each patch's pixels normalised by its own mean/std
    # Unlabelled sources: builders' splits, 'NAME[/CONFIG][:SPLIT][@FACE_CROP],...' (labels
    # ignored; only train splits unless allow_test_splits).
    config.mae.datasets = ""
    config.mae.folder = placeholder(str)  # a plain folder of face images (searched recursively)
    config.mae.folder_face_crop = "none"  # the folder's face crop: 'none', 'haar', 'aligned'
    # One sub-folder per dataset named as its builder ($HOME/fer/raf_db, ...): the manual_dir of
    # each source builder not prepared in data_dir yet.
    config.mae.manual_root = placeholder(str)
    config.mae.allow_test_splits = False  # let mae.datasets name a split other than train
    config.mae.holdout_every = 20  # every n-th image of each source is held out (val/loss)
    config.mae.figure_faces = 6  # held-out faces in the reconstruction figure of each evaluation
    # Peak learning rate = base_learning_rate x batch_size / 256 (He et al.'s rule); AdamW with
    # beta2 0.95, warmup then cosine. learning_rate and schedule are not read for task 'mae'.
    config.mae.base_learning_rate = 1.5e-4
    config.mae.b2 = 0.95  # AdamW's second-moment decay for pretraining
    return config


def vit_jax_recipe(config):
    """Switches a config to vit_jax's fine-tuning recipe (SGD, warmup + cosine, clip 1.0)."""
    config.optimizer = "sgd"
    config.learning_rate = 0.03
    config.momentum = 0.9
    config.weight_decay = 0.0
    config.schedule = "cosine"
    config.warmup_steps = 500
    config.grad_clip_norm = 1.0
    config.batch_size = 512
    config.augment.crop = "random_resized"
    config.augment.color_jitter = 0.0
    config.augment.grayscale = 0.0
    config.augment.cutout = 0
    return config


def cpu_recipe(config):
    """Switches a config to a from-scratch ViT-SE that learns on two CPU cores (module docstring):
    the `cpu/6` variant (width 64, depth 6, 4 heads, MLP 256, patch 6: 65 tokens at 48 px)."""
    model = model_configs.get_config(
        "cpu/6", use_se=config.model.use_se, se_reduction=config.model.se_reduction
    )
    config.model = model
    config.pretrained_path = None
    config.image_size = 48
    config.optimizer = "adamw"
    config.learning_rate = 1e-3
    config.weight_decay = 0.05
    config.schedule = "cosine"
    config.warmup_steps = 300
    config.label_smoothing = 0.1
    config.grad_clip_norm = 1.0
    config.batch_size = 128
    config.num_train_steps = 3000
    config.eval_every = 500
    config.checkpoint_every = 500
    config.augment.crop = "random_resized"
    config.augment.crop_scale = (0.8, 1.0)
    config.augment.flip = True
    config.augment.rotation = 10.0
    config.augment.color_jitter = 0.0
    config.augment.grayscale = 0.0
    config.augment.cutout = 0
    return config
