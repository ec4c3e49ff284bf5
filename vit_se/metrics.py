"""Classification metrics from a confusion matrix (rows: true class, columns: prediction).

Everything is derived from the summed confusion matrix so that per-batch, per-process and per-fold
results add up exactly; classes absent from the ground truth are excluded from class means rather
than counted as zero recall.
"""

from __future__ import annotations

import numpy as np


def from_confusion(confusion, loss_sum=None):
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    out = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "num_examples": int(round(total)),
        "per_class_recall": recall.tolist(),
        "per_class_precision": precision.tolist(),
        "per_class_support": support.astype(int).tolist(),
    }
    if loss_sum is not None:
        out["loss"] = float(loss_sum / total) if total else 0.0
    return out


def scalars(metrics):
    """The scalar entries, for metric writers."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
