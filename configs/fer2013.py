"""FER-2013, 7 classes, ViT-B/16 + SE: the paper's intermediate stage before SFEW.

  python -m vit_se.main --config=configs/fer2013.py --workdir=$W/fer2013 \
      --config.pretrained_path=$CKPT/ViT-B_16-224.npz --config.manual_dir=$FER

Selection on PublicTest, report PrivateTest (the usual protocol). The paper gives no FER-2013
number of its own; ViT-B/16 fine-tunes typically reach about 70-73% on PrivateTest. FER+ labels
(Barsoum et al. 2016): `--config.dataset_config=ferplus` (plurality vote), `ferplus_majority`, or
`ferplus_probability` (the trainer learns from the normalised votes, `config.soft_targets`).
"""

from vit_se import model_configs, pretrained
from vit_se.configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="B/16", recipe="authors", init="")
    config = common.get_config()
    config.dataset = "fer2013"
    config.dataset_config = "csv"
    config.train_split = "train"
    config.val_split = "public_test"
    config.test_split = "private_test"
    config.model = model_configs.get_config(arg.variant, use_se=True, se_reduction=4)
    config.augment.crop = "five_crop"
    config.num_epochs = 10.0
    config.step_decay_every_epochs = 4.0
    config.eval_every = 2000
    config.checkpoint_every = 2000
    return pretrained.apply(common.apply_recipe(config, arg.recipe), arg.init)
