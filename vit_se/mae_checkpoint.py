"""A masked autoencoder's encoder in and out of the official ViT layout.

Out: `export_encoder` writes `params['encoder']` with `vit_se.checkpoint.save_npz`, so the file is
a vit_jax-layout ViT without head or SE (unstacked even from a scanned run). A ViT-SE fine-tune
starts from it with `--config.pretrained_path=WORKDIR/encoder.npz` (SE and head fresh, exactly the
keys `checkpoint.FRESH_OK` allows), and `python -m vit_se.checkpoint WORKDIR/encoder.npz`
describes it.

In: `load_encoder` continues pretraining from any checkpoint the project loads (vit_jax, big_vision,
a vit_se export or an earlier encoder.npz). The file's head, SE and pre_logits, which an encoder
has no use for, are left out; every other key must fit, with the checkpoint module's one error
naming each that does not.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils

from vit_se import checkpoint as ckpt_lib
from vit_se import mae

ENCODER = "encoder.npz"  # in a pretraining run's workdir


def export_encoder(params, path):
    """Gathers the (possibly sharded) MAE parameters and writes the encoder from process 0."""
    encoder = multihost_utils.process_allgather(mae.encoder_params(params), tiled=True)
    if jax.process_index() == 0:
        ckpt_lib.save_npz(encoder, path)


def load_encoder(path, encoder_init):
    """The checkpoint at `path` in the structure of `encoder_init` (an MAE's `params['encoder']`,
    arrays or ShapeDtypeStructs); position embeddings are resized as for fine-tuning."""
    flat = ckpt_lib.load_npz(path)
    tree = ckpt_lib.to_vit_se_keys(flat, ckpt_lib.detect_format(flat, path))
    backbone = {k: v for k, v in tree.items() if k.split("/")[0] not in ckpt_lib.FRESH_OK}
    return ckpt_lib.params_from_flat(backbone, encoder_init, path)
