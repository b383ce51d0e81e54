"""A small, fake-but-consistent study directory for the report tests.

:func:`make_study_dir` writes what the study runner writes (``resolved_study.yaml``,
``trials.parquet``, ``predictions/<trial_id>.parquet``) for 2 tasks (mortality: binary,
phenotyping: multilabel with 4 labels), 2 cohorts, 4 methods (2 unimodal, 2 multimodal), CXR
missing ratios 0 and 0.5, 2 configurations x 3 seeds. Test predictions are drawn from the
labels with a method-dependent signal strength (medfuse > late_fusion > ehr > cxr; configuration
1 better than 0; CXR-using methods degrade with missingness), so the report's numbers are
sensible. The ``test_*`` columns are computed from the written predictions with
:func:`raybench.metrics.compute_metrics`, so ``trials.parquet`` and ``predictions/`` agree. To
keep the fixture fast (scikit-learn's per-call overhead dominates), rows at missing ratio 0.5
carry only the test selection metric and every row only the validation selection metric:
that is all the report reads from them.

Subgroups: race ``Other`` has 6 test samples (below ``min_group_size`` 10: suppressed). One
trial failed (phenotyping, base, medfuse, ratio 0, configuration 1, seed 2), which makes
configuration 0 the only selectable one of that experiment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import average_precision_score

from raybench.metrics import SELECTION_METRIC, compute_metrics

#: Section headers every report has, and patterns no report may contain.
SECTIONS = ("## 1. Main results", "## 2. Per-condition AUPRC", "## 3. Robustness",
            "## 4. Fairness", "## 5. Calibration and cost", "### Calibration (ECE)",
            "### Cost per experiment", "## 6. Selected hyperparameters", "## 7. Failed trials")
IDENTIFIER_NAMES = re.compile(r"\b(stay_id|subject_id|hadm_id|dicom_id|study_id)\b")
MIMIC_LIKE_ID = re.compile(r"(?<![\d.,])\d{8,}(?![\d,])")


def assert_sections_and_figures(report: Path, tasks=("mortality", "phenotyping"),
                                cohorts=("base", "matched")) -> str:
    """Every section header, and per task and cohort a heading plus the robustness, fairness
    and convergence PNGs with their CSVs, linked from ``report``; returns the report text.
    The fairness figure may be absent only where the report says every group was suppressed."""
    text = report.read_text()
    for header in SECTIONS:
        assert header in text, header
    for task in tasks:
        for cohort in cohorts:
            assert f"### {task} — {cohort} cohort" in text
            fairness = text.split("## 4. Fairness")[1].split("## 5.")[0]
            fairness = fairness.split(f"### {task} — {cohort} cohort")[1].split("\n### ")[0]
            for prefix in ("robustness", "fairness", "convergence"):
                if prefix == "fairness" and fairness.lstrip().startswith("No subgroup analysis"):
                    continue  # every group too small: said, and no figure (tiny test splits)
                png = report.parent / f"{prefix}_{task}_{cohort}.png"
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name
                assert png.with_suffix(".csv").stat().st_size > 0
                assert f"]({png.name})" in text and f"]({png.with_suffix('.csv').name})" in text
    return text

TASKS = {
    "mortality": ("binary", ["in_hospital_mortality"], [0.2]),
    "phenotyping": (
        "multilabel",
        ["Acute renal failure", "Sepsis", "Shock", "Congestive heart failure"],
        [0.3, 0.2, 0.15, 0.35],
    ),
}
#: method -> (modalities, signal strength, trainable parameters)
METHODS = {
    "ehr_lstm": ("ehr", 0.6, 412_545),
    "cxr_resnet": ("cxr", 0.35, 21_797_672),
    "late_fusion": ("ehr+cxr", 0.7, 22_210_218),
    "medfuse": ("ehr+cxr", 0.85, 22_634_001),
}
COHORTS = {"base": 200, "matched": 160}
RATIOS = (0.0, 0.5)
SEEDS = (0, 1, 2)
PARAMS = ({"lr": 0.001, "dropout": 0.1, "hidden": 64},
          {"lr": 0.0003, "dropout": 0.3, "hidden": 128})
CONFIG_GAIN = (0.0, 0.15)
FAILED = ("phenotyping", "base", "medfuse", 0.0, 1, 2)  # task, cohort, method, ratio, config, seed
GROUP_VALUES = {
    "race_group": (["White", "Black", "Hispanic", "Asian"], [0.6, 0.2, 0.12, 0.08]),
    "sex": (["F", "M"], [0.45, 0.55]),
    "age_group": (["18-44", "45-64", "65-79", "80+"], [0.2, 0.3, 0.3, 0.2]),
    "insurance": (["Medicare", "Medicaid", "Private", "Other"], [0.45, 0.2, 0.3, 0.05]),
}
TINY_GROUP = ("race_group", "Other", 6)
N_VAL = 120


def experiment_id(task: str, cohort: str, method: str, ratio: float) -> str:
    """The runner's experiment id, e.g. ``mortality-base-medfuse-m0.5``."""
    return f"{task}-{cohort}-{method}-m{ratio:g}"


def _labels(rng: np.random.Generator, n: int, prevalence: list[float]) -> np.ndarray:
    return (rng.random((n, len(prevalence))) < np.asarray(prevalence)).astype(np.int64)


def _groups(rng: np.random.Generator, n: int) -> pd.DataFrame:
    frame = pd.DataFrame(
        {col: rng.choice(values, size=n, p=p) for col, (values, p) in GROUP_VALUES.items()}
    )
    column, value, count = TINY_GROUP
    frame.loc[: count - 1, column] = value
    return frame


def _probs(y: np.ndarray, shared: np.ndarray, strength: float, prevalence: list[float],
           rng: np.random.Generator) -> np.ndarray:
    """Sigmoid of a label-driven score: shared sample difficulty + per-trial noise."""
    prev = np.asarray(prevalence)
    noise = 0.75 * shared + 0.65 * rng.standard_normal(y.shape)
    logit = np.log(prev / (1 - prev)) + strength * (2 * y - 1) + noise
    return 1.0 / (1.0 + np.exp(-logit))


def _strength(method: str, cohort: str, ratio: float, config: int) -> float:
    modalities, strength, _ = METHODS[method]
    if "cxr" in modalities:
        strength *= 1.0 - 0.7 * ratio
    if cohort == "matched":
        strength *= 0.9
    return strength + CONFIG_GAIN[config]


def _prediction_frame(kind: str, y: np.ndarray, prob: np.ndarray, groups: pd.DataFrame,
                      cxr_present: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"sample": np.arange(len(y), dtype=np.int64)})
    for k in range(y.shape[1]):
        frame[f"y_true_{k}"] = y[:, k]
        frame[f"prob_{k}"] = prob[:, k]
    frame["cxr_present"] = cxr_present
    for column in GROUP_VALUES:
        frame[column] = groups[column].to_numpy()
    return frame


def _metrics(kind: str, y: np.ndarray, prob: np.ndarray, names: list[str]) -> dict[str, float]:
    if kind == "binary":
        return compute_metrics(kind, y[:, 0], prob[:, 0])
    return compute_metrics(kind, y, prob, label_names=names)


def _score(kind: str, y: np.ndarray, prob: np.ndarray) -> float:
    """The selection metric alone (AUPRC / macro AUPRC), as compute_metrics computes it."""
    if kind == "binary":
        return float(average_precision_score(y[:, 0], prob[:, 0]))
    return float(average_precision_score(y, prob, average="macro"))


def _study_yaml(name: str) -> dict:
    return {
        "name": name,
        "tasks": list(TASKS),
        "cohorts": list(COHORTS),
        "methods": list(METHODS),
        "seeds": list(SEEDS),
        "search": {"type": "bayesian", "n_calls": len(PARAMS), "space": {"lr": [1e-4, 1e-2]}},
        "robustness": {"cxr_missing_ratios": list(RATIOS), "missing_splits": ["train", "val"]},
        "fairness": {"attributes": list(GROUP_VALUES), "min_group_size": 10},
    }


def make_study_dir(path: Path, *, name: str = "fixture-study", seed: int = 0) -> Path:
    """Write a small consistent study directory at ``path`` (created) and return ``path``."""
    path = Path(path)
    (path / "predictions").mkdir(parents=True, exist_ok=True)
    (path / "resolved_study.yaml").write_text(yaml.safe_dump(_study_yaml(name), sort_keys=True))
    rows = []
    for t_index, (task, (kind, names, prevalence)) in enumerate(TASKS.items()):
        for c_index, (cohort, n_test) in enumerate(COHORTS.items()):
            rng = np.random.default_rng([seed, t_index, c_index])
            y_test, y_val = _labels(rng, n_test, prevalence), _labels(rng, N_VAL, prevalence)
            groups = _groups(rng, n_test)
            cxr_present = rng.random(n_test) < (0.7 if cohort == "base" else 1.0)
            shared_test = rng.standard_normal(y_test.shape)
            shared_val = rng.standard_normal(y_val.shape)
            for m_index, (method, (modalities, _, n_params)) in enumerate(METHODS.items()):
                for r_index, ratio in enumerate(RATIOS):
                    exp = experiment_id(task, cohort, method, ratio)
                    for config, params in enumerate(PARAMS):
                        for s in SEEDS:
                            trial_rng = np.random.default_rng(
                                [seed, t_index, c_index, m_index, r_index, config, s])
                            strength = _strength(method, cohort, ratio, config)
                            trial_id = f"{exp}-c{config}-s{s}"
                            row = {
                                "trial_id": trial_id, "experiment_id": exp, "task": task,
                                "kind": kind, "label_names": json.dumps(names),
                                "cohort": cohort, "method": method, "modalities": modalities,
                                "missing_ratio": float(ratio), "config_id": config, "seed": s,
                                "params": json.dumps(params, sort_keys=True), "status": "ok",
                                "error": None, "selection_metric": SELECTION_METRIC[kind],
                                "runtime_s": float(60 + 30 * trial_rng.random()),
                                "cpu": 2.0, "gpu": 0.25,
                                "n_parameters": n_params + 1000 * config,
                                "inference_s_per_batch": float(0.004 + 0.002 * m_index),
                                "predictions_file": None,
                            }
                            if (task, cohort, method, ratio, config, s) == FAILED:
                                row.update(status="failed", error="RuntimeError: CUDA out of "
                                           "memory (tried to allocate 2.00 GiB)",
                                           runtime_s=12.5, n_parameters=None,
                                           inference_s_per_batch=None)
                                rows.append(row)
                                continue
                            p_val = _probs(y_val, shared_val, strength, prevalence, trial_rng)
                            p_test = _probs(y_test, shared_test, strength, prevalence, trial_rng)
                            row[f"val_{SELECTION_METRIC[kind]}"] = _score(kind, y_val, p_val)
                            if ratio == 0:
                                for key, value in _metrics(kind, y_test, p_test, names).items():
                                    row[f"test_{key}"] = value
                            else:
                                row[f"test_{SELECTION_METRIC[kind]}"] = _score(kind, y_test, p_test)
                            rel = f"predictions/{trial_id}.parquet"
                            row["predictions_file"] = rel
                            _prediction_frame(kind, y_test, p_test, groups, cxr_present) \
                                .to_parquet(path / rel, index=False)
                            rows.append(row)
    trials = pd.DataFrame(rows)
    fixed = [c for c in trials.columns if not c.startswith(("val_", "test_"))]
    metric_cols = sorted(c for c in trials.columns if c.startswith(("val_", "test_")))
    trials = trials[fixed + metric_cols]
    trials.to_parquet(path / "trials.parquet", index=False)
    return path


def make_multiclass_study_dir(path: Path, *, n_test: int = 120) -> Path:
    """A tiny multiclass study (length_of_stay_7, base cohort, ratio 0 only) with edge cases.

    Methods: ``ehr_lstm`` (ehr), ``medfuse`` (ehr+cxr; the predictions file of one seed is
    missing) and ``daft`` (ehr+cxr; every trial failed, so no configuration is selectable).
    2 configurations x 2 seeds; test metrics include ``los_mad_days``.
    """
    path = Path(path)
    (path / "predictions").mkdir(parents=True, exist_ok=True)
    config = _study_yaml("multiclass-study")
    config.update(tasks=["length_of_stay_7"], cohorts=["base"], seeds=[0, 1],
                  methods=["ehr_lstm", "medfuse", "daft"])
    config["robustness"] = {"cxr_missing_ratios": [0.0], "missing_splits": ["train", "val", "test"]}
    (path / "resolved_study.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    rng = np.random.default_rng(11)
    n_classes = 7
    y = rng.integers(0, n_classes, n_test)
    hours = (y + rng.random(n_test)) * 24.0
    bucket_means = (np.arange(n_classes) + 0.5) * 24.0
    groups = _groups(rng, n_test)
    rows = []
    for method, modalities, strength in (("ehr_lstm", "ehr", 1.0), ("medfuse", "ehr+cxr", 1.6),
                                         ("daft", "ehr+cxr", 1.2)):
        for cfg in (0, 1):
            for s in (0, 1):
                trial_id = f"length_of_stay_7-base-{method}-m0-c{cfg}-s{s}"
                row = {"trial_id": trial_id,
                       "experiment_id": f"length_of_stay_7-base-{method}-m0",
                       "task": "length_of_stay_7", "kind": "multiclass",
                       "label_names": json.dumps([f"bucket_{c}" for c in range(n_classes)]),
                       "cohort": "base", "method": method, "modalities": modalities,
                       "missing_ratio": 0.0, "config_id": cfg, "seed": s,
                       "params": json.dumps({"lr": 0.001 * (cfg + 1)}), "status": "ok",
                       "error": None, "selection_metric": "accuracy", "runtime_s": 30.0,
                       "cpu": 1.0, "gpu": 0.5, "n_parameters": 1000, "predictions_file": None,
                       "inference_s_per_batch": 0.01}
                if method == "daft":
                    row.update(status="failed", error="ValueError: subject 12345678 broke")
                    rows.append(row)
                    continue
                logits = rng.standard_normal((n_test, n_classes))
                logits[np.arange(n_test), y] += strength + 0.3 * cfg
                prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
                metrics = compute_metrics("multiclass", y, prob, remaining_hours=hours,
                                          bucket_means_hours=bucket_means)
                row.update({f"test_{k}": v for k, v in metrics.items()})
                row["val_accuracy"] = metrics["accuracy"] + 0.01 * rng.standard_normal()
                frame = pd.DataFrame({"sample": np.arange(n_test), "y_true": y})
                for c in range(n_classes):
                    frame[f"prob_{c}"] = prob[:, c]
                frame["cxr_present"] = True
                for column in GROUP_VALUES:
                    frame[column] = groups[column].to_numpy()
                if not (method == "medfuse" and s == 1):
                    row["predictions_file"] = f"predictions/{trial_id}.parquet"
                    frame.to_parquet(path / row["predictions_file"], index=False)
                rows.append(row)
    pd.DataFrame(rows).to_parquet(path / "trials.parquet", index=False)
    return path
