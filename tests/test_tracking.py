"""Track identities by box overlap and temporal smoothing (`vit_se.tracking`).

Two faces moving across frames (and crossing paths vertically apart) keep their ids; a face that
disappears for a few frames and comes back within `max_missed` keeps its id, later it gets a new
one; smoothing a noisy probability sequence (0.15 of the mass on the true class 3, the rest
random, so the raw arg-max flips in most frames) cuts the label flips at least by 3x; the window
and EMA forms compute what they say.
"""

import numpy as np
import pytest
import tolerances

from vit_se import tracking


def test_iou():
    assert tracking.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert tracking.iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert tracking.iou((0, 0, 10, 10), (5, 0, 10, 10)) == tolerances.approx(
        50 / 150, n=1, eps=tolerances.EPS64
    )


def test_two_moving_faces_keep_their_ids():
    tracker = tracking.IoUTracker(threshold=0.3)
    seen = []
    for t in range(20):
        a = (10 + 4 * t, 20, 60, 60)  # moves right
        b = (300 - 4 * t, 150, 50, 50)  # moves left, lower down
        order = [a, b] if t % 2 else [b, a]  # detector order changes from frame to frame
        ids = tracker.update(order)
        seen.append(dict(zip(ids, order, strict=True)))
    first = seen[0]
    id_a = next(k for k, box in first.items() if box[1] == 20)
    id_b = next(k for k, box in first.items() if box[1] == 150)
    for frame in seen:
        assert set(frame) == {id_a, id_b}
        assert frame[id_a][1] == 20 and frame[id_b][1] == 150


def test_a_lost_face_keeps_its_id_briefly_then_gets_a_new_one():
    tracker = tracking.IoUTracker(threshold=0.3, max_missed=2)
    (first,) = tracker.update([(0, 0, 50, 50)])
    tracker.update([])
    tracker.update([])
    assert tracker.update([(2, 0, 50, 50)]) == [first]
    for _ in range(3):
        tracker.update([])
    assert tracker.update([(2, 0, 50, 50)]) != [first]


def test_parse_smoothing():
    assert tracking.parse_smoothing("off") is None
    assert tracking.parse_smoothing(None) is None
    assert tracking.parse_smoothing("window:5") == ("window", 5)
    assert tracking.parse_smoothing("ema:0.25") == ("ema", 0.25)
    for bad in ("window:0", "ema:0", "ema:1.5", "median:3", "window:x"):
        with pytest.raises(ValueError, match=r"^--smooth must be off, window:N"):
            tracking.parse_smoothing(bad)


def test_window_and_ema_compute_what_they_say():
    p = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.0, 1.0])]
    window = tracking.Smoother(("window", 2))
    out = [window("t", x) for x in p]
    # float64 means of 2 frames and a recursion over 3.
    tolerances.assert_close(out, [[1, 0], [0.5, 0.5], [0, 1]], n=3, eps=tolerances.EPS64)
    ema = tracking.Smoother(("ema", 0.5))
    out = [ema("t", x) for x in p]
    tolerances.assert_close(out, [[1, 0], [0.5, 0.5], [0.25, 0.75]], n=3, eps=tolerances.EPS64)
    # Tracks are smoothed separately.
    tolerances.assert_close(ema("other", [0.0, 1.0]), [0, 1], n=1, eps=tolerances.EPS64)


def test_smoothing_reduces_label_flips_on_a_noisy_sequence():
    rng = np.random.default_rng(0)
    frames, classes = 200, 7
    probs = rng.dirichlet(np.ones(classes), size=frames) * 0.85
    probs[:, 3] += 0.15
    raw = tracking.label_flips(probs.argmax(1))
    for spec in (("window", 5), ("ema", 0.3)):
        smoother = tracking.Smoother(spec)
        smoothed = np.array([smoother(0, p) for p in probs])
        flips = tracking.label_flips(smoothed.argmax(1))
        print(f"{spec}: {raw} label flips raw, {flips} smoothed")
        assert raw >= 100 and flips <= raw / 3
        # float64 recursion over every frame, then a sum over the classes.
        n = frames + classes
        tolerances.assert_close(smoothed.sum(1), np.ones(frames), n, eps=tolerances.EPS64)
