"""Section 6: the selected hyperparameters of every experiment and the search convergence.

Convergence: per task and cohort (baseline missing ratio), for each method, the best mean
validation selection metric among the eligible configurations numbered <= k (``config_id``
order = the searcher's order), one step line per method; configurations that are not eligible
(a failed or missing seed) do not improve the curve.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from raybench.report.context import ReportContext
from raybench.report.figures import convergence_figure
from raybench.report.select import config_summary
from raybench.report.tables import DASH, md_table, metric_label

__all__ = ["convergence_data", "format_params", "search_section"]


def _format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10**6 else str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def format_params(params: str) -> str:
    """``key=value`` pairs of a JSON hyperparameter dict, sorted by key."""
    try:
        parsed = json.loads(params)
    except (json.JSONDecodeError, TypeError):
        return str(params)
    if not isinstance(parsed, dict):
        return _format_value(parsed)
    return ", ".join(f"{k}={_format_value(parsed[k])}" for k in sorted(parsed)) or DASH


def convergence_data(ctx: ReportContext, task: str, cohort: str) -> pd.DataFrame:
    """Per method and configuration: mean validation metric, eligibility, best so far."""
    rows = ctx.experiments(task, cohort)
    summary = config_summary(ctx.trials[ctx.trials["experiment_id"].isin(rows["experiment_id"])],
                             ctx.study.expected_seeds)
    hib = ctx.higher_is_better(task)
    out = []
    for _, exp in rows.iterrows():
        configs = summary[summary["experiment_id"] == exp["experiment_id"]]
        best = math.nan
        for _, cfg in configs.sort_values("config_id").iterrows():
            value = cfg["val_mean"] if cfg["eligible"] else math.nan
            if np.isfinite(value) and (not np.isfinite(best)
                                       or (value > best if hib else value < best)):
                best = float(value)
            out.append({"task": task, "cohort": cohort, "method": exp["method"],
                        "config_id": int(cfg["config_id"]), "n_seeds_ok": int(cfg["n_seeds"]),
                        "eligible": bool(cfg["eligible"]), "val_mean": float(cfg["val_mean"]),
                        "best_so_far": best})
    return pd.DataFrame(out)


def _params_table(ctx: ReportContext) -> list[str]:
    table = []
    for task, cohort in ctx.task_cohorts():
        sel = ctx.selection[(ctx.selection["task"] == task)
                            & (ctx.selection["cohort"] == cohort)]
        rank = {m: i for i, m in enumerate(ctx.experiments(task, cohort)["method"])}
        for row in sorted(sel.itertuples(index=False),
                          key=lambda r: (rank.get(r.method, len(rank)), r.method,
                                         r.missing_ratio)):
            label = metric_label(row.selection_metric)
            if row.config_id < 0:
                table.append([row.experiment_id, DASH, f"{label}: {DASH}", "0",
                              f"0/{row.n_configs}", "no configuration with all seeds ok"])
                continue
            seeds = ctx.trials[(ctx.trials["experiment_id"] == row.experiment_id)
                               & (ctx.trials["config_id"] == row.config_id)]
            val = (f"{row.val_mean:.3f} ± {row.val_sd:.3f}" if np.isfinite(row.val_sd)
                   else f"{row.val_mean:.3f}")
            table.append([row.experiment_id, str(row.config_id), f"{label}: {val}",
                          str(row.n_seeds), f"{row.n_eligible}/{row.n_configs}",
                          format_params(seeds["params"].iloc[0])])
    return md_table(["Experiment", "Config", "Validation (mean ± SD)", "Seeds",
                     "Eligible/configs", "Hyperparameters"], table, "lrrrrl")


def search_section(ctx: ReportContext) -> list[str]:
    """Section 6 markdown; registers ``convergence_<task>_<cohort>.png/.csv``."""
    search = ctx.study.section("search")
    described = ", ".join(f"{k} {search[k]}" for k in ("type", "n_calls") if k in search)
    lines = ["## 6. Selected hyperparameters and search convergence", "",
             f"Search: {described or 'not recorded'}. Selected configuration = best mean "
             "validation selection metric over its seeds among configurations whose seeds all "
             "finished ok (ties: lowest config id); test metrics play no part.", "",
             *_params_table(ctx), ""]
    for task, cohort in ctx.task_cohorts():
        data = convergence_data(ctx, task, cohort)
        if data.empty:
            continue
        label = metric_label(ctx.selection_metric(task))
        png = ctx.file_name("convergence", task, cohort, "png")
        csv = ctx.file_name("convergence", task, cohort, "csv")
        plotted = data[np.isfinite(data["best_so_far"])]
        ctx.add_file(png, convergence_figure(
            plotted, f"{task} — {cohort}: search convergence",
            f"best validation {label} so far", dpi=ctx.options.dpi))
        ctx.add_csv(csv, data)
        ratio = ctx.baseline_ratio(task, cohort)
        lines += [f"### {task} — {cohort} cohort (CXR missing ratio {ratio:g})", "",
                  f"![{task} {cohort} convergence]({png})", "", f"Data: [{csv}]({csv})", ""]
    return lines
