"""Metrics against values computed by hand, and the trainer's eval step that feeds them.

The fixed prediction set (5 classes; class 3 never occurs but is predicted once, class 4 neither
occurs nor is predicted):

    true: 0 0 0 1 1 2 2 2 2 0
    pred: 0 0 1 1 3 2 2 0 2 0

    confusion (rows true, columns predicted)   support  predicted  tp
      0: 3 1 0 0 0                                 4        4        3
      1: 0 1 0 1 0                                 2        2        1
      2: 1 0 3 0 0                                 4        3        3
      3: 0 0 0 0 0                                 0        1        0
      4: 0 0 0 0 0                                 0        0        0

    accuracy = 7/10
    recall = 3/4, 1/2, 3/4 (classes 3 and 4 absent: reported 0, left out of class means)
    mean class accuracy = (3/4 + 1/2 + 3/4) / 3 = 2/3
    precision = 3/4, 1/2, 3/3, 0/1 (class 3 predicted once, wrongly), 0 (never predicted)
    F1 = 3/4, 1/2, 2 * 1 * 3/4 / (1 + 3/4) = 6/7;  macro F1 = (3/4 + 1/2 + 6/7) / 3 = 59/84
"""

import jax.numpy as jnp
import numpy as np
import tolerances

from vit_se import eval_step, metrics

TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PRED = [0, 0, 1, 1, 3, 2, 2, 0, 2, 0]
CONFUSION = [
    [3, 1, 0, 0, 0],
    [0, 1, 0, 1, 0],
    [1, 0, 3, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]


def test_hand_computed_values_with_a_class_that_never_occurs():
    m = metrics.from_confusion(CONFUSION, loss_sum=5.0)
    assert m["num_examples"] == 10
    # float64 ratios of counts, means over 5 classes.
    n = 10
    assert m["accuracy"] == tolerances.approx(0.7, n, eps=tolerances.EPS64)
    assert m["mean_class_accuracy"] == tolerances.approx(2 / 3, n, eps=tolerances.EPS64)
    assert m["macro_f1"] == tolerances.approx(59 / 84, n, eps=tolerances.EPS64)
    assert m["loss"] == tolerances.approx(0.5, n, eps=tolerances.EPS64)
    want = [0.75, 0.5, 0.75, 0.0, 0.0]
    tolerances.assert_close(m["per_class_recall"], want, n, eps=tolerances.EPS64)
    want = [0.75, 0.5, 1.0, 0.0, 0.0]
    tolerances.assert_close(m["per_class_precision"], want, n, eps=tolerances.EPS64)
    assert m["per_class_support"] == [4, 2, 4, 0, 0]


def test_confusion_sums_give_the_pooled_metrics():
    """Per-batch (or per-fold) confusions add up to exactly the metrics of the whole set."""
    whole = np.zeros((5, 5))
    parts = [np.zeros((5, 5)), np.zeros((5, 5))]
    for i, (t, p) in enumerate(zip(TRUE, PRED, strict=True)):
        whole[t, p] += 1
        parts[i % 2][t, p] += 1
    np.testing.assert_array_equal(whole, CONFUSION)
    assert metrics.from_confusion(parts[0] + parts[1]) == metrics.from_confusion(CONFUSION)


def test_perfect_and_empty_sets():
    perfect = metrics.from_confusion(np.diag([2, 0, 5]))
    assert perfect["accuracy"] == perfect["mean_class_accuracy"] == perfect["macro_f1"] == 1.0
    empty = metrics.from_confusion(np.zeros((3, 3)), loss_sum=0.0)
    assert empty["num_examples"] == 0 and empty["accuracy"] == 0.0 and empty["loss"] == 0.0


class _Identity:
    """A 'model' whose logits are its input, so predictions are chosen by the test."""

    def apply(self, variables, images):
        return images


def test_eval_step_counts_masked_examples_out():
    """The trainer's eval step (used by evaluate): padded examples contribute nothing."""
    step = eval_step.make_eval_step(_Identity(), 5)
    pad = 6
    logits = np.full((len(TRUE) + pad, 5), -10.0, np.float32)
    logits[np.arange(len(PRED)), PRED] = 10.0
    logits[len(PRED) :, 4] = 10.0  # padding "predicts" class 4 with label 0: must not count
    batch = {
        "image": jnp.asarray(logits),
        "label": jnp.asarray(TRUE + [0] * pad),
        "mask": jnp.asarray([1.0] * len(TRUE) + [0.0] * pad),
    }
    out = step({}, batch)
    np.testing.assert_array_equal(np.asarray(out["confusion"]), CONFUSION)
    # Cross-entropy of a correct prediction is log(1 + 4 e^-20); a wrong one about 20.
    wrong = sum(t != p for t, p in zip(TRUE, PRED, strict=True))
    # float32: a log-sum-exp over 5 classes per example, summed over 16 (the 4 e^-20 terms are
    # below its rounding).
    assert float(out["loss_sum"]) == tolerances.approx(wrong * 20.0, n=5 + 16)
    m = metrics.from_confusion(out["confusion"], out["loss_sum"])
    assert m["accuracy"] == tolerances.approx(0.7, 10, eps=tolerances.EPS64)
    assert m["macro_f1"] == tolerances.approx(59 / 84, 10, eps=tolerances.EPS64)
