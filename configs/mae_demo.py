"""CPU demo of masked-autoencoder pretraining on built-in synthetic faces: no download, minutes.

  python -m vit_se.main --config=configs/mae_demo.py --workdir=/tmp/vit_se_mae

Writes the demo's RAF-DB tree of drawn faces (configs/demo.py's, the same images) to
WORKDIR/fake_data/, builds it with the real `raf_db` builder and pretrains the tiny ViT of the
demo as a masked autoencoder on its training split, labels ignored (one face in 20 held out for
`val/loss`). Expected: the held-out reconstruction loss falls from about 1 (normalised targets)
to clearly below it, printed at the end with WORKDIR/encoder.npz; a fine-tune of the demo then
starts from it:

  python -m vit_se.main --config=configs/demo.py --workdir=/tmp/vit_se_demo_mae \
      --config.init_from=/tmp/vit_se_mae --seeds=0,1,2

README, "Face-domain pretraining", compares that with the demo from random weights.
"""

from vit_se import model_configs
from vit_se.configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="tiny/8")
    config = common.get_config()
    config.task = "mae"
    # configs/demo.py's synthetic RAF-DB (tests/test_mae_train.py keeps the two equal): written,
    # built, and its training split read without labels.
    config.dataset = "raf_db"
    config.dataset_config = "aligned"
    config.fake_data.update(enabled=True, num_train=700, num_test=140, seed=0)
    config.train_split = ""
    config.val_split = ""
    config.test_split = ""
    config.mae.datasets = "raf_db/aligned:train"

    config.model = model_configs.get_config(arg.variant, use_se=False)
    config.image_size = 48
    config.augment.crop = "random_resized"
    config.augment.crop_scale = (0.5, 1.0)
    config.augment.flip = True
    config.augment.rotation = 0.0
    config.augment.color_jitter = 0.0
    config.augment.grayscale = 0.0
    config.augment.cutout = 0

    config.batch_size = 64
    config.num_train_steps = 1500
    config.optimizer = "adamw"
    config.weight_decay = 0.05
    # 1.5e-4 x 64 / 256 is the paper's rule at batch 64; a tiny model from scratch wants more.
    config.mae.base_learning_rate = 4e-3
    config.warmup_steps = 100
    config.selection_metric = "loss"
    config.eval_every = 500
    config.checkpoint_every = 500
    config.log_every = 50
    config.eval_batch_size = 64
    config.mae.figure_faces = 6
    return config
