"""One live run per workdir: a lock file held by process 0 while the run is alive.

Two trainers on one workdir write the same checkpoint folders and exports, and both "finish";
nothing says which weights are whose. The lock (WORKDIR/lock.json) names the host, the process and
when it started; a second run stops at once with one line naming them.

A lock whose process is gone is taken over with a warning: a SIGKILL, an out-of-memory kill or a
pre-empted VM leaves one behind, and resuming must not need a manual clean-up. On the same host
"gone" is checked directly (the pid, and its start time, so a recycled pid is not mistaken for the
holder). A lock from another host (a shared file system, `gs://`) cannot be checked that way; it
counts as gone when its heartbeat, refreshed as the run logs, is older than `stale_after` seconds.

Local files are created with O_EXCL, so of two runs started together exactly one gets the lock.
An object store has no such primitive here: there the lock is written, read back and compared,
which narrows the race to the time of one write.
"""

from __future__ import annotations

import json
import os
import socket
import time

import jax
from absl import logging
from etils import epath

from vit_se import workdir
from vit_se.errors import Error

STALE_AFTER = 1800.0  # seconds without a heartbeat before another host's lock counts as stale


class WorkdirInUse(Error):
    """Another live run holds the workdir."""


def _start_time(pid):
    """The process's start time in clock ticks since boot (Linux), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(record, stale_after):
    if record.get("host") == socket.gethostname():
        pid = int(record.get("pid", -1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # someone else's process: it exists
        started = record.get("pid_start")
        return started is None or _start_time(pid) in (None, started)
    return time.time() - float(record.get("heartbeat", 0)) < stale_after


def _describe(record):
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    return f"pid {record.get('pid')} on {record.get('host')} since {since}"


class RunLock:
    """`with RunLock(workdir):` holds WORKDIR/lock.json for the run (process 0 only)."""

    def __init__(self, run_dir, stale_after=STALE_AFTER):
        self.path = os.path.join(run_dir, workdir.LOCK)
        self.stale_after = stale_after
        self.record = None

    def __enter__(self):
        ok, message = (self._acquire(), "") if jax.process_index() == 0 else (True, "")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            ok = bool(multihost_utils.broadcast_one_to_all(int(ok)))
            if not ok:
                message = f"process 0 could not take {self.path}: another run holds the workdir"
        if not ok:
            raise WorkdirInUse(message or self._message)
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def _new_record(self):
        now = time.time()
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": _start_time(pid),
            "started": now,
            "heartbeat": now,
        }

    _message = ""

    def _acquire(self):
        record = self._new_record()
        for _ in range(3):
            if self._create(record):
                self.record = record
                return True
            held = self._read()
            if held is None:
                continue  # released meanwhile, or half visible: try again
            if _alive(held, self.stale_after):
                self._message = (
                    f"{os.path.dirname(self.path)} is in use by {_describe(held)} "
                    f"({self.path}); wait for that run to end, or use another --workdir"
                )
                return False
            logging.warning(
                "Taking over the lock of a run that is gone (%s): %s", _describe(held), self.path
            )
            self._remove()
        self._message = f"{self.path}: could not take the lock (it keeps changing)"
        return False

    def _create(self, record):
        data = json.dumps(record).encode()
        if "://" in self.path:
            if workdir.exists(self.path):
                return False
            workdir.write_bytes(self.path, data)
            return self._read() == record
        workdir.makedirs(os.path.dirname(self.path))
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def _read(self):
        try:
            return json.loads(workdir.read_bytes(self.path))
        except (OSError, ValueError):
            return None

    def _remove(self):
        path = epath.Path(self.path)
        if path.exists():
            path.unlink()

    def heartbeat(self):
        """Refreshes the lock's heartbeat (for readers on other hosts)."""
        if self.record is None:
            return
        self.record["heartbeat"] = time.time()
        workdir.write_json(self.path, self.record)

    def release(self):
        if self.record is None:
            return
        held = self._read()
        if held is not None and held.get("pid") == self.record["pid"]:
            self._remove()
        self.record = None
