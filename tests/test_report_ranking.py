"""The report's fast AUROC / average precision equal scikit-learn's, ties included."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from raybench.report.ranking import average_precision_columns, roc_auc_columns


@pytest.mark.parametrize("n, levels", [(7, 3), (50, 5), (200, 1000), (333, 0)])
def test_columns_equal_sklearn(n, levels):
    rng = np.random.default_rng(n)
    y = (rng.random((n, 6)) < [0.05, 0.2, 0.5, 0.7, 0.9, 0.3]).astype(int)
    y[0, :], y[1, :] = 1, 0  # every column has both classes
    score = rng.random((n, 6)) + 0.3 * y
    if levels:  # coarse scores: many ties, the case where the two definitions could differ
        score = np.round(score * levels) / levels
    for column in range(6):
        assert roc_auc_columns(y, score)[column] == pytest.approx(
            roc_auc_score(y[:, column], score[:, column]), abs=1e-12)
        assert average_precision_columns(y, score)[column] == pytest.approx(
            average_precision_score(y[:, column], score[:, column]), abs=1e-12)
    assert roc_auc_columns(y[:, 2], score[:, 2]).shape == (1,)


def test_one_class_columns_are_nan():
    y = np.array([[1, 0], [1, 1], [1, 0]])
    score = np.array([[0.2, 0.1], [0.4, 0.9], [0.1, 0.3]])
    auc, ap = roc_auc_columns(y, score), average_precision_columns(y, score)
    assert np.isnan(auc[0]) and auc[1] == 1.0
    assert ap[0] == 1.0 and ap[1] == 1.0
    assert np.isnan(average_precision_columns(np.zeros(4), np.arange(4.0))[0])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        roc_auc_columns(np.zeros((3, 2)), np.zeros((3, 1)))
