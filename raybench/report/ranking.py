"""Column-wise AUROC and average precision in plain numpy, for resampling loops.

A report evaluates the selection metric hundreds of thousands of times (bootstrap CIs and
permutation tests over every experiment). scikit-learn's ``roc_auc_score`` and
``average_precision_score`` spend ~1 ms per call on input validation alone, which made a demo
report take tens of minutes; these functions compute the same numbers (ties included, tested
against scikit-learn in tests/test_report_ranking.py) for all label columns at once in tens of
microseconds. They are used only where scikit-learn's cost matters; everything else calls
scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["average_precision_columns", "roc_auc_columns"]


def _as_columns(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and y_score {s.shape} differ in shape")
    return y, s


def roc_auc_columns(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """AUROC per column (``[N]`` or ``[N, L]`` 0/1 labels); NaN where a column has one class.

    The Mann-Whitney form with average ranks for ties, which equals the trapezoidal area under
    the ROC curve that scikit-learn computes.
    """
    y, s = _as_columns(y_true, y_score)
    positives = y.sum(axis=0)
    negatives = y.shape[0] - positives
    ranks = rankdata(s, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=0) - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def average_precision_columns(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Average precision per column, as scikit-learn defines it; NaN where a column has no positive.

    AP = sum over distinct score thresholds (descending) of (recall gain) x (precision at that
    threshold); samples with tied scores enter at the same threshold.
    """
    y, s = _as_columns(y_true, y_score)
    n = y.shape[0]
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    true_pos = np.cumsum(y_sorted, axis=0)
    precision = true_pos / np.arange(1, n + 1)[:, None]
    # The last row of each run of tied scores closes a threshold; every row of the run takes
    # the precision at that row.
    closes = np.ones_like(s_sorted, dtype=bool)
    closes[:-1] = s_sorted[:-1] != s_sorted[1:]
    rows = np.where(closes, np.arange(n)[:, None], n - 1)
    closing_row = np.minimum.accumulate(rows[::-1], axis=0)[::-1]
    precision_at_threshold = np.take_along_axis(precision, closing_row, axis=0)
    positives = y.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (y_sorted * precision_at_threshold).sum(axis=0) / positives
    return np.where(positives > 0, ap, np.nan)
