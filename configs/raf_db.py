"""RAF-DB basic, 7 classes, ViT-B/16 + SE from the ImageNet-21k -> 1k B/16 checkpoint.

  python -m vit_se.main --config=configs/raf_db.py --workdir=$W/raf_db \
      --config.pretrained_path=$CKPT/ViT-B_16-224.npz --config.manual_dir=$RAF

Aims at the paper's 87.22% test accuracy (ViT+SE). Selection uses a held-out tenth of the official
train split; the official test split is only reported.
"""

from vit_se import model_configs, pretrained
from vit_se.configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="B/16", recipe="authors", init="")
    config = common.get_config()
    config.dataset = "raf_db"
    config.dataset_config = "aligned"
    config.train_split = "train[:90%]"
    config.val_split = "train[90%:]"
    config.test_split = "test"
    config.model = model_configs.get_config(arg.variant, use_se=True, se_reduction=4)
    config.augment.crop = "five_crop"
    config.eval_every = 1000
    config.checkpoint_every = 1000
    return pretrained.apply(common.apply_recipe(config, arg.recipe), arg.init)
