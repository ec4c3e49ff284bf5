"""Masked-autoencoder pretraining (He et al. 2021) of the ViT-SE backbone on unlabelled faces.

  python -m vit_se.main --config=configs/mae_faces.py --workdir=$W/mae_faces \
      --config.mae.manual_root=$HOME/fer [--config.pretrained_path=$CKPT/ViT-B_16-224.npz]

Pretrains on the training splits of FER-2013, AffectNet and RAF-DB (labels ignored; their test
splits never, unless --config.mae.allow_test_splits=True) and, with --config.mae.folder, on a
plain folder of face images, each source with its own face crop
(`--config.mae.datasets='NAME[/CONFIG][:SPLIT][@FACE_CROP],...'`; `vit_se.mae_sources`). Every
20th image of each source is held out: `val/loss` is the mean squared error of the masked
patches' normalised pixels on them. Result: WORKDIR/encoder.npz, an official-layout ViT without
head, from which a fine-tune starts with a fresh SE block and head:

  python -m vit_se.main --config=configs/raf_db.py --workdir=$W/raf_from_mae \
      --config.init_from=$W/mae_faces --seeds=0,1,2

What it should reach: with normalised targets the loss starts near 1 (each target patch has unit
variance and a fresh decoder predicts about its mean) and falls as the decoder learns faces. No
B/16 run on the real databases has been measured here; the CPU-scale figures (step speed, the
demo comparison) are in benchmarks/README.md, "MAE pretraining".

Config argument: `variant=` (the encoder; the decoder follows `model_configs.MAE_DECODERS`). The
optimisation is MAE's own: AdamW beta2 0.95, peak rate `mae.base_learning_rate x batch_size /
256` (1.5e-4 x 4096 / 256 = 2.4e-3 in the paper), warmup then cosine; `learning_rate` and
`schedule` are not read. The paper trains 800-1600 epochs with a 40-epoch warmup at batch 4096:
set num_epochs and warmup_steps for your data and slice.
"""

from vit_se import model_configs
from vit_se.configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="B/16")
    config = common.get_config()
    config.task = "mae"
    # Unlabelled sources replace dataset and splits; val/loss is the held-out part.
    config.dataset = ""
    config.train_split = ""
    config.val_split = ""
    config.test_split = ""
    config.mae.datasets = "fer2013/csv:train,affectnet/7class:train,raf_db/aligned:train"

    config.model = model_configs.get_config(arg.variant, use_se=False)
    config.image_size = 224
    # MAE's light augmentation (its main_pretrain.py: RandomResizedCrop(0.2, 1) and a flip).
    config.augment.crop = "random_resized"
    config.augment.crop_scale = (0.2, 1.0)
    config.augment.flip = True
    config.augment.rotation = 0.0
    config.augment.color_jitter = 0.0
    config.augment.grayscale = 0.0
    config.augment.cutout = 0

    config.batch_size = 256
    config.num_epochs = 100.0
    config.optimizer = "adamw"
    config.weight_decay = 0.05
    config.warmup_steps = 5000
    config.grad_clip_norm = 0.0
    config.selection_metric = "loss"  # the lowest held-out reconstruction loss is recorded
    config.eval_every = 2000
    config.checkpoint_every = 2000
    config.eval_batch_size = 256
    return config
