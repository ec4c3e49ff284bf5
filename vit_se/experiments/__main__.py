"""`python -m vit_se.experiments COMMAND [flags]`: runs vit_se.experiments.COMMAND.

The command is chosen before any flag is defined, so each command parses only its own flags.
"""

import importlib
import sys

from vit_se.experiments import COMMANDS


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m vit_se.experiments {{{'|'.join(COMMANDS)}}} [flags]")
    command = importlib.import_module(f"vit_se.experiments.{sys.argv[1]}")
    sys.argv = [f"{sys.argv[0]} {sys.argv[1]}"] + sys.argv[2:]
    command.run()


if __name__ == "__main__":
    main()
