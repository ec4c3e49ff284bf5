"""Defaults shared by every vit_se training config; each dataset config starts from these.

Not a runnable config by itself: `get_config()` here has no dataset. The values follow the
authors' later code (AdamW 1e-4, batch 8, 30 epochs, step decay x0.2 every 10 epochs) where the
paper is silent; the vit_jax fine-tuning recipe (SGD momentum 0.9, lr 0.03, warmup + cosine,
clip 1.0, batch 512) is one `--config.optimizer=sgd ...` away and written out in `vit_jax_recipe`.
"""

import ml_collections

from vit_se import model_configs


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Data: a tfds builder name from vit_se.datasets.registry and split strings (tfds syntax).
    config.dataset = ""
    config.dataset_config = ml_collections.config_dict.placeholder(str)
    config.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data dir
    config.manual_dir = ml_collections.config_dict.placeholder(str)  # where the user's files are
    config.train_split = "train"
    # The split that selects the checkpoint ("best"); never the split you report.
    config.val_split = "validation"
    # Reported separately, never used for selection; empty to skip.
    config.test_split = ""
    config.num_classes = 7
    config.image_size = 224
    config.face_crop = False

    config.augment = ml_collections.ConfigDict()
    config.augment.crop = "random_resized"  # 'random_resized', 'five_crop', 'none'
    config.augment.crop_scale = (0.8, 1.0)
    config.augment.resize_to = 256  # five_crop: resize to this, then one of 5 crops
    config.augment.flip = True
    config.augment.rotation = 0.0  # max degrees, either way
    config.augment.color_jitter = 0.4  # brightness/contrast/saturation strength; 0 disables
    config.augment.grayscale = 0.1  # probability
    config.augment.cutout = 16  # square side in pixels at image_size; 0 disables
    config.class_balanced = False  # resample so every class is equally frequent
    config.shuffle_buffer = 50_000
    config.prefetch = 2

    # Model: a named variant (vit_se.model_configs.VARIANTS); pick another with the config
    # argument, e.g. --config=configs/sfew.py:S/16, and set fields with --config.model.use_se=False.
    config.model = model_configs.get_config("B/16")
    config.pretrained_path = ml_collections.config_dict.placeholder(str)  # vit_jax/big_vision npz
    config.init_from = ml_collections.config_dict.placeholder(str)  # an earlier run's workdir

    # Optimisation (authors' defaults).
    config.batch_size = 8  # global, over all devices of all processes
    config.accum_steps = 1  # micro-batches per step; batch_size is split among them
    config.num_epochs = 30.0
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.optimizer = "adamw"  # 'adamw' or 'sgd'
    config.learning_rate = 1e-4
    config.momentum = 0.9  # sgd only
    config.weight_decay = 0.05
    config.schedule = "step"  # 'cosine', 'linear', 'step', 'constant'
    config.warmup_steps = 0
    config.step_decay_every_epochs = 10.0
    config.step_decay_factor = 0.2
    config.grad_clip_norm = 0.0  # 0 disables
    config.label_smoothing = 0.0
    config.freeze_backbone_steps = 0  # train only head and SE for this many steps

    # Parallelism: 'replicate' (data parallel) or 'fsdp' (parameters sharded by name rule).
    config.param_sharding = "replicate"
    config.fsdp_pattern = r".*"  # regex on the parameter path ('Transformer/encoderblock_3/...')
    config.fsdp_min_size = 2**14  # smaller arrays stay replicated

    # Loop, logging, checkpoints.
    config.eval_every = 500
    config.eval_batch_size = 64
    config.log_every = 50
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    config.selection_metric = "accuracy"  # on val_split; the best checkpoint is kept too
    config.profile_steps = 0  # > 0: capture a profiler trace of this many steps after step 10
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
