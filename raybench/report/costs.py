"""Section 5: calibration (ECE) table and the compute cost of every experiment.

Cost per experiment: trainable parameters and inference time per batch of the selected
configuration (mean over its seeds), GPU-hours and CPU core-hours spent by ALL of the
experiment's trials, failed ones included (``sum(runtime_s * gpu) / 3600``, same with
``cpu``; a missing runtime counts as 0), trials run and failed.
"""

from __future__ import annotations

import numpy as np

from raybench.report.context import ReportContext
from raybench.report.tables import DASH, bold_best, fmt, fmt_count, md_table, mean_sd

__all__ = ["calibration_cost_section"]


def _ece_table(ctx: ReportContext) -> list[str]:
    pairs = ctx.task_cohorts()
    methods: list[str] = []
    for task, cohort in pairs:
        methods += [m for m in ctx.experiments(task, cohort)["method"] if m not in methods]
    columns = []
    for task, cohort in pairs:
        by_method = {r["method"]: r for _, r in ctx.experiments(task, cohort).iterrows()}
        texts, means = [], []
        for method in methods:
            seeds = ctx.seed_rows(by_method[method]) if method in by_method else None
            values = ([] if seeds is None or "test_ece" not in seeds.columns
                      else seeds["test_ece"].to_numpy(np.float64))
            mean, _, text = mean_sd(values)
            texts.append(text)
            means.append(mean)
        columns.append(bold_best(texts, means, higher_is_better=False))
    headers = ["Method", *[f"{t} / {c}" for t, c in pairs]]
    table = [[m, *[col[i] for col in columns]] for i, m in enumerate(methods)]
    return md_table(headers, table, "l" + "r" * len(pairs))


def _cost_rows(ctx: ReportContext) -> tuple[list[list[str]], dict[str, float]]:
    trials = ctx.trials
    table, totals = [], {"gpu_h": 0.0, "cpu_h": 0.0, "run": 0, "failed": 0}
    order = []
    for task, cohort in ctx.task_cohorts():
        rows = ctx.selection[(ctx.selection["task"] == task)
                             & (ctx.selection["cohort"] == cohort)]
        base = list(ctx.experiments(task, cohort)["method"])
        rank = {m: i for i, m in enumerate(base)}
        order += sorted(rows.itertuples(index=False),
                        key=lambda r: (rank.get(r.method, len(rank)), r.method, r.missing_ratio))
    for row in order:
        exp = trials[trials["experiment_id"] == row.experiment_id]
        gpu_h = float(np.nansum(exp["runtime_s"] * exp["gpu"].fillna(0.0))) / 3600
        cpu_h = float(np.nansum(exp["runtime_s"] * exp["cpu"].fillna(0.0))) / 3600
        failed = int((exp["status"] != "ok").sum())
        chosen = exp[(exp["config_id"] == row.config_id) & (exp["status"] == "ok")]
        params = float(chosen["n_parameters"].mean()) if len(chosen) else np.nan
        infer = float(chosen["inference_s_per_batch"].mean()) if len(chosen) else np.nan
        table.append([row.experiment_id, fmt_count(params),
                      f"{infer:.4f}" if np.isfinite(infer) else DASH, fmt(gpu_h, 3),
                      fmt(cpu_h, 3), str(len(exp)), str(failed)])
        totals["gpu_h"] += gpu_h
        totals["cpu_h"] += cpu_h
        totals["run"] += len(exp)
        totals["failed"] += failed
    return table, totals


def calibration_cost_section(ctx: ReportContext) -> list[str]:
    """Section 5 markdown: ECE per method and task/cohort, then the cost table."""
    table, totals = _cost_rows(ctx)
    table.append(["**total**", "", "", f"**{totals['gpu_h']:.3f}**",
                  f"**{totals['cpu_h']:.3f}**", f"**{totals['run']}**",
                  f"**{totals['failed']}**"])
    return [
        "## 5. Calibration and cost", "", "### Calibration (ECE)", "",
        *_ece_table(ctx), "",
        "*Test ECE (10 equal-width bins; multilabel: mean over labels; multiclass: top-label) of "
        "each method's selected configuration at the baseline missing ratio, mean ± SD over "
        "seeds; bold: lowest per column.*", "",
        "### Cost per experiment", "",
        *md_table(["Experiment", "Trainable params", "Inference s/batch", "GPU-hours",
                   "CPU core-hours", "Trials run", "Failed"], table, "lrrrrrr"), "",
        "*Parameters and inference time: selected configuration, mean over its seeds. GPU-hours "
        "= Σ runtime_s × gpu fraction / 3600 and CPU core-hours = Σ runtime_s × cpus / 3600 over "
        "all trials of the experiment, failed ones included.*", ""]
