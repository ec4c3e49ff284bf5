"""A stop request (SIGTERM, SIGINT, or JAX's preemption notice) turned into one step every host
agrees on, so the trainer can finish that step, checkpoint it and exit.

Cloud TPU Spot and preemptible VMs, Kubernetes and SLURM (`sbatch --signal=TERM@120`) announce the
end of a job with SIGTERM some time before they kill it. One process: a Python handler records
the signal and `should_stop(step)` is true after the step it arrived in. Several processes: every
host must stop after the same step or the last collective hangs. `jax.distributed.initialize`
starts JAX's preemption service, whose notifier owns SIGTERM and propagates a notice from any
host to all; `multihost_utils.reached_preemption_sync_point(step)` is then true on every host at
the same step. SIGINT (Ctrl-C) is ours in both cases; with several processes it is turned into a
SIGTERM to this process, so that it reaches the other hosts the same way.

A second SIGINT (or, with one process, a second SIGTERM) exits at once with status 128 + signal,
for a user who does not want to wait for the checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from absl import logging

from vit_se.errors import Error

# sysexits.h EX_TEMPFAIL: "a temporary failure, the user is invited to retry" -- which is what a
# pre-empted run is: the same command resumes it.
PREEMPTED_EXIT_CODE = 75


class Preempted(Error):
    """The run stopped at a checkpoint on request; the same command resumes it."""

    exit_code = PREEMPTED_EXIT_CODE


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into `should_stop(step)`; handlers restored on
    exit."""

    def __init__(self):
        self.received = None  # the name of the first signal
        self._previous = {}
        self._multi = False

    def __enter__(self):
        self._multi = jax.process_count() > 1
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; nothing to install
        ours = [signal.SIGINT] if self._multi else [signal.SIGINT, signal.SIGTERM]
        for sig in ours:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            logging.warning("second %s: exiting without a checkpoint", name)
            logging.flush()
            os._exit(128 + signum)
        self.received = name
        logging.warning(
            "%s received: finishing this step, writing a checkpoint, then stopping "
            "(send it again to stop at once)",
            name,
        )
        if self._multi:
            # JAX's preemption notifier listens for SIGTERM and tells the other hosts.
            os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step):
        """True once every host should stop after `step` (call it after every step)."""
        if self._multi:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    @property
    def reason(self):
        return self.received or "a preemption notice"
