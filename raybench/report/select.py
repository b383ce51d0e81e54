"""The selected configuration of each experiment: best mean VALIDATION selection metric.

A configuration (``config_id``) is eligible when every seed the STUDY asks for
(``resolved_study.yaml`` ``seeds``; without it, every seed the experiment ran) finished with
status ``ok`` and a finite validation selection metric: an interrupted study's configuration
with only some of its seeds is never selected. Among eligible configurations the one
with the best mean validation metric over its seeds is selected (``higher_is_better`` decides
the direction; ties go to the lowest ``config_id``). Test metrics are never looked at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from raybench.metrics import higher_is_better

__all__ = ["EXPERIMENT_COLUMNS", "config_summary", "select_configurations", "selected_rows"]

EXPERIMENT_COLUMNS = ["experiment_id", "task", "kind", "cohort", "method", "modalities",
                      "multimodal", "missing_ratio", "selection_metric", "label_names"]


def config_summary(trials: pd.DataFrame,
                   expected_seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per (experiment, configuration): seeds run/ok, validation mean and SD, eligibility.

    The expected seeds are ``expected_seeds`` (the study's) or, when not given, all seeds that
    appear in any row of the experiment; a configuration missing one of them (or with a
    failed one) is not eligible.
    """
    rows = []
    for exp_id, exp in trials.groupby("experiment_id", sort=True):
        expected = set(exp["seed"]) if expected_seeds is None else {int(s) for s in
                                                                     expected_seeds}
        metric = str(exp["selection_metric"].iloc[0])
        column = f"val_{metric}"
        for config_id, cfg in exp.groupby("config_id", sort=True):
            ok = cfg[cfg["status"] == "ok"]
            values = (ok[column] if column in ok.columns else pd.Series(dtype=float)).to_numpy(
                np.float64)
            finite = np.isfinite(values)
            eligible = (set(ok["seed"]) == expected and len(cfg) == len(ok)
                        and values.size > 0 and bool(finite.all()))
            rows.append({
                "experiment_id": exp_id, "config_id": int(config_id),
                "n_seeds": int(ok["seed"].nunique()), "n_expected": len(expected),
                "val_mean": float(values[finite].mean()) if finite.any() else np.nan,
                "val_sd": float(values[finite].std(ddof=1)) if finite.sum() > 1 else np.nan,
                "eligible": bool(eligible), "higher_is_better": higher_is_better(metric),
            })
    return pd.DataFrame(rows)


def select_configurations(trials: pd.DataFrame,
                          expected_seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per experiment with its selected ``config_id`` (-1 when none is eligible).

    Columns: the experiment's descriptors (:data:`EXPERIMENT_COLUMNS`), ``config_id``,
    ``n_seeds``, ``val_mean``, ``val_sd``, ``n_configs`` and ``n_eligible``.
    ``expected_seeds``: see :func:`config_summary`.
    """
    summary = config_summary(trials, expected_seeds)
    meta = trials.drop_duplicates("experiment_id")[EXPERIMENT_COLUMNS].set_index("experiment_id")
    rows = []
    for exp_id, configs in summary.groupby("experiment_id", sort=True):
        eligible = configs[configs["eligible"]]
        row = {"experiment_id": exp_id, **meta.loc[exp_id].to_dict(),
               "n_configs": len(configs), "n_eligible": len(eligible),
               "config_id": -1, "n_seeds": 0, "val_mean": np.nan, "val_sd": np.nan}
        if len(eligible):
            sign = -1.0 if bool(eligible["higher_is_better"].iloc[0]) else 1.0
            order = np.lexsort((eligible["config_id"].to_numpy(),
                                sign * eligible["val_mean"].to_numpy()))
            best = eligible.iloc[order[0]]
            row.update(config_id=int(best["config_id"]), n_seeds=int(best["n_seeds"]),
                       val_mean=float(best["val_mean"]), val_sd=float(best["val_sd"]))
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def selected_rows(trials: pd.DataFrame, selection: pd.Series) -> pd.DataFrame:
    """The ok trial rows (one per seed) of an experiment's selected configuration."""
    if int(selection["config_id"]) < 0:
        return trials.iloc[0:0]
    mask = ((trials["experiment_id"] == selection["experiment_id"])
            & (trials["config_id"] == selection["config_id"]) & (trials["status"] == "ok"))
    return trials[mask].sort_values("seed")
