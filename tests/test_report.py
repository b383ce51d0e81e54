"""Tests for raybench.report: statistics against scipy/fairlearn, selection, the full report.

The full report is built from :func:`report_fixture.make_study_dir` with small resample counts
(the counts change the run time, not the code paths).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
from report_fixture import (
    IDENTIFIER_NAMES,
    MIMIC_LIKE_ID,
    SECTIONS,
    SEEDS,
    assert_sections_and_figures,
    experiment_id,
    make_multiclass_study_dir,
    make_study_dir,
)
from scipy import stats
from sklearn.metrics import average_precision_score

from raybench.errors import RaybenchError
from raybench.metrics import compute_metrics, expected_calibration_error
from raybench.report import build_report
from raybench.report.cli import main as report_main
from raybench.report.fairness import fairness_metric_functions, subgroup_metrics
from raybench.report.load import load_study
from raybench.report.results import best_unimodal
from raybench.report.select import select_configurations
from raybench.report.stats import bootstrap_ci, paired_permutation_test, selection_scorer

N_RESAMPLES = 10  # report builds in tests: small counts and resolution, same code paths
DPI = 72


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The fixture study, with an identifier column planted in one predictions file."""
    path = make_study_dir(tmp_path_factory.mktemp("study") / "study")
    trial = f"{experiment_id('mortality', 'base', 'medfuse', 0.0)}-c1-s0"
    leaky = path / "predictions" / f"{trial}.parquet"
    frame = pd.read_parquet(leaky)
    frame.insert(0, "stay_id", np.arange(30_000_000, 30_000_000 + len(frame), dtype=np.int64))
    frame.to_parquet(leaky, index=False)
    return path


@pytest.fixture(scope="module")
def report(study) -> Path:
    """report.md built from the fixture study (into the default STUDY_DIR/report)."""
    return build_report(study, n_bootstrap=N_RESAMPLES, n_permutations=N_RESAMPLES, dpi=DPI)


# -- statistics -------------------------------------------------------------------------------


def _binary_data(n: int = 120, seed: int = 3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    shared = rng.standard_normal(n)
    a = 1 / (1 + np.exp(-(0.9 * (2 * y - 1) + shared + 0.8 * rng.standard_normal(n))))
    b = 1 / (1 + np.exp(-(0.7 * (2 * y - 1) + shared + 0.8 * rng.standard_normal(n))))
    return y, a, b


def test_selection_scorer_equals_compute_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.round(rng.random(80), 1)  # ties
    for metric in ("auprc", "auroc", "f1"):
        assert selection_scorer("binary", metric)(y, p) == pytest.approx(
            compute_metrics("binary", y, p)[metric], abs=1e-12)
    assert math.isnan(selection_scorer("binary", "auprc")(np.zeros(5, int), p[:5]))
    ym = rng.integers(0, 2, (80, 4))
    ym[:, 2] = 0  # a label with one class is skipped, as in compute_metrics
    pm = rng.random((80, 4))
    for metric in ("auprc_macro", "auroc_macro", "ece"):
        assert selection_scorer("multilabel", metric)(ym, pm) == pytest.approx(
            compute_metrics("multilabel", ym, pm)[metric], abs=1e-12)
    yc = rng.integers(0, 5, 80)
    pc = rng.dirichlet(np.ones(5), 80)
    for metric in ("accuracy", "kappa_linear", "kappa_quadratic", "f1_macro"):
        assert selection_scorer("multiclass", metric)(yc, pc) == pytest.approx(
            compute_metrics("multiclass", yc, pc)[metric], abs=1e-12)


def test_permutation_test_agrees_with_scipy():
    y, a, b = _binary_data()

    def brier_skill(y_true, prob):  # cheap statistic: many permutations, tight comparison
        return -float(np.mean((prob - y_true) ** 2))

    for score, n in ((brier_skill, 4000), (selection_scorer("binary", "auprc"), 400)):
        ours = paired_permutation_test(score, y, a, b, n_permutations=n, seed=1)
        ref = stats.permutation_test(
            (a, b), lambda x, z, f=score: f(y, x) - f(y, z), permutation_type="samples",
            vectorized=False, n_resamples=n, alternative="two-sided",
            rng=np.random.default_rng(2))
        assert ours.statistic == pytest.approx(ref.statistic, abs=1e-12)
        assert 0.05 < ref.pvalue < 0.9  # a non-trivial p, so the comparison means something
        # Monte-Carlo SEs: ours p(1-p)/n; scipy's 2*min(one-sided p) about 2p(1-p/2)/n
        p = ours.p_value
        tol = 4 * math.sqrt((p * (1 - p) + 2 * p * (1 - p / 2)) / n)
        assert abs(ours.p_value - ref.pvalue) < tol, (ours.p_value, ref.pvalue, tol)


def test_permutation_test_is_seeded_and_swaps_rows():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (60, 3))
    a, b = rng.random((60, 3)), rng.random((60, 3))
    score = selection_scorer("multilabel", "auprc_macro")
    first = paired_permutation_test(score, y, a, b, n_permutations=30, seed=5)
    assert first == paired_permutation_test(score, y, a, b, n_permutations=30, seed=5)
    same = paired_permutation_test(score, y, a, a, n_permutations=30, seed=5)
    assert same.statistic == 0 and same.p_value == 1.0


def test_bootstrap_ci_percentile_and_seeded():
    y, a, _ = _binary_data(n=150)
    score = selection_scorer("binary", "auroc")
    seeds = np.stack([a, np.clip(a + 0.05, 0, 1), a ** 2])  # three "seeds"
    ci = bootstrap_ci(score, y, seeds, n_resamples=100, seed=0)
    rng = np.random.default_rng(0)
    values = []
    for _ in range(100):
        idx = rng.integers(0, len(y), len(y))  # the same resample for every seed
        values.append(np.mean([score(y[idx], p[idx]) for p in seeds]))
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert ci.estimate == pytest.approx(np.mean([score(y, p) for p in seeds]))
    assert ci.low < ci.estimate < ci.high and ci.n_valid == 100
    assert ci == bootstrap_ci(score, y, seeds, n_resamples=100, seed=0)


# -- fairness ---------------------------------------------------------------------------------


def _group_frame():
    rng = np.random.default_rng(7)
    groups = np.array(["a"] * 40 + ["b"] * 30 + ["c"] * 25 + ["tiny"] * 6)
    y = (rng.random(len(groups)) < 0.4).astype(np.int64)
    y[-6:] = [1, 1, 1, 0, 0, 0]
    prob = np.clip(0.35 * y + 0.5 * rng.random(len(groups)), 0, 1)
    prob[-6:] = [0.1, 0.2, 0.1, 0.9, 0.8, 0.95]  # an extreme group: it would dominate the gap
    return pd.DataFrame({"y": y, "prob": prob, "group": groups})


def test_subgroup_gaps_equal_metricframe_and_suppress_small_groups():
    frame = _group_frame()
    res = subgroup_metrics("binary", frame["y"].to_numpy(), frame["prob"].to_numpy(),
                           frame["group"], min_group_size=10)
    # "tiny" is suppressed; "c" (the smallest other group) is withheld with it so that the
    # total minus the shown groups does not reveal tiny's count (complementary suppression)
    kept = frame[~frame["group"].isin(["tiny", "c"])]
    direct = MetricFrame(
        metrics={
            "AUPRC": lambda t, p: average_precision_score(t, p),
            "TPR": lambda t, p: true_positive_rate(t, (p >= 0.5).astype(int), pos_label=1),
            "FPR": lambda t, p: false_positive_rate(t, (p >= 0.5).astype(int), pos_label=1),
            "ECE": lambda t, p: expected_calibration_error("binary", t, p),
        },
        y_true=kept["y"].to_numpy(), y_pred=kept["prob"].to_numpy(),
        sensitive_features=kept["group"].rename("group").reset_index(drop=True))
    pd.testing.assert_frame_equal(res.by_group, direct.by_group.astype(float),
                                  check_names=False, check_index_type=False)
    pd.testing.assert_series_equal(res.gaps, direct.difference().astype(float),
                                   check_names=False)
    assert list(res.by_group.index) == ["a", "b"]
    assert res.suppressed.to_dict() == {"c": 25, "tiny": 6} and res.complementary == ["c"]
    assert res.counts.to_dict() == {"a": 40, "b": 30}
    with_tiny = subgroup_metrics("binary", frame["y"].to_numpy(), frame["prob"].to_numpy(),
                                 frame["group"], min_group_size=5)
    assert with_tiny.gaps["FPR"] > res.gaps["FPR"]  # the suppressed group would change the gap


def test_multilabel_subgroup_metrics_are_macro_over_labels():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, (60, 3))
    prob = rng.random((60, 3))
    groups = np.array(["x"] * 30 + ["y"] * 30)
    res = subgroup_metrics("multilabel", y, prob, groups, min_group_size=10)
    fns = fairness_metric_functions("binary")
    for name in ("x", "y"):
        m = groups == name
        for metric in ("TPR", "FPR", "ECE", "AUPRC"):
            expected = np.mean([fns[metric](y[m, k], prob[m, k]) for k in range(3)])
            assert res.by_group.loc[name, metric] == pytest.approx(expected)
    assert res.by_group.loc["x", "TPR"] == pytest.approx(np.mean(
        [true_positive_rate(y[:30, k], (prob[:30, k] >= 0.5).astype(int)) for k in range(3)]))


# -- selection --------------------------------------------------------------------------------


def _trial(config: int, seed: int, val: float, test: float, status: str = "ok") -> dict:
    return {"trial_id": f"t{config}{seed}", "experiment_id": "mortality-base-ehr-m0",
            "task": "mortality", "kind": "binary", "label_names": '["m"]', "cohort": "base",
            "method": "ehr", "modalities": "ehr", "missing_ratio": 0.0, "config_id": config,
            "seed": seed, "params": json.dumps({"lr": 0.1 * (config + 1)}), "status": status,
            "selection_metric": "auprc", "val_auprc": val, "test_auprc": test}


def test_selected_configuration_is_chosen_on_validation_not_test(tmp_path):
    rows = ([_trial(0, s, val=0.80, test=0.40) for s in SEEDS]  # best on validation
            + [_trial(1, s, val=0.60, test=0.90) for s in SEEDS]  # best on test
            + [_trial(2, 0, val=0.99, test=0.99), _trial(2, 1, val=0.99, test=0.99),
               _trial(2, 2, val=math.nan, test=math.nan, status="failed")])  # not eligible
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    selection = select_configurations(load_study(tmp_path).trials)
    assert len(selection) == 1
    row = selection.iloc[0]
    assert row["config_id"] == 0 and row["val_mean"] == pytest.approx(0.80)
    assert (row["n_configs"], row["n_eligible"]) == (3, 2)


def test_reference_unimodal_method_is_best_on_validation():
    rows = pd.DataFrame({
        "method": ["cxr", "ehr", "fusion"], "multimodal": [False, False, True],
        "config_id": [0, 0, 0], "val_mean": [0.7, 0.6, 0.9], "test_mean": [0.5, 0.8, 0.9],
        "selection_metric": ["auprc"] * 3})
    assert best_unimodal(rows)["method"] == "cxr"  # best on validation, worst on test


# -- the report -------------------------------------------------------------------------------


def test_missing_study_or_trials_raises(tmp_path):
    with pytest.raises(RaybenchError, match="study directory not found"):
        build_report(tmp_path / "nope")
    with pytest.raises(RaybenchError, match="trials.parquet"):
        build_report(tmp_path)
    assert report_main([str(tmp_path)]) == 2


def test_report_has_every_section_figure_and_csv(report, study):
    text = assert_sections_and_figures(report)
    assert "mean ± SD over 3 seeds (SD across seeds, not SEM)" in text
    assert f"{N_RESAMPLES} resamples" in text and f"{N_RESAMPLES} permutations" in text
    assert "percentile bootstrap" in text and "two-sided paired permutation test" in text
    assert "| medfuse | ehr+cxr |" in text and "(p = " in text and "| reference |" in text
    assert "**average rank**" in text
    assert "`train`, `val` splits only" in text
    assert "192 run: 191 ok, 1 failed" in text and "CUDA out of memory" in text
    # the failed seed makes configuration 1 ineligible: configuration 0 is selected
    assert "| phenotyping-base-medfuse-m0 | 0 |" in text
    # suppression: race 'Other' (6 samples) is named, never shown with a count
    assert "race_group: `Other`" in text and "Other (n=" not in text.split("race_group")[-1]


def test_main_table_reports_the_validation_selected_configuration(report, study):
    trials = pd.read_parquet(study / "trials.parquet")
    exp = trials[trials["experiment_id"] == experiment_id("mortality", "base", "medfuse", 0.0)]
    best = exp.groupby("config_id")["val_auprc"].mean().idxmax()
    values = exp.loc[exp["config_id"] == best, "test_auprc"]
    cell = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
    line = next(ln for ln in report.read_text().splitlines() if ln.startswith("| medfuse |"))
    assert cell in line


def test_rerun_gives_identical_bytes(report, study, tmp_path):
    first = {p.name: p.read_bytes() for p in sorted(report.parent.iterdir())}
    again = build_report(study, tmp_path / "again", n_bootstrap=N_RESAMPLES,
                         n_permutations=N_RESAMPLES, dpi=DPI)
    second = {p.name: p.read_bytes() for p in sorted(again.parent.iterdir())}
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        assert data == second[name], f"{name} differs between runs"


def test_no_identifiers_in_report(report):
    for path in sorted(report.parent.iterdir()):
        if path.suffix == ".png":
            continue
        text = path.read_text()
        assert not IDENTIFIER_NAMES.search(text), path.name
        assert not MIMIC_LIKE_ID.search(text), (path.name, MIMIC_LIKE_ID.search(text))
    assert "21,797,672" in report.read_text() or "21,798,672" in report.read_text()


def test_multiclass_study_with_failed_experiment_and_missing_predictions(tmp_path):
    study = make_multiclass_study_dir(tmp_path / "mc")
    text = build_report(study, n_bootstrap=N_RESAMPLES, n_permutations=N_RESAMPLES,
                        dpi=DPI).read_text()
    for header in SECTIONS:
        assert header in text, header
    assert "| daft (no eligible config) | ehr+cxr | — |" in text
    assert "kappa (linear)" in text and "LoS MAD (days)" in text
    assert "single CXR missing ratio" in text and "`train`, `val`, `test` splits" in text
    assert "No predictions for: daft, medfuse." in text  # one medfuse seed has no file
    assert "12 run: 8 ok, 4 failed" in text and "0/2 | no configuration with all seeds ok" in text
    assert "subject <number> broke" in text and not MIMIC_LIKE_ID.search(text)


def test_every_group_suppressed_is_said_not_shown(tmp_path):
    study = make_study_dir(tmp_path / "tiny-groups")
    config = yaml.safe_load((study / "resolved_study.yaml").read_text())
    config["fairness"]["min_group_size"] = 10_000
    (study / "resolved_study.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    text = build_report(study, n_bootstrap=N_RESAMPLES, n_permutations=N_RESAMPLES,
                        dpi=DPI).read_text()
    fairness = text.split("## 4. Fairness")[1].split("## 5.")[0]
    assert fairness.count("No subgroup analysis: every group of every attribute has fewer "
                          "than 10000 test samples.") == 4
    assert "(n=" not in fairness and "fairness_" not in fairness
    assert not list(study.joinpath("report").glob("fairness_*"))


def test_complete_study_report_is_not_marked_and_withholds_complementary_groups(report):
    text = report.read_text()
    assert "INCOMPLETE" not in text and "all 192 planned" in text
    fairness = text.split("## 4. Fairness")[1].split("## 5.")[0]
    assert "race_group: `Other`" in fairness  # 6 samples: suppressed
    assert "(complementary suppression): " in fairness
    # 200 test samples (base cohort): the shown race groups leave at least 10 to the withheld
    # ones, at least two of them, so the 6 of `Other` cannot be recovered by subtraction
    table = fairness.split("#### mortality — base: race_group")[1].split("####")[0]
    shown = dict(re.findall(r"(\w+) \(n=(\d+)\)", table.strip().splitlines()[0]))
    assert "Other" not in shown and 200 - sum(map(int, shown.values())) >= 10
    assert len(shown) <= 3  # of 5 race groups, at least 2 withheld
    listed = json.loads((report.parent / ".raybench-report.json").read_text())["files"]
    assert "report.md" in listed and all("/" not in name for name in listed)
