"""Entry point: python -m vit_se.main --config=configs/sfew.py --workdir=DIR [--config.x=y].

The same command runs on one CPU, a multi-GPU node and every worker of a TPU slice. Multi-process
runs are detected from the environment (Cloud TPU, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS) or
forced with --coordinator_address/--num_processes/--process_id.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from vit_se import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_process_environment():
    env = os.environ
    if FLAGS.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialise_distributed():
    import jax

    if not _multi_process_environment():
        return
    kwargs = {}
    if FLAGS.coordinator_address:
        kwargs = dict(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    jax.distributed.initialize(**kwargs)


def main(argv):
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    initialise_distributed()

    import jax

    from vit_se import train

    logging.info(
        "JAX process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0:
        for name, m in result.items():
            print(
                f"{name}: accuracy {m['accuracy']:.4f}  mean class accuracy "
                f"{m['mean_class_accuracy']:.4f}  ({m['num_examples']} examples)"
            )


if __name__ == "__main__":
    sys.argv = cli.resolve_config_paths(sys.argv)
    cli.run(main, "main")
