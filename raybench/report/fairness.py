"""Subgroup metrics with fairlearn's ``MetricFrame``, with small groups suppressed.

The report evaluates them on the test predictions of a configuration with its seeds pooled
(one row per sample and seed; see :func:`prediction_set_fairness`): one ``MetricFrame`` per
method and attribute instead of one per seed, which keeps the section fast.

Per sensitive attribute, groups with fewer than ``min_group_size`` test samples are removed
BEFORE the ``MetricFrame`` is built: they are not shown and do not enter the gap. Because the
total number of test samples is printed too, a single suppressed count could be recovered by
subtraction; :func:`suppress_small_groups` therefore also suppresses the smallest shown groups
(*complementary suppression*) until at least two groups are withheld and together hold at least
``min_group_size`` samples, so no withheld count can be derived. The gap is
``MetricFrame.difference()`` (method ``between_groups``: max - min over the remaining groups;
groups where a metric is undefined are skipped by fairlearn's max/min). With fewer than two
groups left the gap is NaN rather than fairlearn's 0.

Metrics per task kind (threshold 0.5, ``prob >= 0.5`` is positive, as in ``compute_metrics``):

* binary: AUPRC, TPR, FPR, ECE;
* multilabel: the same, each the unweighted mean over labels (AUPRC: macro over labels with
  both classes in the group; TPR/FPR: mean over labels where they are defined);
* multiclass: accuracy and top-label ECE only (no single positive class for TPR/FPR).

TPR is NaN in a group without positives and FPR in a group without negatives (fairlearn's
``true_positive_rate`` / ``false_positive_rate`` return 0 there, which would look like a failing
or a perfect group); otherwise the values equal fairlearn's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from raybench.metrics import expected_calibration_error
from raybench.report.load import PredictionSet
from raybench.report.small_sample import class_counts
from raybench.report.stats import selection_scorer

__all__ = ["FAIRNESS_METRICS", "SubgroupResult", "fairness_metric_functions",
           "prediction_set_fairness", "subgroup_metrics", "suppress_small_groups"]

FAIRNESS_METRICS = {
    "binary": ("AUPRC", "TPR", "FPR", "ECE"),
    "multilabel": ("AUPRC", "TPR", "FPR", "ECE"),
    "multiclass": ("accuracy", "ECE"),
}


def _rate(positive_class: int, threshold: float) -> Callable:
    """TPR (``positive_class`` 1) or FPR (0): the share of predicted positives among the
    samples of that true class, per label, then the mean over the labels where it is defined.

    Equal to fairlearn's ``true_positive_rate`` / ``false_positive_rate`` (checked in the tests)
    except that a label without samples of the class gives NaN instead of 0; computed with numpy
    because the per-label, per-group, per-seed calls add up to thousands per report.
    """

    def rate(y_true: np.ndarray, y_prob: np.ndarray) -> float:
        y_true = y_true.reshape(len(y_true), -1)
        pred = y_prob.reshape(len(y_prob), -1) >= threshold
        of_class = y_true == positive_class
        counts = of_class.sum(axis=0)
        if not counts.any():
            return math.nan
        hits = (pred & of_class).sum(axis=0)
        return float(np.mean(hits[counts > 0] / counts[counts > 0]))

    return rate


def fairness_metric_functions(kind: str, threshold: float = 0.5) -> dict[str, Callable]:
    """The ``MetricFrame`` metrics dict for ``kind``; each takes ``(y_true, y_prob)``."""
    def ece(y_true: np.ndarray, y_prob: np.ndarray) -> float:
        return expected_calibration_error(kind, y_true, y_prob)

    if kind == "multiclass":
        accuracy = selection_scorer("multiclass", "accuracy")
        return {"accuracy": accuracy, "ECE": ece}
    auprc = selection_scorer(kind, "auprc" if kind == "binary" else "auprc_macro")
    return {"AUPRC": auprc, "TPR": _rate(1, threshold), "FPR": _rate(0, threshold),
            "ECE": ece}


def suppress_small_groups(counts: pd.Series, min_group_size: int) -> tuple[list, list]:
    """``(small, complementary)``: groups withheld for size and those withheld to protect them.

    ``small`` are the groups with fewer than ``min_group_size`` samples. When there are any,
    the smallest remaining groups (ties by name) join ``complementary`` until at least two
    groups are withheld and their total is at least ``min_group_size``: the total minus the
    shown groups then never reveals one withheld count, nor a small sum of them.
    """
    order = sorted(counts.index, key=lambda g: (int(counts[g]), str(g)))
    small = [g for g in order if counts[g] < min_group_size]
    if not small:
        return [], []
    withheld, complementary = list(small), []
    for group in order:
        if len(withheld) >= 2 and int(counts[withheld].sum()) >= min_group_size:
            break
        if group not in withheld:
            withheld.append(group)
            complementary.append(group)
    return small, complementary


@dataclass
class SubgroupResult:
    """Per-group metrics of one attribute after suppression, and the between-group gaps."""

    by_group: pd.DataFrame  # index: group (sorted), columns: metric names
    gaps: pd.Series  # metric -> max - min over the shown groups (NaN with < 2 groups)
    counts: pd.Series  # shown group -> number of test samples
    suppressed: pd.Series  # withheld group -> number of test samples (never shown)
    complementary: list = field(default_factory=list)  # withheld only to protect others


def subgroup_metrics(kind: str, y_true: np.ndarray, y_prob: np.ndarray, sensitive,
                     *, min_group_size: int = 10, threshold: float = 0.5, name: str = "group",
                     repeats: int = 1) -> SubgroupResult:
    """fairlearn ``MetricFrame`` of the fairness metrics over one sensitive attribute.

    Groups with fewer than ``min_group_size`` samples are dropped first (see the module
    docstring); ``by_group`` and ``gaps`` come from the ``MetricFrame`` on the rest. With
    pooled seeds every test sample appears ``repeats`` times: group sizes (``counts``,
    ``suppressed`` and the suppression rule) count test samples, i.e. rows / ``repeats``.
    """
    sensitive = pd.Series(np.asarray(sensitive, dtype=object).astype(str), name=name)
    counts = (sensitive.value_counts().sort_index() // max(int(repeats), 1)).astype(np.int64)
    small, complementary = suppress_small_groups(counts, min_group_size)
    withheld = counts.index.isin(small + complementary)
    shown, suppressed = counts[~withheld], counts[withheld]
    metrics = fairness_metric_functions(kind, threshold)
    if shown.empty:
        empty = pd.DataFrame(columns=list(metrics), dtype=float)
        return SubgroupResult(empty, pd.Series(math.nan, index=list(metrics)), shown, suppressed,
                              complementary)
    mask = sensitive.isin(shown.index).to_numpy()
    frame = MetricFrame(metrics=metrics, y_true=np.asarray(y_true)[mask],
                        y_pred=np.asarray(y_prob)[mask],
                        sensitive_features=sensitive[mask].reset_index(drop=True))
    by_group = frame.by_group.astype(np.float64).sort_index()
    by_group.index = by_group.index.astype(str)
    gaps = frame.difference().astype(np.float64)
    if len(shown) < 2:
        gaps[:] = math.nan
    return SubgroupResult(by_group, gaps, shown, suppressed, complementary)


def prediction_set_fairness(pset: PredictionSet, attributes: list[str], *,
                            min_group_size: int = 10, threshold: float = 0.5,
                            min_positives: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subgroup metrics of ``pset`` with its seeds pooled, per attribute.

    Pooled: each test sample contributes one row per seed (rows of all seeds in one
    ``MetricFrame``), so TPR, FPR and accuracy are exactly the means over seeds and AUPRC and
    ECE are computed over all seeds' predictions at once; no seed ensemble is formed. Returns
    ``(groups, gaps)``: ``groups`` has one row per (attribute, group, metric) with ``n`` (test
    samples), ``value``, ``suppressed`` (withheld groups: one row each, with no metric and no
    value), ``complementary`` (withheld only to protect a small group) and ``small_sample``
    (the group has fewer than ``min_positives`` samples of the rarer class, see
    :mod:`raybench.report.small_sample`); ``gaps`` has one row per (attribute, metric) with
    ``gap`` and ``n_seeds``. Attributes absent from the predictions are skipped.
    """
    n_seeds = len(pset.seeds)
    y_true = np.concatenate([pset.y_true] * n_seeds)
    prob = pset.probs.reshape((-1,) + pset.probs.shape[2:])
    group_rows, gap_rows = [], []
    for attribute in attributes:
        if attribute not in pset.groups.columns:
            continue
        sensitive = np.tile(pset.groups[attribute].to_numpy(dtype=object), n_seeds)
        res = subgroup_metrics(pset.kind, y_true, prob, sensitive, min_group_size=min_group_size,
                               threshold=threshold, name=attribute, repeats=n_seeds)
        labels = pset.groups[attribute].to_numpy(dtype=object).astype(str)
        for group, values in res.by_group.iterrows():
            small = class_counts(pset.kind, pset.y_true[labels == str(group)]).is_small(
                min_positives)
            for metric, value in values.items():
                group_rows.append({"attribute": attribute, "group": str(group),
                                   "n": int(res.counts[group]), "metric": str(metric),
                                   "value": float(value), "suppressed": False,
                                   "complementary": False, "small_sample": small})
        for group in res.suppressed.index:
            group_rows.append({"attribute": attribute, "group": str(group),
                               "n": int(res.suppressed[group]), "metric": "",
                               "value": math.nan, "suppressed": True,
                               "complementary": group in res.complementary,
                               "small_sample": False})
        for metric, gap in res.gaps.items():
            gap_rows.append({"attribute": attribute, "metric": str(metric), "gap": float(gap),
                             "n_seeds": n_seeds})
    return pd.DataFrame(group_rows), pd.DataFrame(gap_rows)
