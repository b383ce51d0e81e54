"""Tests for raybench.metrics: values checked against scikit-learn called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
)

from raybench.errors import RaybenchError
from raybench.metrics import (
    MEDMOD_LOS_BUCKET_EDGES_DAYS,
    SELECTION_METRIC,
    bucket_means_from_train,
    compute_metrics,
    expected_calibration_error,
    higher_is_better,
    los_mad_days,
)

BINARY_KEYS = {"auroc", "auprc", "f1", "precision", "recall", "specificity", "accuracy", "ece"}
MULTILABEL_KEYS = {
    *(f"{m}_{a}" for m in ("auroc", "auprc") for a in ("macro", "micro", "weighted")),
    *(f"{m}_macro" for m in ("f1", "precision", "recall", "specificity", "accuracy")),
    "ece",
}
MULTICLASS_KEYS = {
    "accuracy",
    "f1_macro",
    "kappa",
    "kappa_linear",
    "kappa_quadratic",
    "auroc_ovr_macro",
    "ece",
}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 300), 0, 1)
    return y, p


@pytest.fixture
def multilabel_data():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(400, 5)) < [0.1, 0.3, 0.5, 0.2, 0.05]).astype(int)
    p = np.clip(0.25 * y + rng.uniform(0, 0.75, y.shape), 0, 1)
    return y, p


@pytest.fixture
def multiclass_data():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 6, 500)
    logits = rng.normal(size=(500, 6))
    logits[np.arange(500), y] += 1.0
    return y, _softmax(logits)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_matches_sklearn(binary_data, threshold):
    y, p = binary_data
    m = compute_metrics("binary", y, p, threshold=threshold)
    pred = (p >= threshold).astype(int)
    assert set(m) == BINARY_KEYS
    assert all(type(v) is float for v in m.values())
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    # [N, 1] probabilities are the same task
    assert compute_metrics("binary", y, p[:, None], threshold=threshold) == m


def test_specificity_hand_confusion_matrix():
    # negatives: 0.1, 0.2, 0.4 -> TN; 0.6 -> FP. positives: 0.7, 0.9 -> TP; 0.3 -> FN.
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.4, 0.6, 0.7, 0.9, 0.3])
    m = compute_metrics("binary", y, p)
    assert m["specificity"] == pytest.approx(3 / 4)  # TN / (TN + FP)
    assert m["recall"] == pytest.approx(2 / 3)  # TP / (TP + FN)
    assert m["precision"] == pytest.approx(2 / 3)  # TP / (TP + FP)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # threshold moves predictions: at 0.65 the FP at 0.6 becomes a TN
    assert compute_metrics("binary", y, p, threshold=0.65)["specificity"] == 1.0


@pytest.mark.filterwarnings("error")
def test_multilabel_matches_sklearn(multilabel_data):
    y, p = multilabel_data
    names = ["Atelectasis", "Cardiomegaly", "Edema", "Effusion", "Pneumothorax"]
    m = compute_metrics("multilabel", y, p, label_names=names)
    assert set(m) == MULTILABEL_KEYS | {f"{k}/{n}" for k in ("auroc", "auprc") for n in names}
    for avg in ("macro", "micro", "weighted"):
        assert m[f"auroc_{avg}"] == pytest.approx(roc_auc_score(y, p, average=avg))
        assert m[f"auprc_{avg}"] == pytest.approx(average_precision_score(y, p, average=avg))
    for k, name in enumerate(names):
        assert m[f"auroc/{name}"] == pytest.approx(roc_auc_score(y[:, k], p[:, k]))
        assert m[f"auprc/{name}"] == pytest.approx(average_precision_score(y[:, k], p[:, k]))
    pred = (p >= 0.5).astype(int)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["precision_macro"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["accuracy_macro"] == pytest.approx((pred == y).mean())
    tn = ((pred == 0) & (y == 0)).sum(axis=0)
    fp = ((pred == 1) & (y == 0)).sum(axis=0)
    assert m["specificity_macro"] == pytest.approx(np.mean(tn / (tn + fp)))
    # default names are the column indices
    default = compute_metrics("multilabel", y, p)
    assert default["auroc/2"] == m["auroc/Edema"]


@pytest.mark.filterwarnings("error")
def test_multilabel_single_class_labels_are_nan_and_skipped(multilabel_data):
    y, p = multilabel_data
    y = y.copy()
    y[:, 1] = 0  # no positives
    y[:, 3] = 1  # no negatives
    m = compute_metrics("multilabel", y, p)
    valid = [0, 2, 4]
    for k in (1, 3):
        assert math.isnan(m[f"auroc/{k}"]) and math.isnan(m[f"auprc/{k}"])
    for k in valid:
        assert not math.isnan(m[f"auroc/{k}"])
    for avg in ("macro", "weighted"):
        yv, pv = y[:, valid], p[:, valid]
        assert m[f"auroc_{avg}"] == pytest.approx(roc_auc_score(yv, pv, average=avg))
        assert m[f"auprc_{avg}"] == pytest.approx(average_precision_score(yv, pv, average=avg))
    assert m["auroc_micro"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    # all labels single-class -> NaN, not an exception
    m0 = compute_metrics("multilabel", np.zeros((10, 3), int), np.full((10, 3), 0.2))
    assert math.isnan(m0["auroc_macro"]) and math.isnan(m0["auprc_micro"])
    assert math.isnan(m0["precision_macro"])  # nothing predicted positive
    assert m0["specificity_macro"] == 1.0 and m0["accuracy_macro"] == 1.0


@pytest.mark.filterwarnings("error")
def test_binary_single_class_is_nan():
    m = compute_metrics("binary", np.zeros(20, int), np.linspace(0, 0.4, 20))
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    assert math.isnan(m["recall"]) and math.isnan(m["precision"])
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0


@pytest.mark.filterwarnings("error")
def test_multiclass_matches_sklearn(multiclass_data):
    y, p = multiclass_data
    m = compute_metrics("multiclass", y, p)
    pred = p.argmax(axis=1)
    assert set(m) == MULTICLASS_KEYS
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    assert m["kappa_linear"] == pytest.approx(cohen_kappa_score(y, pred, weights="linear"))
    assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["kappa_linear"] != pytest.approx(m["kappa_quadratic"])
    assert m["auroc_ovr_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))


@pytest.mark.filterwarnings("error")
def test_multiclass_absent_class_auroc_over_present_classes(multiclass_data):
    y, p = multiclass_data
    keep = y != 4
    y, p = y[keep], p[keep]
    m = compute_metrics("multiclass", y, p)
    present = [0, 1, 2, 3, 5]
    expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in present])
    assert m["auroc_ovr_macro"] == pytest.approx(expected)
    m1 = compute_metrics("multiclass", np.zeros(5, int), np.tile([0.9, 0.1], (5, 1)))
    assert math.isnan(m1["auroc_ovr_macro"]) and math.isnan(m1["kappa"])
    assert m1["accuracy"] == 1.0


def test_ece_hand_cases():
    # perfectly calibrated bins: positive fraction equals the probability in each bin
    p = np.r_[np.full(20, 0.25), np.full(8, 0.75), np.full(20, 0.95)]
    y = np.r_[np.ones(5), np.zeros(15), np.ones(6), np.zeros(2), np.ones(19), np.zeros(1)]
    assert expected_calibration_error("binary", y, p) == pytest.approx(0.0, abs=1e-12)
    # all confident and wrong
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert expected_calibration_error("binary", y, p) == pytest.approx(1.0)
    # globally calibrated (mean p == mean y) but each bin is off by 0.9: binning matters
    y = np.r_[np.ones(5), np.zeros(5)]
    p = np.r_[np.full(5, 0.1), np.full(5, 0.9)]
    assert expected_calibration_error("binary", y, p) == pytest.approx(0.9)
    # two bins weighted by size: 5 at 0.9 all negative (gap .9), 5 at 0.2 with 1 positive (gap 0)
    y_b = np.r_[np.zeros(5), [1, 0, 0, 0, 0]]
    p_b = np.r_[np.full(5, 0.9), np.full(5, 0.2)]
    assert expected_calibration_error("binary", y_b, p_b) == pytest.approx(0.45)
    # multilabel: mean of per-label ECE (0 and 0.45)
    y_ml = np.c_[np.r_[np.ones(5), np.zeros(5)], y_b]
    p_ml = np.c_[np.full(10, 0.5), p_b]
    assert expected_calibration_error("multilabel", y_ml, p_ml) == pytest.approx(0.225)
    assert compute_metrics("multilabel", y_ml, p_ml)["ece"] == pytest.approx(0.225)


def test_ece_multiclass_top_label():
    p = np.tile([0.8, 0.1, 0.1], (6, 1))
    assert expected_calibration_error("multiclass", np.ones(6, int), p) == pytest.approx(0.8)
    # confidence 0.5, half correct -> calibrated
    p = np.tile([0.5, 0.3, 0.2], (4, 1))
    assert expected_calibration_error("multiclass", np.array([0, 0, 1, 2]), p) == pytest.approx(0)
    # 0.6-confident, 3 of 4 right -> |0.75 - 0.6|
    p = np.tile([0.2, 0.6, 0.2], (4, 1))
    y = np.array([1, 1, 1, 0])
    assert compute_metrics("multiclass", y, p)["ece"] == pytest.approx(0.15)


def test_los_mad_days_hand_case():
    means = np.array([12.0, 36.0, 60.0])
    prob = np.array([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]])
    true = np.array([48.0, 12.0])
    # expected: 0.6*12 + 0.4*36 = 21.6 h -> |21.6-48| = 26.4; 60 vs 12 -> 48; mean 37.2 h
    assert los_mad_days(true, prob, means) == pytest.approx(37.2 / 24)
    # argmax: 12 vs 48 -> 36; 60 vs 12 -> 48; mean 42 h
    assert los_mad_days(true, prob, means, reduce="argmax") == pytest.approx(42 / 24)
    m = compute_metrics(
        "multiclass", np.array([1, 0]), prob, remaining_hours=true, bucket_means_hours=means
    )
    assert m["los_mad_days"] == pytest.approx(37.2 / 24)
    assert not higher_is_better("los_mad_days")
    with pytest.raises(ValueError, match="reduce"):
        los_mad_days(true, prob, means, reduce="median")
    with pytest.raises(ValueError, match="bucket_means_hours"):
        los_mad_days(true, prob, means[:2])


def test_medmod_los_formula_is_on_the_hours_scale():
    rng = np.random.default_rng(3)
    hours = rng.exponential(90.0, 2000)
    edges_h = np.asarray(MEDMOD_LOS_BUCKET_EDGES_DAYS) * 24
    buckets = np.digitize(hours, edges_h[1:-1])
    means = bucket_means_from_train(hours, buckets, 10)
    logits = rng.normal(size=(2000, 10))
    logits[np.arange(2000), buckets] += 2.0
    prob = _softmax(logits)
    ours = los_mad_days(hours, prob, means)
    medmod = mean_absolute_error(hours, prob.max(axis=1))  # MedMod: hours vs a probability
    assert abs(medmod - hours.mean()) < 1.0  # it is essentially the mean remaining LoS in hours
    assert ours < 3.0 and medmod > 20 * ours


def test_bucket_means_from_train():
    assert len(MEDMOD_LOS_BUCKET_EDGES_DAYS) == 11 and MEDMOD_LOS_BUCKET_EDGES_DAYS[-1] == math.inf
    hours = np.array([5.0, 15.0, 50.0, 70.0, 400.0])
    buckets = np.array([0, 0, 2, 2, 9])
    means = bucket_means_from_train(hours, buckets, 10)
    assert means.shape == (10,)
    assert means[0] == 10.0 and means[2] == 60.0 and means[9] == 400.0
    assert means[1] == 1.5 * 24  # empty -> midpoint of [1, 2) days
    assert means[8] == 11 * 24  # empty -> midpoint of [8, 14) days
    empty_last = bucket_means_from_train(hours[:4], buckets[:4], 10)
    assert empty_last[9] == (14 + 7) * 24  # open bucket -> lower edge + 7 days
    with pytest.raises(ValueError, match="buckets"):
        bucket_means_from_train(hours, np.array([0, 0, 2, 2, 10]), 10)
    with pytest.raises(ValueError, match="edges_days"):
        bucket_means_from_train(hours, buckets, 12)


@pytest.mark.parametrize(
    ("kind", "y", "p", "match"),
    [
        ("binary", [0, 1, 1], [-2.0, 0.5, 3.1], "logits"),
        ("multilabel", [[0, 1]], [[0.2, 1.7]], "logits"),
        ("binary", [0, 1, 1], [0.1, 0.5], "same N"),
        ("binary", [0, 1], [[0.1, 0.9], [0.4, 0.6]], "binary expects"),
        ("multilabel", [[0, 1], [1, 0]], [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]], "multilabel expects"),
        ("multiclass", [0, 1], [0.1, 0.9], "multiclass expects"),
        ("multiclass", [0, 1], [[0.3, 0.3], [0.5, 0.5]], "sum to 1"),
        ("multiclass", [0, 2], [[0.3, 0.7], [0.5, 0.5]], "0..1"),
        ("binary", [0, 2], [0.3, 0.7], "only 0 and 1"),
        ("binary", [0, 1], [np.nan, 0.7], "NaN"),
        ("regression", [0, 1], [0.3, 0.7], "unknown task kind"),
    ],
)
def test_validation_errors(kind, y, p, match):
    with pytest.raises(ValueError, match=match) as err:
        compute_metrics(kind, np.asarray(y), np.asarray(p))
    assert isinstance(err.value, RaybenchError)


def test_argument_errors(binary_data, multilabel_data):
    y, p = binary_data
    with pytest.raises(ValueError, match="threshold"):
        compute_metrics("binary", y, p, threshold=1.5)
    with pytest.raises(ValueError, match="both"):
        compute_metrics("binary", y, p, remaining_hours=np.ones(len(y)))
    with pytest.raises(ValueError, match="multiclass"):
        compute_metrics(
            "binary", y, p, remaining_hours=np.ones(len(y)), bucket_means_hours=np.ones(2)
        )
    ym, pm = multilabel_data
    with pytest.raises(ValueError, match="label_names"):
        compute_metrics("multilabel", ym, pm, label_names=["a", "b"])


def test_selection_metric_and_direction(binary_data, multilabel_data, multiclass_data):
    data = {"binary": binary_data, "multilabel": multilabel_data, "multiclass": multiclass_data}
    for kind, (y, p) in data.items():
        keys = compute_metrics(kind, y, p).keys()
        assert SELECTION_METRIC[kind] in keys
        assert higher_is_better(SELECTION_METRIC[kind])
        for key in keys:
            assert higher_is_better(key) is (key != "ece")
    assert not higher_is_better("ece")
    assert higher_is_better("auroc/Edema")
    for bad in ("auprc_macr", "ece/Edema", ""):
        with pytest.raises(ValueError, match="unknown metric"):
            higher_is_better(bad)
