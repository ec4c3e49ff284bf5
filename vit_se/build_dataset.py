"""Builds a FER dataset from its downloaded files, once:

  python -m vit_se.build_dataset raf_db --config=aligned --manual_dir=$HOME/fer/raf_db

The same build the trainer runs on first use (`vit_se.input_pipeline.load_builder`, the tfds
builders of `vit_se.datasets`), as a command of its own. `tfds build vit_se/datasets/raf_db ...`
builds the same files, but a mistake in the downloaded files reaches the user there as some
seventy lines of traceback before the builder's one-line message; here it is the one line.
"""

from __future__ import annotations

from absl import flags

from vit_se import cli
from vit_se.datasets import registry

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("config", None, "The builder's config, e.g. aligned (default: its first).")
    flags.DEFINE_string("manual_dir", None, "The folder of the downloaded files.")
    flags.DEFINE_string("data_dir", None, "tfds data dir to build into (default: tfds's).")
    flags.DEFINE_bool("skip_bad_images", False, "Skip (and count) images that cannot be decoded.")
    cli.define_verbose_flag()


def main(argv):
    if len(argv) != 2 or argv[1] not in registry.NAMES:
        raise cli.CommandError(
            f"name one dataset: one of {', '.join(registry.NAMES)} (got {' '.join(argv[1:])!r})"
        )
    names = registry.config_names(argv[1])
    if FLAGS.config is not None and FLAGS.config not in names:
        raise cli.CommandError(
            f"--config: {FLAGS.config!r} is not a config of {argv[1]}; expected one of "
            f"{', '.join(names)}"
        )
    if not FLAGS.manual_dir:
        raise cli.CommandError("--manual_dir is required: the folder of the downloaded files")
    from vit_se import input_pipeline, workdir

    if not workdir.isdir(FLAGS.manual_dir):
        raise cli.CommandError(f"--manual_dir: {FLAGS.manual_dir} is not a folder")
    builder = input_pipeline.load_builder(
        argv[1],
        FLAGS.config,
        FLAGS.data_dir,
        FLAGS.manual_dir,
        skip_bad_images=FLAGS.skip_bad_images,
    )
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"{builder.info.full_name} in {builder.data_path}: {splits}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "build_dataset")
