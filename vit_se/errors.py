"""The one base class of errors that are the user's to fix.

The commands (`vit_se.main`, evaluate, predict, analyze, export, kfold, experiments) report such an
error as one line naming the flag, file, key or field and what was expected, and exit non-zero;
any other exception is a bug and keeps its traceback. Every module's own error class (ConfigError,
CheckpointError, EvaluationError, ...) derives from `Error`, so one handler in `vit_se.cli`
covers them all without importing the modules above it.
"""


class Error(Exception):
    """A problem with the user's input, with a message meant for the command line.

    `exit_code` is the command's exit status: 1, unless a subclass has a reason to be told apart
    by scripts (a pre-empted run, 75, can simply be started again).
    """

    exit_code = 1
