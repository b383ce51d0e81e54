"""Section 3: the test selection metric vs CXR missing ratio (robustness curves).

For every experiment (task, cohort, method, missing ratio) the selected configuration's test
selection metric, mean ± SD over its seeds; one PNG per task and cohort with a line and an SD
band per method, the same numbers in a CSV beside it and in a table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raybench.report.context import ReportContext
from raybench.report.figures import robustness_figure
from raybench.report.results import row_counts
from raybench.report.small_sample import FLAG, flag_text
from raybench.report.tables import DASH, md_table, mean_sd, metric_label

__all__ = ["missing_splits_text", "robustness_data", "robustness_section"]


def missing_splits_text(robustness: dict) -> str:
    """One sentence saying which splits the CXR missingness was applied to."""
    splits = robustness.get("missing_splits")
    splits = [splits] if isinstance(splits, str) else splits
    if not isinstance(splits, list | tuple) or not splits:
        return ("The study's `robustness.missing_splits` is not recorded in "
                "`resolved_study.yaml`, so which splits had CXRs removed is unknown.")
    listed = ", ".join(f"`{s}`" for s in splits)
    normalised = sorted(str(s).lower() for s in splits)
    if normalised == ["test", "train", "val"]:
        return (f"CXR missingness was applied to the {listed} splits: the test set is degraded "
                "too, so the curves measure performance when CXRs are missing at deployment "
                "(CareBench removes them from train/val only).")
    if normalised == ["train", "val"]:
        return (f"CXR missingness was applied to the {listed} splits only, as in CareBench: the "
                "test set keeps every available CXR, so the curves measure the effect of "
                "training with missing images.")
    return f"CXR missingness was applied to the {listed} split(s)."


def robustness_data(ctx: ReportContext, task: str, cohort: str) -> pd.DataFrame:
    """One row per (method, missing ratio): n_seeds, mean and SD of the test selection metric."""
    sel = ctx.selection
    sel = sel[(sel["task"] == task) & (sel["cohort"] == cohort)]
    base = ctx.experiments(task, cohort)
    methods = list(base["method"]) + sorted(set(sel["method"]) - set(base["method"]))
    metric = ctx.selection_metric(task)
    rows = []
    for method in methods:
        for _, row in sel[sel["method"] == method].sort_values("missing_ratio").iterrows():
            seeds = ctx.seed_rows(row)
            values = (seeds[f"test_{metric}"].to_numpy(np.float64)
                      if f"test_{metric}" in seeds.columns else np.array([]))
            mean, sd, _ = mean_sd(values)
            counts = row_counts(ctx, row)
            rows.append({"task": task, "cohort": cohort, "method": method,
                         "modalities": row["modalities"],
                         "missing_ratio": float(row["missing_ratio"]),
                         "config_id": int(row["config_id"]), "metric": f"test_{metric}",
                         "n_seeds": int(np.isfinite(values).sum()), "mean": mean, "sd": sd,
                         "small_sample": bool(counts is not None
                                              and counts.is_small(ctx.options.min_positives))})
    return pd.DataFrame(rows)


def robustness_section(ctx: ReportContext) -> list[str]:
    """Section 3 markdown; registers ``robustness_<task>_<cohort>.png/.csv``."""
    robustness = ctx.study.section("robustness")
    lines = ["## 3. Robustness to missing chest X-rays", "", missing_splits_text(robustness), "",
             "Each point: the selected configuration of that experiment (selected on "
             "validation at that missing ratio), test selection metric, mean ± SD over its "
             "seeds (band: ± 1 SD).", ""]
    any_figure = False
    for task, cohort in ctx.task_cohorts():
        data = robustness_data(ctx, task, cohort)
        ratios = sorted(data["missing_ratio"].unique()) if len(data) else []
        if len(ratios) < 2:
            continue
        any_figure = True
        label = metric_label(ctx.selection_metric(task))
        png = ctx.file_name("robustness", task, cohort, "png")
        csv = ctx.file_name("robustness", task, cohort, "csv")
        plotted = data[np.isfinite(data["mean"])]
        ctx.add_file(png, robustness_figure(plotted, f"{task} — {cohort}: test {label}",
                                            f"test {label} (mean ± SD)", dpi=ctx.options.dpi))
        ctx.add_csv(csv, data)
        table = []
        for method in dict.fromkeys(data["method"]):
            part = data[data["method"] == method].set_index("missing_ratio")
            cells = []
            for ratio in ratios:
                if ratio not in part.index or not np.isfinite(part.loc[ratio, "mean"]):
                    cells.append(DASH)
                    continue
                mean, sd = part.loc[ratio, "mean"], part.loc[ratio, "sd"]
                cell = f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"
                cells.append(cell + (FLAG if part.loc[ratio, "small_sample"] else ""))
            table.append([method, *cells])
        flagged = bool(data["small_sample"].any())
        lines += [f"### {task} — {cohort} cohort{ctx.incomplete_mark(task, cohort)}", "",
                  *ctx.incomplete_note(task, cohort),
                  f"![{task} {cohort} robustness]({png})", "", f"Data: [{csv}]({csv})", "",
                  *md_table(["Method", *[f"ratio {r:g}" for r in ratios]], table,
                            "l" + "r" * len(ratios)), "",
                  *([f"*{flag_text(ctx.options.min_positives)}*", ""] if flagged else [])]
    if not any_figure:
        lines += ["The study has a single CXR missing ratio: no robustness curves.", ""]
    return lines
