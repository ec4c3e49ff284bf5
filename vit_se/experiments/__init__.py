"""The paper's result grids, one command each.

  python -m vit_se.experiments ablation ...       ViT vs ViT+SE (+ an intermediate stage)
  python -m vit_se.experiments cross_dataset ...  every model on every database

Each command lives in its own module (`ablation`, `cross_dataset`, also runnable as
`python -m vit_se.experiments.ablation`); their tables are written by `vit_se.reports`, as the
k-fold aggregate's are.
"""

from vit_se.errors import Error

COMMANDS = ("ablation", "cross_dataset")


class ExperimentError(Error, ValueError):
    """A grid that cannot run; one line saying why."""
