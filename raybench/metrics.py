"""Evaluation metrics for raybench tasks, computed on probabilities with scikit-learn.

Three task kinds are supported:

* ``"binary"``: ``y_true`` shape ``[N]`` in {0, 1}; ``y_prob`` shape ``[N]`` or ``[N, 1]``
  (probability of the positive class).
* ``"multilabel"``: ``y_true`` ``[N, K]`` in {0, 1}; ``y_prob`` ``[N, K]`` (one sigmoid per label).
* ``"multiclass"``: ``y_true`` ``[N]`` ints in ``0..C-1``; ``y_prob`` ``[N, C]`` rows summing to 1.

Inputs are always probabilities, never logits: values outside [0, 1] raise ``ValueError``.
Everything scikit-learn has (AUROC, AUPRC, F1, precision, recall, accuracy, Cohen's kappa,
confusion matrices) is delegated to it. Only ECE (absent from scikit-learn), specificity (read
from ``confusion_matrix``) and the length-of-stay error are computed here.

Metrics that are undefined on the data (a single class in ``y_true``, no predicted positives for
precision...) are ``float("nan")``, never an exception. :func:`compute_metrics` is the single
entry point; it returns a flat ``dict[str, float]`` with stable keys.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from raybench.errors import RaybenchError

__all__ = [
    "KINDS",
    "MEDMOD_LOS_BUCKET_EDGES_DAYS",
    "SELECTION_METRIC",
    "MetricInputError",
    "bucket_means_from_train",
    "compute_metrics",
    "expected_calibration_error",
    "higher_is_better",
    "los_mad_days",
    "validate_inputs",
]

KINDS = ("binary", "multilabel", "multiclass")
SELECTION_METRIC = {"binary": "auprc", "multilabel": "auprc_macro", "multiclass": "kappa_linear"}
#: MedMod's remaining-LoS buckets in days: <1, 1-2, ..., 7-8, 8-14, >14 (10 buckets).
MEDMOD_LOS_BUCKET_EDGES_DAYS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 14, math.inf)

_LOWER_IS_BETTER = frozenset({"ece", "los_mad_days"})
_KNOWN_METRICS = frozenset(
    {"auroc", "auprc", "f1", "precision", "recall", "specificity", "accuracy", "ece"}
    | {f"{m}_{a}" for m in ("auroc", "auprc") for a in ("macro", "micro", "weighted")}
    | {f"{m}_macro" for m in ("f1", "precision", "recall", "specificity", "accuracy")}
    | {"kappa", "kappa_linear", "kappa_quadratic", "auroc_ovr_macro", "los_mad_days"}
)
_EXPECTED_SHAPES = {
    "binary": "y_true [N] and y_prob [N] or [N, 1] (positive-class probability)",
    "multilabel": "y_true and y_prob both [N, K]",
    "multiclass": "y_true [N] and y_prob [N, C] with C >= 2",
}
_PROB_TOL = 1e-6  # float rounding slack for the [0, 1] check
_ROW_SUM_TOL = 1e-4  # multiclass rows must sum to 1 within this


class MetricInputError(RaybenchError, ValueError):
    """Bad metric input (shape, range, kind); a ``ValueError`` and a ``RaybenchError``."""


def _nan_if_undefined(fn, *args, **kwargs) -> float:
    """Call a scikit-learn metric, silencing its undefined-metric warnings; NaN on ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return float(fn(*args, **kwargs))
        except ValueError:
            return float("nan")


def _check_probs(y_prob: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(y_prob)):
        raise MetricInputError("y_prob contains NaN or infinite values")
    if y_prob.min() < -_PROB_TOL or y_prob.max() > 1 + _PROB_TOL:
        raise MetricInputError(
            f"y_prob has values in [{y_prob.min():.4g}, {y_prob.max():.4g}], outside [0, 1]: "
            "looks like logits — pass probabilities (apply sigmoid/softmax first)"
        )
    return np.clip(y_prob, 0.0, 1.0)


def _check_binary_labels(y_true: np.ndarray) -> np.ndarray:
    if not np.all(np.isin(y_true, (0, 1))):
        raise MetricInputError("y_true must contain only 0 and 1 for binary/multilabel tasks")
    return y_true.astype(np.int64)


def validate_inputs(kind: str, y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes/values for ``kind`` and return ``(y_true, y_prob)`` as clean numpy arrays.

    Binary ``y_prob`` ``[N, 1]`` is flattened to ``[N]``; multiclass rows are renormalised after
    the sum-to-1 check (tolerance 1e-4). Raises :class:`MetricInputError` (a ``ValueError``) on
    an unknown kind, shape mismatch, empty input, non-finite values, labels out of range, or
    probabilities outside [0, 1] (the usual sign of logits).
    """
    if kind not in KINDS:
        raise MetricInputError(f"unknown task kind {kind!r}; expected one of {KINDS}")
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.shape[:1] != y_prob.shape[:1] or y_true.size == 0:
        raise MetricInputError(
            f"y_true {y_true.shape} and y_prob {y_prob.shape} must be non-empty with the same N"
        )
    if kind == "binary" and y_prob.ndim == 2 and y_prob.shape[1] == 1:
        y_prob = y_prob[:, 0]
    bad_shape = {
        "binary": y_true.ndim != 1 or y_prob.ndim != 1,
        "multilabel": y_true.ndim != 2 or y_true.shape != y_prob.shape,
        "multiclass": y_true.ndim != 1 or y_prob.ndim != 2 or y_prob.shape[1] < 2,
    }[kind]
    if bad_shape:
        raise MetricInputError(
            f"{kind} expects {_EXPECTED_SHAPES[kind]}; got y_true {y_true.shape}, "
            f"y_prob {y_prob.shape}"
        )
    if kind != "multiclass":
        return _check_binary_labels(y_true), _check_probs(y_prob)
    n_classes = y_prob.shape[1]
    if not np.all(np.isfinite(y_true.astype(np.float64))) or not np.all(y_true == np.round(y_true)):
        raise MetricInputError("multiclass y_true must be integer class indices")
    y_true = y_true.astype(np.int64)
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise MetricInputError(f"multiclass y_true must lie in 0..{n_classes - 1}")
    y_prob = _check_probs(y_prob)
    sums = y_prob.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=_ROW_SUM_TOL, rtol=0):
        raise MetricInputError(
            "multiclass y_prob rows must sum to 1 (softmax output); "
            f"row sums range over [{sums.min():.4g}, {sums.max():.4g}]"
        )
    return y_true, y_prob / sums[:, None]


def _ece_bins(correct: np.ndarray, conf: np.ndarray, n_bins: int) -> float:
    """sum_b (n_b / N) * |mean(correct in b) - mean(conf in b)|, bins [i/n, (i+1)/n)."""
    idx = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / conf.size)  # n_b/N * |acc_sum-conf_sum|/n_b


def expected_calibration_error(kind: str, y_true, y_prob, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins over [0, 1].

    ECE = sum_b (n_b / N) * |acc_b - conf_b|. Bins are ``[i/n, (i+1)/n)``, the last one closed
    (a probability of exactly 1.0 falls in the top bin); empty bins contribute nothing.

    * binary: reliability-diagram ECE on the positive-class probability: ``acc_b`` = fraction
      of positives in the bin, ``conf_b`` = mean predicted probability in the bin.
    * multilabel: the same per label, then the unweighted mean over labels (labels with a
      single class in ``y_true`` included: their ECE is still defined).
    * multiclass: top-label ECE: ``conf`` = max class probability, ``acc_b`` = fraction of
      samples in the bin whose argmax equals the true class.
    """
    y_true, y_prob = validate_inputs(kind, y_true, y_prob)
    if n_bins < 1:
        raise MetricInputError(f"n_bins must be >= 1, got {n_bins}")
    if kind == "binary":
        return _ece_bins(y_true, y_prob, n_bins)
    if kind == "multilabel":
        return float(
            np.mean([_ece_bins(y_true[:, k], y_prob[:, k], n_bins) for k in range(y_true.shape[1])])
        )
    pred = y_prob.argmax(axis=1)
    return _ece_bins(pred == y_true, y_prob.max(axis=1), n_bins)


def los_mad_days(
    remaining_hours_true: np.ndarray,
    y_prob: np.ndarray,
    bucket_means_hours: np.ndarray,
    reduce: str = "expected",
) -> float:
    """Mean absolute deviation, in DAYS, of predicted vs. true remaining length of stay.

    ``y_prob`` ``[N, C]`` is the bucket distribution and ``bucket_means_hours`` ``[C]`` the
    representative remaining stay of each bucket (see :func:`bucket_means_from_train`). The
    predicted remaining stay (hours) is ``sum_c p_c * mean_c`` for ``reduce="expected"`` or the
    mean of the argmax bucket for ``reduce="argmax"``. Result: ``mean(|pred - true|) / 24``.

    Note on MedMod: its implementation computes
    ``mean_absolute_error(true remaining LoS in hours, max class probability)``, i.e. it compares
    hours with a probability in [0, 1], so its reported "MAD" is roughly the mean remaining LoS in
    hours and says nothing about the model. Its anchors define bucket boundaries but never use
    them to map a prediction back to a duration. raybench converts buckets to hours through the
    bucket means and reports days, so the numbers are not comparable with MedMod's.
    """
    true = np.asarray(remaining_hours_true, dtype=np.float64)
    means = np.asarray(bucket_means_hours, dtype=np.float64)
    if true.ndim != 1 or not np.all(np.isfinite(true)):
        raise MetricInputError("remaining_hours_true must be a finite 1-D array")
    _, prob = validate_inputs("multiclass", np.zeros(true.shape[0], dtype=np.int64), y_prob)
    if means.shape != (prob.shape[1],) or not np.all(np.isfinite(means)):
        raise MetricInputError(
            f"bucket_means_hours must be finite with shape ({prob.shape[1]},), got {means.shape}"
        )
    if reduce == "expected":
        pred = prob @ means
    elif reduce == "argmax":
        pred = means[prob.argmax(axis=1)]
    else:
        raise MetricInputError(f"reduce must be 'expected' or 'argmax', got {reduce!r}")
    return float(np.mean(np.abs(pred - true)) / 24.0)


def bucket_means_from_train(
    remaining_hours: np.ndarray,
    buckets: np.ndarray,
    n_buckets: int,
    edges_days: Sequence[float] = MEDMOD_LOS_BUCKET_EDGES_DAYS,
) -> np.ndarray:
    """Per-bucket mean remaining stay in hours, estimated on TRAINING data only.

    ``buckets`` holds each sample's bucket index (0..n_buckets-1). A bucket with no training
    sample falls back to its midpoint from ``edges_days`` (in hours); if that bucket is the last,
    open-ended one (upper edge ``inf``), the fallback is its lower edge + 7 days.
    ``edges_days`` must have ``n_buckets + 1`` entries (default: MedMod's 10 buckets).
    """
    hours = np.asarray(remaining_hours, dtype=np.float64)
    idx = np.asarray(buckets)
    edges = np.asarray(edges_days, dtype=np.float64)
    if hours.ndim != 1 or hours.shape != idx.shape:
        raise MetricInputError(f"remaining_hours {hours.shape} and buckets {idx.shape} differ")
    if edges.shape != (n_buckets + 1,):
        raise MetricInputError(f"edges_days needs {n_buckets + 1} entries, got {edges.size}")
    if not np.all(np.isfinite(hours)):
        raise MetricInputError("remaining_hours must be finite")
    if idx.size and (not np.all(idx == np.round(idx)) or idx.min() < 0 or idx.max() >= n_buckets):
        raise MetricInputError(f"buckets must be integers in 0..{n_buckets - 1}")
    idx = idx.astype(np.int64)
    counts = np.bincount(idx, minlength=n_buckets)
    sums = np.bincount(idx, weights=hours, minlength=n_buckets)
    lo, hi = edges[:-1], edges[1:]
    fallback_days = np.where(np.isinf(hi), lo + 7.0, (lo + hi) / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, fallback_days * 24.0)


def _binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict:
    nan = float("nan")
    ranked = np.unique(y_true).size > 1
    pred = (y_prob >= threshold).astype(np.int64)
    tn, fp, _fn, _tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    return {
        "auroc": _nan_if_undefined(roc_auc_score, y_true, y_prob) if ranked else nan,
        "auprc": _nan_if_undefined(average_precision_score, y_true, y_prob) if ranked else nan,
        "f1": _nan_if_undefined(f1_score, y_true, pred, zero_division=np.nan),
        "precision": _nan_if_undefined(precision_score, y_true, pred, zero_division=np.nan),
        "recall": _nan_if_undefined(recall_score, y_true, pred, zero_division=np.nan),
        "specificity": float(tn / (tn + fp)) if tn + fp > 0 else nan,
        "accuracy": float(accuracy_score(y_true, pred)),
    }


def _multilabel_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float, names: list[str]
) -> dict:
    nan = float("nan")
    out: dict[str, float] = {}
    valid = np.array([np.unique(y_true[:, k]).size > 1 for k in range(y_true.shape[1])])
    yv, pv = y_true[:, valid], y_prob[:, valid]
    flat_ok = np.unique(y_true).size > 1
    for key, fn in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        for avg in ("macro", "weighted"):
            out[f"{key}_{avg}"] = _nan_if_undefined(fn, yv, pv, average=avg) if valid.any() else nan
        out[f"{key}_micro"] = (
            _nan_if_undefined(fn, y_true, y_prob, average="micro") if flat_ok else nan
        )
    pred = (y_prob >= threshold).astype(np.int64)
    for key, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        out[f"{key}_macro"] = _nan_if_undefined(
            fn, y_true, pred, average="macro", zero_division=np.nan
        )
    mcm = multilabel_confusion_matrix(y_true, pred)  # [K, 2, 2]: [[tn, fp], [fn, tp]]
    neg = mcm[:, 0, 0] + mcm[:, 0, 1]
    spec = np.where(neg > 0, mcm[:, 0, 0] / np.maximum(neg, 1), np.nan)
    out["specificity_macro"] = float(np.nanmean(spec)) if np.any(neg > 0) else nan
    out["accuracy_macro"] = float(
        np.mean([accuracy_score(y_true[:, k], pred[:, k]) for k in range(y_true.shape[1])])
    )
    for k, name in enumerate(names):
        for key, fn in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
            ok = bool(valid[k])
            out[f"{key}/{name}"] = _nan_if_undefined(fn, y_true[:, k], y_prob[:, k]) if ok else nan
    return out


def _multiclass_metrics(y_true: np.ndarray, y_prob: np.ndarray) -> dict:
    n_classes = y_prob.shape[1]
    labels = list(range(n_classes))
    pred = y_prob.argmax(axis=1)
    out = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1_macro": _nan_if_undefined(
            f1_score, y_true, pred, labels=labels, average="macro", zero_division=np.nan
        ),
    }
    for key, w in (("kappa", None), ("kappa_linear", "linear"), ("kappa_quadratic", "quadratic")):
        out[key] = _nan_if_undefined(cohen_kappa_score, y_true, pred, labels=labels, weights=w)
    present = np.unique(y_true)
    if present.size < 2:
        out["auroc_ovr_macro"] = float("nan")
    elif present.size == n_classes:
        out["auroc_ovr_macro"] = _nan_if_undefined(
            roc_auc_score, y_true, y_prob, multi_class="ovr", average="macro", labels=labels
        )
    else:  # absent classes skipped: macro over one-vs-rest columns of the classes present
        onehot = (y_true[:, None] == present[None, :]).astype(np.int64)
        out["auroc_ovr_macro"] = _nan_if_undefined(
            roc_auc_score, onehot, y_prob[:, present], average="macro"
        )
    return out


def compute_metrics(
    kind: str,
    y_true,
    y_prob,
    *,
    threshold: float = 0.5,
    label_names: Sequence[str] | None = None,
    remaining_hours=None,
    bucket_means_hours=None,
) -> dict[str, float]:
    """All metrics for one task kind as a flat ``{name: float}`` dict with stable keys.

    Keys by kind:

    * binary: ``auroc, auprc, f1, precision, recall, specificity, accuracy, ece``.
    * multilabel: ``auroc_{macro,micro,weighted}, auprc_{macro,micro,weighted}, f1_macro,
      precision_macro, recall_macro, specificity_macro, accuracy_macro, ece`` plus per label
      ``auroc/<name>`` and ``auprc/<name>`` (name = ``label_names[k]`` or ``str(k)``).
    * multiclass: ``accuracy, f1_macro, kappa, kappa_linear, kappa_quadratic,
      auroc_ovr_macro, ece`` and ``los_mad_days`` when both ``remaining_hours`` and
      ``bucket_means_hours`` are given (see :func:`los_mad_days`, expected-value reduction).

    Thresholded metrics predict positive when ``prob >= threshold``; multiclass uses argmax.
    Undefined values are NaN: AUROC/AUPRC when ``y_true`` has one class; precision with no
    predicted positives; recall with no positives; specificity with no negatives; kappa when
    truth and prediction are one and the same class. Multilabel labels whose ``y_true`` has a
    single class are skipped from the macro and weighted AUROC/AUPRC and reported as NaN per
    label; macro F1/precision/recall/specificity average over the labels where each is defined.
    Micro AUROC/AUPRC pool all labels. Multiclass one-vs-rest AUROC averages over the classes
    present in ``y_true`` (sklearn's ``multi_class="ovr"`` when all are present).
    """
    y_true, y_prob = validate_inputs(kind, y_true, y_prob)
    if not 0.0 <= threshold <= 1.0:
        raise MetricInputError(f"threshold must be in [0, 1], got {threshold}")
    if (remaining_hours is None) != (bucket_means_hours is None):
        raise MetricInputError("give both remaining_hours and bucket_means_hours, or neither")
    if remaining_hours is not None and kind != "multiclass":
        raise MetricInputError("los_mad_days needs kind='multiclass' (bucket probabilities)")
    if kind == "binary":
        out = _binary_metrics(y_true, y_prob, threshold)
    elif kind == "multilabel":
        n_labels = y_true.shape[1]
        names = [str(k) for k in range(n_labels)] if label_names is None else list(label_names)
        if len(names) != n_labels or len(set(names)) != n_labels:
            raise MetricInputError(f"label_names must be {n_labels} distinct names")
        out = _multilabel_metrics(y_true, y_prob, threshold, names)
    else:
        out = _multiclass_metrics(y_true, y_prob)
    out["ece"] = expected_calibration_error(kind, y_true, y_prob)
    if remaining_hours is not None:
        out["los_mad_days"] = los_mad_days(remaining_hours, y_prob, bucket_means_hours)
    return out


def higher_is_better(metric_name: str) -> bool:
    """True when a larger value of ``metric_name`` is better (False for ``ece``, ``los_mad_days``).

    Per-label keys (``auroc/<name>``) are judged by their prefix. Unknown names raise
    :class:`MetricInputError` so a typo in a study's selection metric fails early.
    """
    base = metric_name.split("/", 1)[0]
    if base not in _KNOWN_METRICS or ("/" in metric_name and base not in ("auroc", "auprc")):
        raise MetricInputError(f"unknown metric {metric_name!r}; known: {sorted(_KNOWN_METRICS)}")
    return base not in _LOWER_IS_BETTER
