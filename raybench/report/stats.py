"""Resampling statistics on test predictions: percentile bootstrap CIs and paired permutation tests.

Both are seeded (``numpy.random.default_rng(seed)``), so a report is reproducible. The metric
is always the task's selection metric, evaluated by :func:`selection_scorer` with
:func:`raybench.metrics.compute_metrics`' rules (same undefined-value rules, NaN instead of an
exception) but at a fraction of its cost, which matters hundreds of thousands of times over:
AUROC/AUPRC by the vectorised :mod:`raybench.report.ranking` (equal to scikit-learn's), the
multiclass metrics by scikit-learn's function for that one metric.
Metrics without such a fast path fall back to ``compute_metrics(...)[metric]``; the tests check
that both paths agree.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score

from raybench.metrics import compute_metrics
from raybench.report.ranking import average_precision_columns, roc_auc_columns

__all__ = [
    "BootstrapCI",
    "PermutationResult",
    "bootstrap_ci",
    "paired_permutation_test",
    "selection_scorer",
]

Scorer = Callable[[np.ndarray, np.ndarray], float]
_RANKING = {"auprc": average_precision_columns, "auroc": roc_auc_columns}
_KAPPA_WEIGHTS = {"kappa": None, "kappa_linear": "linear", "kappa_quadratic": "quadratic"}


def _quiet(fn, *args, **kwargs) -> float:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return float(fn(*args, **kwargs))
        except ValueError:
            return math.nan


def selection_scorer(kind: str, metric: str, label_names: Sequence[str] | None = None) -> Scorer:
    """A function ``(y_true, y_prob) -> float`` giving ``compute_metrics(kind, ...)[metric]``.

    Fast paths (``compute_metrics``' rules, cheap implementations): binary ``auprc`` /
    ``auroc`` (NaN with one class); multilabel ``auprc_macro`` / ``auroc_macro`` (labels with a
    single class skipped, NaN when none is left); multiclass ``accuracy`` and ``kappa``,
    ``kappa_linear``, ``kappa_quadratic`` on the argmax. Anything else calls ``compute_metrics``.
    """
    if kind == "binary" and metric in _RANKING:
        fn = _RANKING[metric]

        def binary(y_true: np.ndarray, y_prob: np.ndarray) -> float:
            y_prob = y_prob.reshape(len(y_prob), -1)[:, 0] if y_prob.ndim == 2 else y_prob
            if np.unique(y_true).size < 2:
                return math.nan
            return float(fn(y_true, y_prob)[0])

        return binary
    if kind == "multilabel" and metric in ("auprc_macro", "auroc_macro"):
        fn = _RANKING[metric.split("_")[0]]

        def macro(y_true: np.ndarray, y_prob: np.ndarray) -> float:
            positives = y_true.sum(axis=0)
            valid = (positives > 0) & (positives < y_true.shape[0])
            if not valid.any():
                return math.nan
            return float(np.mean(fn(y_true[:, valid], y_prob[:, valid])))

        return macro
    if kind == "multiclass" and (metric == "accuracy" or metric in _KAPPA_WEIGHTS):

        def multiclass(y_true: np.ndarray, y_prob: np.ndarray) -> float:
            pred = y_prob.argmax(axis=1)
            if metric == "accuracy":
                return _quiet(accuracy_score, y_true, pred)
            labels = list(range(y_prob.shape[1]))
            return _quiet(cohen_kappa_score, y_true, pred, labels=labels,
                          weights=_KAPPA_WEIGHTS[metric])

        return multiclass
    names = list(label_names) if label_names is not None else None

    def fallback(y_true: np.ndarray, y_prob: np.ndarray) -> float:
        return float(compute_metrics(kind, y_true, y_prob, label_names=names)[metric])

    return fallback


@dataclass(frozen=True)
class BootstrapCI:
    """A percentile bootstrap confidence interval of a metric."""

    estimate: float
    low: float
    high: float
    n_resamples: int
    n_valid: int  # resamples where the metric was defined (one-class resamples are dropped)
    level: float


def bootstrap_ci(score: Scorer, y_true: np.ndarray, seed_probs: np.ndarray, *,
                 n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> BootstrapCI:
    """Percentile bootstrap CI of the mean over seeds of ``score``, resampling test samples.

    ``seed_probs`` is ``[S, N, ...]``: the predictions of S seeds on the same N test samples
    (one predictor: ``probs[None]``). The estimate is ``mean_s score(y_true, seed_probs[s])``.
    Each resample draws N sample indices with replacement (``default_rng(seed)``), the same
    for every seed, and averages the seeds' scores on them; the CI is the ``(1 - level) / 2``
    and ``(1 + level) / 2`` percentiles (numpy's linear interpolation) of the resampled values
    where the metric is defined (a one-class resample makes AUROC/AUPRC undefined).
    """
    y_true = np.asarray(y_true)
    seed_probs = np.asarray(seed_probs, dtype=np.float64)
    if seed_probs.shape[1:2] != y_true.shape[:1]:
        raise ValueError(f"seed_probs {seed_probs.shape} must be [S, N, ...] with "
                         f"N = {y_true.shape[0]}")
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        values[i] = np.mean([score(y_true[idx], probs[idx]) for probs in seed_probs])
    valid = values[np.isfinite(values)]
    low = high = math.nan
    if valid.size:
        low, high = np.percentile(valid, [50 * (1 - level), 50 * (1 + level)])
    estimate = float(np.mean([score(y_true, probs) for probs in seed_probs]))
    return BootstrapCI(estimate, float(low), float(high), n_resamples, int(valid.size), level)


@dataclass(frozen=True)
class PermutationResult:
    """A paired permutation test of ``score(a) - score(b)`` on the same samples."""

    statistic: float
    p_value: float
    n_permutations: int
    n_valid: int


def paired_permutation_test(score: Scorer, y_true: np.ndarray, prob_a: np.ndarray,
                            prob_b: np.ndarray, *, n_permutations: int = 1000,
                            seed: int = 0) -> PermutationResult:
    """Two-sided paired permutation test of the difference in a metric between two predictors.

    The statistic is ``score(y_true, prob_a) - score(y_true, prob_b)``. Under the null the two
    predictions of each sample are exchangeable, so each permutation swaps the pair of every
    sample independently with probability 1/2 (a whole row for multilabel/multiclass). The
    p-value is ``(1 + #{|T*| >= |T|}) / (1 + n)`` over the ``n`` permutations where the
    metric is defined (the +1 counts the observed assignment, so p is never 0).
    """
    y_true = np.asarray(y_true)
    prob_a, prob_b = np.asarray(prob_a, np.float64), np.asarray(prob_b, np.float64)
    if prob_a.shape != prob_b.shape or prob_a.shape[0] != y_true.shape[0]:
        raise ValueError(f"shapes differ: y_true {y_true.shape}, a {prob_a.shape}, "
                         f"b {prob_b.shape}")
    observed = score(y_true, prob_a) - score(y_true, prob_b)
    if not np.isfinite(observed):
        return PermutationResult(math.nan, math.nan, n_permutations, 0)
    rng = np.random.default_rng(seed)
    n = y_true.shape[0]
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        swap = (rng.random(n) < 0.5).reshape((n,) + (1,) * (prob_a.ndim - 1))
        perm_a, perm_b = np.where(swap, prob_b, prob_a), np.where(swap, prob_a, prob_b)
        null[i] = score(y_true, perm_a) - score(y_true, perm_b)
    valid = null[np.isfinite(null)]
    tol = 1e-12 * max(1.0, abs(observed))  # float noise must not decide ties
    extreme = int(np.sum(np.abs(valid) >= abs(observed) - tol))
    return PermutationResult(float(observed), (1 + extreme) / (1 + valid.size), n_permutations,
                             int(valid.size))
