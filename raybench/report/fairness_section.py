"""Section 4: subgroup performance and gaps per sensitive attribute (fairlearn ``MetricFrame``).

Computed on the test predictions of each method's selected configuration (baseline CXR
missing ratio) with its seeds pooled; gaps are ``MetricFrame.difference()``. See
:mod:`raybench.report.fairness` for the metrics and the suppression rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raybench.data import GROUP_COLUMNS
from raybench.report.context import ReportContext
from raybench.report.fairness import FAIRNESS_METRICS, prediction_set_fairness
from raybench.report.figures import fairness_gap_figure
from raybench.report.small_sample import FLAG, flag_text
from raybench.report.tables import DASH, bold_best, fmt, md_table

__all__ = ["fairness_settings", "fairness_section"]


def fairness_settings(ctx: ReportContext) -> tuple[list[str], int]:
    """``(attributes, min_group_size)`` from ``resolved_study.yaml`` (defaults: all, 10)."""
    cfg = ctx.study.section("fairness")
    attributes = cfg.get("attributes")
    if not isinstance(attributes, list) or not attributes:
        attributes = list(GROUP_COLUMNS)
    min_size = cfg.get("min_group_size")
    return [str(a) for a in attributes], 10 if min_size is None else int(min_size)


def _collect(ctx: ReportContext, task: str, cohort: str, attributes: list[str],
             min_size: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    groups, gaps, missing = [], [], []
    for _, row in ctx.experiments(task, cohort).iterrows():
        pset = ctx.predictions(row)
        if pset is None:
            missing.append(str(row["method"]))
            continue
        g, d = prediction_set_fairness(pset, attributes, min_group_size=min_size,
                                       threshold=ctx.options.threshold,
                                       min_positives=ctx.options.min_positives)
        groups.append(g.assign(method=row["method"]))
        gaps.append(d.assign(method=row["method"]))
    if not groups:
        return pd.DataFrame(), pd.DataFrame(), missing
    return pd.concat(groups, ignore_index=True), pd.concat(gaps, ignore_index=True), missing


def _gap_table(gaps: pd.DataFrame, methods: list[str], metrics: list[str]) -> list[str]:
    rows = []
    for attribute in dict.fromkeys(gaps["attribute"]):
        for metric in metrics:
            part = gaps[(gaps["attribute"] == attribute) & (gaps["metric"] == metric)]
            part = part.set_index("method").reindex(methods)
            texts = [fmt(v) for v in part["gap"]]
            rows.append([attribute, metric,
                         *bold_best(texts, list(part["gap"]), higher_is_better=False)])
    return md_table(["Attribute", "Metric", *methods], rows, "ll" + "r" * len(methods))


def _group_table(groups: pd.DataFrame, gaps: pd.DataFrame, attribute: str,
                 methods: list[str], metrics: list[str]) -> list[str]:
    shown = groups[(groups["attribute"] == attribute) & ~groups["suppressed"]]
    names = sorted(shown["group"].unique())
    sizes = shown.drop_duplicates("group").set_index("group")["n"]
    headers = ["Method", "Metric", *[f"{g} (n={sizes[g]:,})" for g in names], "gap"]
    rows = []
    for method in methods:
        for metric in metrics:
            part = shown[(shown["method"] == method) & (shown["metric"] == metric)]
            values = part.set_index("group")["value"].reindex(names)
            small = part.set_index("group")["small_sample"].reindex(names).fillna(False)
            gap = gaps[(gaps["method"] == method) & (gaps["attribute"] == attribute)
                       & (gaps["metric"] == metric)]["gap"]
            cells = [fmt(v) + (FLAG if flag and np.isfinite(v) else "")
                     for v, flag in zip(values, small, strict=True)]
            rows.append([method, metric, *cells, fmt(gap.iloc[0]) if len(gap) else DASH])
    return md_table(headers, rows, "ll" + "r" * (len(names) + 1))


def _suppressed_text(groups: pd.DataFrame, min_size: int) -> str:
    sup = groups[groups["suppressed"]].drop_duplicates(["attribute", "group"])
    if sup.empty:
        return f"No group had fewer than {min_size} test samples."
    small = sup[~sup["complementary"]]
    listed = "; ".join(f"{a}: " + ", ".join(f"`{g}`" for g in sorted(part["group"]))
                       for a, part in small.groupby("attribute", sort=True))
    text = (f"Suppressed groups (fewer than {min_size} test samples; not shown, excluded from "
            f"the gaps, counts withheld): {listed}.")
    extra = sup[sup["complementary"]]
    if len(extra):
        listed = "; ".join(f"{a}: " + ", ".join(f"`{g}`" for g in sorted(part["group"]))
                           for a, part in extra.groupby("attribute", sort=True))
        text += (" Also withheld, so that no suppressed count can be recovered by subtracting "
                 f"the shown groups from the total (complementary suppression): {listed}.")
    return text


def fairness_section(ctx: ReportContext) -> list[str]:
    """Section 4 markdown; registers ``fairness_<task>_<cohort>.png/.csv`` (the gaps)."""
    attributes, min_size = fairness_settings(ctx)
    thr = ctx.options.threshold
    lines = [
        "## 4. Fairness: subgroup performance and gaps", "",
        f"fairlearn `MetricFrame` (metrics, y_true, y_pred = predicted probabilities, "
        f"sensitive_features) per attribute ({', '.join(attributes)}) on the test predictions "
        "of each method's selected configuration with its seeds pooled (one row per test "
        "sample and seed, so TPR, FPR and accuracy are the means over seeds; n counts test "
        "samples). Metrics: AUPRC, TPR and FPR at "
        f"threshold {thr:g} (probability ≥ {thr:g} is positive; TPR undefined without "
        "positives, FPR without negatives) and ECE (10 bins); multilabel tasks: the unweighted "
        "mean over labels of each; multiclass tasks: accuracy and top-label ECE only (TPR/FPR "
        "need one positive class and are skipped). Gap = `MetricFrame.difference()` (max − min "
        "over the shown groups). "
        f"Groups with fewer than {min_size} test samples are suppressed before the "
        "`MetricFrame` is built: they are not shown and do not enter the gap; when any group "
        "is suppressed, the next smallest groups are withheld too until at least two groups "
        f"holding at least {min_size} samples together are withheld, so that no suppressed "
        "count follows from the total (complementary suppression). Bold: smallest gap per "
        f"row. {flag_text(ctx.options.min_positives)} (Per-group class counts are not shown: "
        "they would be small counts.)", ""]
    for task, cohort in ctx.task_cohorts():
        methods = list(ctx.experiments(task, cohort)["method"])
        groups, gaps, missing = _collect(ctx, task, cohort, attributes, min_size)
        lines += [f"### {task} — {cohort} cohort{ctx.incomplete_mark(task, cohort)}", "",
                  *ctx.incomplete_note(task, cohort)]
        if groups.empty:
            lines += ["No test predictions available.", ""]
            continue
        if gaps.empty or groups["suppressed"].all():
            lines += ["No subgroup analysis: every group of every attribute has fewer than "
                      f"{min_size} test samples. {_suppressed_text(groups, min_size)}", ""]
            continue
        metrics = list(FAIRNESS_METRICS[ctx.kind(task)])
        shown_methods = [m for m in methods if m in set(gaps["method"])]
        png = ctx.file_name("fairness", task, cohort, "png")
        csv = ctx.file_name("fairness", task, cohort, "csv")
        ctx.add_file(png, fairness_gap_figure(gaps, f"{task} — {cohort}: subgroup gaps",
                                              dpi=ctx.options.dpi))
        ctx.add_csv(csv, gaps.assign(task=task, cohort=cohort)[
            ["task", "cohort", "method", "attribute", "metric", "gap", "n_seeds"]])
        lines += [f"![{task} {cohort} fairness gaps]({png})", "", f"Data: [{csv}]({csv})", "",
                  *_gap_table(gaps, shown_methods, metrics), "", _suppressed_text(groups, min_size),
                  ""]
        if missing:
            lines += [f"No predictions for: {', '.join(missing)}.", ""]
        for attribute in dict.fromkeys(gaps["attribute"]):
            lines += [f"#### {task} — {cohort}: {attribute}", "",
                      *_group_table(groups, gaps, attribute, shown_methods, metrics), ""]
    return lines
