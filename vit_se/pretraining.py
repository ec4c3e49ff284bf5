"""What the trainer does differently for task 'mae': unlabelled batches, the held-out
reconstruction loss, a reconstruction figure at each evaluation, and the encoder as the export.

`vit_se.train` runs one loop for both tasks (mesh, state, checkpoints, resume, preemption, the
lock, progress); it asks a task object for its data and for what to do at an evaluation and at
the end. This is the pretraining one (the classifier's lives in `vit_se.train`). The run's
files:

    WORKDIR/encoder.npz        the final step's backbone, official vit_jax layout, no head:
                               --config.pretrained_path=WORKDIR/encoder.npz (or
                               --config.init_from=WORKDIR) starts a ViT-SE fine-tune from it
    WORKDIR/pretraining.json   steps, held-out loss (final and lowest), sources, mask ratio
    WORKDIR/reconstructions/   step_N.png: input | masked | reconstruction of fixed held-out faces
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from vit_se import figures, mae_checkpoint, mae_sources, mae_step, sharding, unlabelled
from vit_se import workdir as workdir_lib


class Pretraining:
    """Masked-autoencoder pretraining on the sources of `config.mae`."""

    def __init__(self, config):
        self.config = config
        m = config.mae
        self.sources = mae_sources.from_config(m)
        known = {config.dataset: config.manual_dir} if config.dataset else {}
        self.data_kwargs = dict(
            holdout_every=m.holdout_every,
            data_dir=config.data_dir,
            manual_dirs=unlabelled.manual_dirs(self.sources, m.manual_root, **known),
        )
        self.num_train = unlabelled.num_train_images(self.sources, **self.data_kwargs)
        self.description = ", ".join(s.name for s in self.sources)
        self._figure = None

    def train_batches(self, local_batch, start_step):
        c = self.config
        return unlabelled.train_dataset(
            self.sources,
            c,
            local_batch,
            seed=c.seed,
            start_step=start_step,
            allow_test_splits=c.mae.allow_test_splits,
            cache_max_bytes=c.cache_max_bytes,
            shuffle_buffer=c.shuffle_buffer,
            prefetch=c.prefetch,
            **self.data_kwargs,
        )

    def evaluator(self, model, params_sharding, mesh):
        """params -> {'val': {'loss', 'num_examples'}} on the held-out images, and the fixed faces
        of the reconstruction figure."""
        c = self.config
        eval_batch = int(np.ceil(c.eval_batch_size / jax.device_count()) * jax.device_count())
        data = unlabelled.eval_dataset(
            self.sources,
            eval_batch // jax.process_count(),
            image_size=c.image_size,
            allow_test_splits=c.mae.allow_test_splits,
            prefetch=c.prefetch,
            **self.data_kwargs,
        )
        if c.mae.figure_faces:
            self._figure = _FigureFaces(
                data, c.mae.figure_faces, model, params_sharding, mesh, c.mae.norm_pix_loss, c.seed
            )
        return mae_step.make_evaluator(
            model,
            data,
            params_sharding,
            mesh,
            norm_pix_loss=c.mae.norm_pix_loss,
            seed=c.seed,
        )

    def evaluation_line(self, step, evaluated):
        v = evaluated["val"]
        return (
            f"step {step}: held-out reconstruction loss {v['loss']:.4f} ({v['num_examples']} faces)"
        )

    def after_evaluation(self, step, params, writer, run_dir):
        """The reconstruction figure of this step: a PNG and a TensorBoard image."""
        if self._figure is None:
            return
        image = self._figure.draw(params, step, run_dir)
        if image is not None:
            writer.write_images(step, {"reconstruction": image[None]})

    def export(self, run_dir, state_params, total_steps, final, best, best_params):
        """encoder.npz from the final step, and pretraining.json (written by process 0). The
        lowest held-out loss is recorded, not exported: He et al. fine-tune from the last
        pretraining epoch's weights, and so does this."""
        mae_checkpoint.export_encoder(state_params, os.path.join(run_dir, workdir_lib.ENCODER))
        if jax.process_index() != 0:
            return
        c = self.config
        best_step, best_metrics = best
        workdir_lib.write_json(
            os.path.join(run_dir, workdir_lib.PRETRAINING_INFO),
            {
                "task": "mae",
                "step": int(total_steps),
                "metrics": final,
                "best_step": best_step,
                "best_metrics": best_metrics,
                "sources": [s.name for s in self.sources],
                "num_train_images": int(self.num_train),
                "mask_ratio": float(c.mae.mask_ratio),
                "norm_pix_loss": bool(c.mae.norm_pix_loss),
                "image_size": int(c.image_size),
                "model": c.model.to_dict(),
                "encoder": workdir_lib.ENCODER,
            },
        )


class _FigureFaces:
    """The first held-out faces of process 0, reconstructed under one fixed mask draw."""

    def __init__(self, data, count, model, params_sharding, mesh, norm_pix_loss, seed):
        images = unlabelled.first_images(data, count) if jax.process_index() == 0 else None
        n = len(images) if images is not None else 0
        n = int(multihost_utils.broadcast_one_to_all(np.int32(n)))
        if jax.process_index() != 0:
            size = data.dataset.element_spec["image"].shape[1]
            images = np.zeros((n, size, size, 3), np.float32)
        self.count = n
        if not n:
            return
        images = multihost_utils.broadcast_one_to_all(np.asarray(images, np.float32))
        self.images = jax.make_array_from_process_local_data(sharding.replicated(mesh), images)
        self.rng = jax.random.PRNGKey(seed + 3)
        self.reconstruct = mae_step.jit_reconstruct(
            model, params_sharding, mesh, norm_pix_loss=norm_pix_loss
        )

    def draw(self, params, step, run_dir):
        if not self.count:
            return None
        masked, recon = self.reconstruct(params, self.images, self.rng)
        if jax.process_index() != 0:
            return None
        path = os.path.join(run_dir, workdir_lib.RECONSTRUCTIONS, f"step_{step}.png")
        return figures.save_reconstruction_png(
            np.asarray(self.images.addressable_data(0)),
            np.asarray(masked.addressable_data(0)),
            np.asarray(recon.addressable_data(0)),
            path,
            title=f"step {step}: input | masked | reconstruction",
        )
