"""JAFFE, 7 classes, leave-one-poser-out 10 folds (one poser per fold).

  for k in $(seq 0 9); do
    python -m vit_se.main --config=configs/jaffe.py --workdir=$W/jaffe/fold$k \
        --config.fold=$k --config.pretrained_path=$CKPT/ViT-B_16-224.npz --config.manual_dir=$JAFFE
  done

Aims at the paper's 94.83% mean accuracy over folds (reached by the plain ViT there; run the SE
ablation with --config.model.use_se=False). The model reported is the final step's; the held-out
poser is only reported (`test`), never used for selection.
"""

from vit_se import model_configs, pretrained
from vit_se.configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="B/16", recipe="authors", init="")
    config = common.get_config()
    config.dataset = "jaffe"
    config.dataset_config = "face224"
    config.fold = 0  # 0..9: the held-out poser
    config.train_split = ""
    config.val_split = ""
    config.test_split = ""
    config.model = model_configs.get_config(arg.variant, use_se=True, se_reduction=4)
    config.augment.crop = "five_crop"
    config.eval_every = 200
    config.checkpoint_every = 200
    return pretrained.apply(common.apply_recipe(config, arg.recipe), arg.init)
