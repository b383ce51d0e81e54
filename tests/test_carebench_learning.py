"""Learning on planted signals and missing images at test time, for every fusion method.

Parametrised over the registry: every registered supervised method that uses both
modalities is checked, so a new one is covered automatically. Settings (issue 14): the synthetic
800-patient dataset (``prepared_medium``: 64 px images), ``resnet_tiny``, hidden 32, one EHR
layer, no augmentation, seeds 0/1/2, 12 epochs selected on validation, batch 32, the last 64
EHR steps; ``lr`` 1e-3 (the EHR LSTM baseline 3e-3, as in ``test_training.py``; MMTM two
EHR layers, its minimum; 8 px patches for HEALNet and UMSE).

1. Matched cohort (samples with an image): the 3-seed mean test AUROC on *Congestive heart
   failure* (planted in the image only) must beat ``ehr_lstm``'s by 0.10, and on *Essential
   hypertension* (planted in the EHR only) ``cxr_resnet``'s by 0.10.
2. Base cohort with half of the test stays' images removed (``cxr_missing_splits: [test]``,
   ratio 0.5): for each method that handles missing images, the 3-seed mean hypertension
   AUROC on the test samples whose image was removed must be within 0.03 of ``ehr_lstm``'s
   on the same samples.

Slow (hours on 2 shared CPU cores for all methods). Set ``RAYBENCH_LEARNING_LOG=path`` to
append every per-seed figure to ``path`` as JSON lines (the tables in ``docs/models.md``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from preprocessing.phenotypes import phenotype_names
from raybench import trainer as T
from raybench.data import LoaderConfig, load_prepared
from raybench.models import get_model, list_models
from raybench.models.ssl_base import SelfSupervisedModel

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)
#: Supervised fusion methods (the self-supervised ones have their own protocol and learning
#: tests: tests/test_ssl_learning.py).
BOTH = [n for n in list_models() if get_model(n).modalities == {"ehr", "cxr"}
        and not issubclass(get_model(n), SelfSupervisedModel)]
MISSING_AWARE = [n for n in BOTH if get_model(n).handles_missing_cxr]
SETTINGS = {"hidden": 32, "ehr_layers": 1, "lr": 1e-3, "cxr_backbone": "resnet_tiny",
            "pretrained": False, "nhead": 2}
#: Per-method exceptions: the EHR LSTM baseline's learning rate (as in test_training.py);
#: MMTM acts between the first LSTM layer and the others, so it needs two.
#: HEALNet and UMSE embed image patches themselves; 8 px divides the 56 px crop.
OVERRIDES = {"ehr_lstm": {"lr": 3e-3}, "mmtm": {"ehr_layers": 2},
             "healnet": {"healnet_patch": 8}, "umse": {"umse_patch": 8}}
CHF = "Congestive heart failure; nonhypertensive"
HTN = "Essential hypertension"
_CACHE: dict[tuple[str, str, int], object] = {}


def hparams(method: str) -> dict:
    """The learning-test settings that ``method`` has."""
    defaults = get_model(method).default_hparams()
    chosen = {k: v for k, v in SETTINGS.items() if k in defaults}
    return {**chosen, **OVERRIDES.get(method, {})}


def train(data, method: str, setting: str, seed: int) -> T.TrainResult:
    """One run, cached: ``setting`` "matched", or "missing" (base, half the test images out)."""
    key = (method, setting, seed)
    if key not in _CACHE:
        cfg = T.TrainConfig(
            epochs=12, patience=12, seed=seed,
            cohort="matched" if setting == "matched" else "base",
            cxr_missing_ratio=0.5 if setting == "missing" else 0.0,
            cxr_missing_splits=("test",),
            loader=LoaderConfig(batch_size=32, max_len=64, augment=False))
        _CACHE[key] = T.train_and_evaluate(data, method, hparams(method), cfg)
    return _CACHE[key]


def auroc(pred, label: int, rows=None) -> float:
    """Test AUROC of label ``label`` over the prediction rows ``rows`` (bool) or all."""
    rows = np.ones(len(pred), bool) if rows is None else rows
    return float(roc_auc_score(pred[f"y_true_{label}"][rows], pred[f"prob_{label}"][rows]))


def log(**record) -> None:
    path = os.environ.get("RAYBENCH_LEARNING_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def phenotyping(prepared_medium):
    return load_prepared(prepared_medium, "phenotyping")


def matched_scores(data, method: str) -> dict[str, list[float]]:
    names = phenotype_names()
    scores = {"chf": [], "htn": []}
    for seed in SEEDS:
        pred = train(data, method, "matched", seed).predictions
        for key, name in (("chf", CHF), ("htn", HTN)):
            scores[key].append(auroc(pred, names.index(name)))
        log(test="matched", method=method, seed=seed, chf=scores["chf"][-1],
            htn=scores["htn"][-1])
    return scores


@pytest.mark.parametrize("method", BOTH)
def test_planted_signals_are_learned(method: str, phenotyping) -> None:
    ehr_only = matched_scores(phenotyping, "ehr_lstm")
    cxr_only = matched_scores(phenotyping, "cxr_resnet")
    fused = matched_scores(phenotyping, method)
    table = {"ehr_lstm": ehr_only, "cxr_resnet": cxr_only, method: fused}
    assert np.mean(fused["chf"]) >= np.mean(ehr_only["chf"]) + 0.10, table
    assert np.mean(fused["htn"]) >= np.mean(cxr_only["htn"]) + 0.10, table


def removed_image_scores(data, method: str) -> list[float]:
    """Hypertension AUROC on test samples whose image the corruption removed, per seed."""
    htn = phenotype_names().index(HTN)
    scores = []
    for seed in SEEDS:
        pred = train(data, method, "missing", seed).predictions
        removed = (~pred["cxr_present"].to_numpy()) & (data.image_row[pred["sample"]] >= 0)
        assert removed.sum() >= 10, "too few image-removed test samples"
        scores.append(auroc(pred, htn, removed))
        log(test="missing", method=method, seed=seed, htn_removed=scores[-1],
            n_removed=int(removed.sum()))
    return scores


@pytest.mark.parametrize("method", MISSING_AWARE)
def test_missing_image_at_test_time_costs_nothing(method: str, phenotyping) -> None:
    ehr_only = removed_image_scores(phenotyping, "ehr_lstm")
    fused = removed_image_scores(phenotyping, method)
    assert abs(np.mean(fused) - np.mean(ehr_only)) <= 0.03, {"ehr_lstm": ehr_only,
                                                              method: fused}
