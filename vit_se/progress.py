"""The training progress a person reads: step, loss, images/s and time left.

On a terminal one line is redrawn in place (a bar); elsewhere (TPU workers, `tee`, SLURM output
files, tests) one plain line is printed per log interval, the fields named. The rate is measured
from the end of the run's first step, so compilation does not make the first figures wrong, and
the time left is given in hours, minutes and seconds.
"""

from __future__ import annotations

import sys
import time


def duration(seconds):
    """'1h02m', '3m07s', '42s'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def rate_figure(per_second):
    """'1190', '87.5', '0.412': whole numbers from 100 up, because `:.3g` turns 1190 into
    '1.19e+03', which a person misreads and a log grep for a plain number misses."""
    if per_second >= 100:
        return f"{per_second:.0f}"
    return f"{per_second:.3g}"


class Progress:
    """`started()` after the first step, `update(step, metrics)` at every log interval."""

    BAR = 24

    def __init__(self, total_steps, start_step, batch_size, stream=None, tty=None):
        self.total = total_steps
        self.start = start_step
        self.batch = batch_size
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.t_first = None  # when the first step of this process ended
        self.first_step = None
        self.t_begin = time.time()
        self._open_line = False

    def started(self, step):
        """The first step is done: everything before it was start-up and compilation."""
        self.t_first, self.first_step = time.time(), step

    def rate(self, step):
        """Steps per second since the first step ended (None before two steps)."""
        if self.t_first is None or step <= self.first_step:
            return None
        return (step - self.first_step) / max(time.time() - self.t_first, 1e-9)

    def line(self, step, metrics):
        parts = [f"step {step}/{self.total}"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "accuracy" in metrics:
            parts.append(f"accuracy {metrics['accuracy']:.3f}")
        if metrics.get("skipped_steps"):
            parts.append(f"skipped {int(metrics['skipped_steps'])}")
        rate = self.rate(step)
        if rate:
            parts.append(f"{rate_figure(rate * self.batch)} images/s")
            parts.append(f"ETA {duration((self.total - step) / rate)}")
        return ", ".join(parts)

    def update(self, step, metrics):
        text = self.line(step, metrics)
        if self.tty:
            done = int(self.BAR * step / max(self.total, 1))
            bar = "#" * done + "." * (self.BAR - done)
            self.stream.write(f"\r[{bar}] {text}\033[K")
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text):
        """A line of its own (an evaluation, a checkpoint) without breaking the bar."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def elapsed(self):
        return time.time() - self.t_begin
