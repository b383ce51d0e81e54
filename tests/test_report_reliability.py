"""Reports that are never silently wrong: incomplete studies marked, every study seed required,
small test sets flagged, suppressed subgroup counts not derivable, predictions files confined
to the study directory."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from report_fixture import experiment_id, make_study_dir

from raybench.errors import RaybenchError
from raybench.report import build_report
from raybench.report.fairness import suppress_small_groups
from raybench.report.load import load_study
from raybench.report.select import select_configurations

N = 20
DPI = 40


def _build(study: Path) -> str:
    return build_report(study, n_bootstrap=N, n_permutations=N, dpi=DPI).read_text()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """The fixture study as if Ctrl-C had stopped it: mortality/base/medfuse at ratio 0 lost
    its configuration 1 entirely and seed 2 of configuration 0; one experiment never ran."""
    path = make_study_dir(tmp_path_factory.mktemp("interrupted") / "study")
    trials = pd.read_parquet(path / "trials.parquet")
    exp = experiment_id("mortality", "base", "medfuse", 0.0)
    gone = (trials["experiment_id"] == exp) & ((trials["config_id"] == 1)
                                               | (trials["seed"] == 2))
    never = trials["experiment_id"] == experiment_id("phenotyping", "matched", "ehr_lstm", 0.5)
    trials[~gone & ~never].to_parquet(path / "trials.parquet", index=False)
    return path


def test_interrupted_study_report_says_incomplete_with_missing_counts(interrupted):
    text = _build(interrupted)
    assert text.startswith("# Results report: fixture-study (INCOMPLETE)")
    assert ("> **INCOMPLETE**: 10 of 192 planned trials have no result (the study was "
            "interrupted or is still running); 2 of 32 experiments are affected, 1 of them "
            "without any trial") in text
    assert "| Trials | 182 run: 181 ok, 1 failed; 192 planned, 10 missing |" in text
    main = text.split("## 1. Main results")[1].split("## 2.")[0]
    table = main.split("### mortality — base cohort")[1].split("### ")[0]
    assert table.startswith(" (CXR missing ratio 0; mean ± SD over 3 seeds) — INCOMPLETE")
    assert "medfuse (no eligible config) (INCOMPLETE: 4 of 6 trials missing)" in table
    assert "**INCOMPLETE**: medfuse at CXR missing ratio 0: 4 of 6 trials missing" in table
    complete = main.split("### mortality — matched cohort")[1].split("### ")[0]
    assert "INCOMPLETE" not in complete
    fairness = text.split("## 4. Fairness")[1].split("## 5.")[0]
    assert "### mortality — base cohort — INCOMPLETE" in fairness


def test_selection_requires_every_seed_the_study_asks_for(interrupted):
    study = load_study(interrupted)
    exp = experiment_id("mortality", "base", "medfuse", 0.0)
    observed = select_configurations(study.trials)  # seeds 0 and 1 look like "all"
    assert observed.set_index("experiment_id").loc[exp, "config_id"] == 0
    selected = select_configurations(study.trials, study.expected_seeds)
    assert study.expected_seeds == [0, 1, 2]
    assert selected.set_index("experiment_id").loc[exp, "config_id"] == -1


def test_predictions_file_must_stay_inside_the_study_directory(interrupted, tmp_path):
    outside = interrupted.parent / "elsewhere.parquet"
    loaded = load_study(interrupted)
    row = loaded.trials[loaded.trials["status"] == "ok"].iloc[0].copy()
    pd.read_parquet(interrupted / row["predictions_file"]).to_parquet(outside)
    assert loaded.read_predictions(row) is not None
    for bad in (str(outside), "../elsewhere.parquet", "predictions/../../elsewhere.parquet"):
        row["predictions_file"] = bad
        with pytest.raises(RaybenchError, match=re.escape(f"predictions_file {bad!r} is not a "
                                                          "relative path inside the study")):
            loaded.read_predictions(row)


def _tiny_study(path: Path, n_test: int = 13, positives: int = 1) -> Path:
    """mortality on 13 test samples with 1 positive: ehr_lstm vs late_fusion, 3 seeds."""
    path.mkdir(parents=True)
    (path / "predictions").mkdir()
    rng = np.random.default_rng(0)
    y = np.zeros(n_test, dtype=np.int64)
    y[:positives] = 1
    rows = []
    config = {"name": "tiny", "tasks": ["mortality"], "cohorts": ["base"], "seeds": [0, 1, 2],
              "methods": {m: {"search_space": {}, "cohorts": ["base"],
                              "cxr_missing_ratios": [0.0]} for m in ("ehr_lstm", "late_fusion")},
              "search": {"type": "fixed"}, "robustness": {"cxr_missing_ratios": [0.0]},
              "fairness": {"attributes": ["sex"], "min_group_size": 3}}
    (path / "resolved_study.yaml").write_text(yaml.safe_dump(config))
    for method, modalities in (("ehr_lstm", "ehr"), ("late_fusion", "cxr+ehr")):
        for seed in (0, 1, 2):
            prob = np.clip(0.3 * y + rng.random(n_test) * 0.8, 0, 1)
            trial_id = f"{method}-s{seed}"
            rel = f"predictions/{trial_id}.parquet"
            pd.DataFrame({"sample": np.arange(n_test), "y_true_0": y, "prob_0": prob,
                          "sex": ["F", "M"] * (n_test // 2) + ["F"] * (n_test % 2)}
                         ).to_parquet(path / rel, index=False)
            rows.append({"trial_id": trial_id, "experiment_id": f"mortality-base-{method}-m0",
                         "task": "mortality", "kind": "binary", "label_names": "[]",
                         "cohort": "base", "method": method, "modalities": modalities,
                         "missing_ratio": 0.0, "config_id": 0, "seed": seed, "params": "{}",
                         "status": "ok", "selection_metric": "auprc",
                         "predictions_file": rel, "val_auprc": 0.5 + 0.01 * seed,
                         "test_auprc": float(rng.random()), "test_auroc": float(rng.random())})
    pd.DataFrame(rows).to_parquet(path / "trials.parquet", index=False)
    return path


def test_small_test_set_figures_are_flagged_with_counts_and_degenerate_resamples(tmp_path):
    text = _build(_tiny_study(tmp_path / "tiny"))
    main = text.split("## 1. Main results")[1].split("## 2.")[0]
    assert "Test set: 13 test samples, 1 positive." in main
    rows = [line for line in main.splitlines() if line.startswith("| ehr_lstm")
            or line.startswith("| late_fusion")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2].endswith("†") and cells[3].endswith("†")  # AUROC, AUPRC
        ci = cells[4]
        # with 1 positive in 13, about half of the resamples hold no positive
        match = re.fullmatch(r"\[\d\.\d{3}, \d\.\d{3}\] \((\d+) degenerate\)†", ci)
        assert match and 0 < int(match.group(1)) < N
    assert rows[1].rstrip(" |").endswith(")†")  # the permutation test's p-value
    assert "†: rests on fewer than 10 test samples of the rarer class" in main
    assert "(n degenerate): n of the 20 bootstrap resamples had no positive" in main


def test_complementary_suppression_leaves_no_count_derivable():
    counts = pd.Series({"A": 120, "B": 45, "C": 30, "D": 4})
    small, extra = suppress_small_groups(counts, 10)
    assert small == ["D"] and extra == ["C"]  # D alone = total - shown: C must go too
    counts = pd.Series({"A": 120, "B": 45, "C": 3, "D": 4})
    assert suppress_small_groups(counts, 10) == (["C", "D"], ["B"])  # 3 + 4 < 10: add B
    assert suppress_small_groups(pd.Series({"A": 50, "B": 40}), 10) == ([], [])
    for sizes in ([120, 45, 30, 4], [9, 9, 80], [1, 2, 3, 100, 200], [5, 500]):
        counts = pd.Series(sizes, index=[f"g{i}" for i in range(len(sizes))])
        small, extra = suppress_small_groups(counts, 10)
        withheld = small + extra
        # total - shown reveals only the sum of the withheld groups: at least two of them,
        # holding at least 10 samples together (or every group is withheld)
        assert len(withheld) == len(counts) or (len(withheld) >= 2
                                                and counts[withheld].sum() >= 10)
