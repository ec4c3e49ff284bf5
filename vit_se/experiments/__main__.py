"""`python -m vit_se.experiments COMMAND [flags]`: runs vit_se.experiments.COMMAND.

The command is chosen before any flag is defined, so each command parses only its own flags; its
docstring and flags are what `--help` shows (absl shows the main module's, which is this one).
"""

import importlib
import sys

from absl import flags

from vit_se.experiments import COMMANDS


def usage():
    commands = "|".join(COMMANDS)
    return f"usage: python -m vit_se.experiments {{{commands}}} [flags]; COMMAND --help: its flags"


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help", "-help", "--helpshort"):
            print(sys.modules[__name__].__doc__ or "", usage(), sep="\n")
            return
        if len(sys.argv) > 1:
            sys.exit(f"vit_se.experiments: no command {sys.argv[1]!r}; {usage()}")
        sys.exit(usage())
    command = importlib.import_module(f"vit_se.experiments.{sys.argv[1]}")
    sys.argv = [f"{sys.argv[0]} {sys.argv[1]}"] + sys.argv[2:]
    command.define_flags()
    flags.adopt_module_key_flags(command)
    sys.modules["__main__"].__doc__ = command.__doc__
    command.start()


if __name__ == "__main__":
    main()
