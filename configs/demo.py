"""CPU demo on built-in synthetic data: no download, no accelerator, a few minutes.

  python -m vit_se.main --config=configs/demo.py --workdir=/tmp/vit_se_demo

Writes a small RAF-DB tree of drawn faces in the original distribution layout to
WORKDIR/fake_data/ (or --config.manual_dir), builds it there with the real `raf_db` tfds builder,
trains a tiny ViT-SE through the real input pipeline, evaluates, checkpoints, exports and logs to
TensorBoard. Expected: validation accuracy at least 0.85 (chance is 1/7 = 0.14), printed at the
end; about two minutes on 2 CPU cores.
"""

from vit_se import model_configs
from vit_se.configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="tiny/8")
    config = common.get_config()
    config.dataset = "raf_db"
    config.dataset_config = "aligned"
    config.fake_data.update(enabled=True, num_train=700, num_test=140, seed=0)
    # RAF-DB has no validation split: select on a held-out tenth of train, report test.
    config.train_split = "train[:90%]"
    config.val_split = "train[90%:]"
    config.test_split = "test"

    config.model = model_configs.get_config(arg.variant)
    config.image_size = 48
    config.augment.crop = "random_resized"
    config.augment.crop_scale = (0.85, 1.0)
    config.augment.color_jitter = 0.2
    config.augment.grayscale = 0.1
    config.augment.cutout = 0
    config.augment.rotation = 5.0

    config.batch_size = 32
    config.num_train_steps = 1500
    config.optimizer = "adamw"
    config.learning_rate = 1e-3
    config.weight_decay = 0.05
    config.schedule = "cosine"
    config.warmup_steps = 50
    config.grad_clip_norm = 1.0
    config.eval_every = 500
    config.checkpoint_every = 500
    config.log_every = 50
    config.eval_batch_size = 64
    return config
