"""Faces across video frames: identities by box overlap, and probabilities smoothed over time.

A classifier applied frame by frame flickers: a face's label flips between neighbouring classes
from one frame to the next while its expression has not changed. Two small pieces fix what
`vit_se.predict --faces` reports for videos:

- `IoUTracker` gives each face a track id that persists across frames: the boxes of a frame are
  matched greedily to the tracks' last boxes, highest intersection-over-union first, a pair only
  when its IoU reaches the threshold; an unmatched box starts a new track (ids count up from 0
  and are never reused), and a track unmatched for more than `max_missed` sampled frames ends.
  Greedy matching is what SORT-style trackers reduce to without a motion model; at the frame rates
  of FER footage (and `--every_nth_frame` small) a face moves far less than its own width between
  sampled frames, so overlap alone keeps identities.
- `Smoother` averages each track's probability vectors over time: `window:N`, the mean of the
  track's last N vectors (the current one included), or `ema:ALPHA`, the exponential average
  s_t = ALPHA p_t + (1 - ALPHA) s_{t-1} starting from the first vector. Off by default: a
  smoothed label lags a real change of expression by about N/2 (or 1/ALPHA) sampled frames.
"""

from __future__ import annotations

import collections

import numpy as np

DEFAULT_IOU_THRESHOLD = 0.3
DEFAULT_MAX_MISSED = 5


def iou(a, b):
    """Intersection over union of two (x, y, width, height) boxes."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class IoUTracker:
    """Greedy IoU matching of each frame's boxes to the live tracks (see the module docstring)."""

    def __init__(self, threshold=DEFAULT_IOU_THRESHOLD, max_missed=DEFAULT_MAX_MISSED):
        if not 0 < threshold <= 1:
            raise ValueError(f"IoU threshold must be in (0, 1], got {threshold}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be at least 0, got {max_missed}")
        self.threshold = threshold
        self.max_missed = max_missed
        self._tracks = {}  # id -> [last box, frames missed]
        self._next_id = 0

    def update(self, boxes):
        """The track id of each box of the next sampled frame, in the order given."""
        pairs = sorted(
            (
                (iou(box, track[0]), i, tid)
                for i, box in enumerate(boxes)
                for tid, track in self._tracks.items()
            ),
            key=lambda t: (-t[0], t[1], t[2]),
        )
        ids = [None] * len(boxes)
        taken = set()
        for overlap, i, tid in pairs:
            if overlap < self.threshold:
                break
            if ids[i] is None and tid not in taken:
                ids[i] = tid
                taken.add(tid)
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i] = self._next_id
                self._next_id += 1
            self._tracks[ids[i]] = [tuple(box), 0]
        for tid in list(self._tracks):
            if tid not in ids:
                self._tracks[tid][1] += 1
                if self._tracks[tid][1] > self.max_missed:
                    del self._tracks[tid]
        return ids


def parse_smoothing(text):
    """'off' (or '' / None) -> None; 'window:N' -> ('window', N); 'ema:ALPHA' -> ('ema', ALPHA).

    Raises a one-line ValueError naming --smooth and the accepted forms otherwise.
    """
    if text is None or str(text).strip().lower() in ("", "off", "none"):
        return None
    kind, _, value = str(text).strip().lower().partition(":")
    try:
        if kind == "window":
            n = int(value)
            if n >= 1:
                return ("window", n)
        elif kind == "ema":
            alpha = float(value)
            if 0 < alpha <= 1:
                return ("ema", alpha)
    except ValueError:
        pass
    raise ValueError(
        f"--smooth must be off, window:N (N >= 1 sampled frames) or ema:ALPHA (0 < ALPHA <= 1), "
        f"got {text!r}"
    )


class Smoother:
    """Per-track temporal smoothing of probability vectors (`parse_smoothing`'s spec)."""

    def __init__(self, spec):
        self.spec = spec
        self._state = {}

    def __call__(self, track, probs):
        probs = np.asarray(probs, np.float64)
        if self.spec is None:
            return probs
        kind, value = self.spec
        if kind == "window":
            window = self._state.setdefault(track, collections.deque(maxlen=value))
            window.append(probs)
            return np.mean(window, axis=0)
        prev = self._state.get(track)
        out = probs if prev is None else value * probs + (1 - value) * prev
        self._state[track] = out
        return out


def label_flips(labels):
    """How often consecutive labels differ (the flicker `Smoother` removes)."""
    labels = list(labels)
    return sum(a != b for a, b in zip(labels[:-1], labels[1:], strict=True))
