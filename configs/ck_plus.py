"""CK+, 7 classes (last three frames of each labelled sequence), subject-independent 10 folds.

  for k in $(seq 0 9); do
    python -m vit_se.main --config=configs/ck_plus.py --workdir=$W/ck_plus/fold$k \
        --config.fold=$k --config.pretrained_path=$CKPT/ViT-B_16-224.npz --config.manual_dir=$CKP
  done

Aims at the paper's 99.80% mean accuracy over folds (ViT+SE). Each fold trains on the nine other
folds' subjects and reports the held-out fold as `test`; the model reported is the final step's
(no selection on the test fold: val_split is empty).
"""

from vit_se import model_configs, pretrained
from vit_se.configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="B/16", recipe="authors", init="")
    config = common.get_config()
    config.dataset = "ck_plus"
    config.dataset_config = "7class"
    config.fold = 0  # 0..9; train and test splits are derived from it
    config.train_split = ""
    config.val_split = ""
    config.test_split = ""
    config.model = model_configs.get_config(arg.variant, use_se=True, se_reduction=4)
    config.augment.crop = "five_crop"
    config.eval_every = 1000
    config.checkpoint_every = 1000
    return pretrained.apply(common.apply_recipe(config, arg.recipe), arg.init)
