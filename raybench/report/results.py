"""Sections 1 and 2: the main results tables and the per-label AUPRC tables with ranks.

Main table (per task and cohort, at the baseline CXR missing ratio, normally 0): one row per
method, unimodal first. Metric cells are mean ± SD over the seeds of the selected
configuration, read from ``trials.parquet`` (``test_<metric>``). From the test predictions:
a percentile bootstrap CI of the mean over seeds of the selection metric, and a paired
permutation test (on seed-averaged probabilities) of each multimodal method against the best
unimodal method, the best chosen by mean VALIDATION selection metric.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raybench.metrics import higher_is_better
from raybench.report.context import KEY_METRICS, ReportContext
from raybench.report.small_sample import FLAG, ClassCounts, class_counts, flag_text
from raybench.report.stats import bootstrap_ci, paired_permutation_test, selection_scorer
from raybench.report.tables import DASH, bold_best, fmt, fmt_p, md_table, mean_sd, metric_label

__all__ = ["best_unimodal", "main_results_section", "per_label_section", "row_counts"]


def best_unimodal(rows: pd.DataFrame) -> pd.Series | None:
    """The unimodal experiment with the best mean VALIDATION selection metric (None if none).

    ``rows`` are selection rows of one task and cohort; ties go to the method name order.
    """
    uni = rows[(~rows["multimodal"]) & (rows["config_id"] >= 0) & np.isfinite(rows["val_mean"])]
    if uni.empty:
        return None
    sign = -1.0 if higher_is_better(str(uni["selection_metric"].iloc[0])) else 1.0
    order = np.lexsort((uni["method"].to_numpy(), sign * uni["val_mean"].to_numpy()))
    return uni.iloc[order[0]]


def _metric_values(ctx: ReportContext, row: pd.Series, metric: str) -> np.ndarray:
    seeds = ctx.seed_rows(row)
    column = f"test_{metric}"
    if column not in seeds.columns:
        return np.array([], dtype=np.float64)
    return seeds[column].to_numpy(np.float64)


def row_counts(ctx: ReportContext, row: pd.Series) -> ClassCounts | None:
    """Test class counts of an experiment's selected configuration (None: no predictions)."""
    pset = ctx.predictions(row)
    return None if pset is None else class_counts(pset.kind, pset.y_true)


def _ci_cell(ctx: ReportContext, row: pd.Series, scorer) -> tuple[str, int, int]:
    """``([low, high] text, test samples, degenerate resamples)``; the text shows the number
    of degenerate resamples and the small-sample flag."""
    pset = ctx.predictions(row)
    if pset is None:
        return DASH, 0, 0
    o = ctx.options
    ci = bootstrap_ci(scorer, pset.y_true, pset.probs, n_resamples=o.n_bootstrap,
                      seed=o.seed, level=o.ci_level)
    text = f"[{fmt(ci.low)}, {fmt(ci.high)}]"
    if ci.n_valid < ci.n_resamples:
        text += f" ({ci.n_resamples - ci.n_valid:,} degenerate)"
    if class_counts(pset.kind, pset.y_true).is_small(o.min_positives):
        text += FLAG
    return text, len(pset.y_true), ci.n_resamples - ci.n_valid


def _permutation_cell(ctx: ReportContext, row: pd.Series, ref: pd.Series, scorer) -> str:
    a, b = ctx.predictions(row), ctx.predictions(ref)
    if a is None or b is None:
        return DASH
    common = np.intersect1d(a.sample, b.sample)
    if common.size == 0:
        return DASH
    a, b = a.subset(common), b.subset(common)
    if not np.array_equal(a.y_true, b.y_true):
        return "labels differ"
    o = ctx.options
    res = paired_permutation_test(scorer, a.y_true, a.seed_mean(), b.seed_mean(),
                                  n_permutations=o.n_permutations, seed=o.seed)
    if not np.isfinite(res.statistic):
        return DASH
    small = class_counts(a.kind, a.y_true).is_small(o.min_positives)
    return f"{res.statistic:+.3f} (p = {fmt_p(res.p_value)})" + (FLAG if small else "")


def _main_table(ctx: ReportContext, task: str, cohort: str) -> list[str]:
    rows = ctx.experiments(task, cohort)
    kind, metric = ctx.kind(task), ctx.selection_metric(task)
    scorer = selection_scorer(kind, metric, ctx.label_names(task))
    metrics = [m for m in KEY_METRICS[kind]
               if any(np.isfinite(_metric_values(ctx, r, m)).any() for _, r in rows.iterrows())]
    ref = best_unimodal(rows)
    o = ctx.options
    columns: dict[str, list[str]] = {m: [] for m in metrics}
    means: dict[str, list[float]] = {m: [] for m in metrics}
    ci_cells, p_cells, seed_counts, n_test = [], [], [], set()
    counts = [row_counts(ctx, row) for _, row in rows.iterrows()]
    small = [c is not None and c.is_small(o.min_positives) for c in counts]
    any_degenerate = False
    for _, row in rows.iterrows():
        for m in metrics:
            mean, _, text = mean_sd(_metric_values(ctx, row, m))
            columns[m].append(text)
            means[m].append(mean)
        seed_counts.append(int(row["n_seeds"]))
        ci, n, degenerate = _ci_cell(ctx, row, scorer)
        any_degenerate |= degenerate > 0
        ci_cells.append(ci)
        if n:
            n_test.add(n)
        if ref is None or not row["multimodal"] or row["config_id"] < 0:
            p_cells.append("reference" if ref is not None and row["method"] == ref["method"]
                           else DASH)
        else:
            p_cells.append(_permutation_cell(ctx, row, ref, scorer))
    for m in metrics:
        columns[m] = [t + FLAG if flagged and t != DASH else t for t, flagged in
                      zip(bold_best(columns[m], means[m], higher_is_better(m)), small,
                          strict=True)]
    seed_numbers = sorted({c for c in seed_counts if c})
    seeds_text = (f"{seed_numbers[0]} seeds" if len(seed_numbers) == 1
                  else "the seeds in column *seeds*")
    label = metric_label(metric)
    ref_name = ref["method"] if ref is not None else "best unimodal"
    level = f"{o.ci_level * 100:g} %"
    headers = (["Method", "Modalities"] + [metric_label(m) for m in metrics]
               + ([] if len(seed_numbers) == 1 else ["seeds"])
               + [f"{label} {level} CI", f"Δ {label} vs {ref_name} (p)"])
    table_rows = []
    for i, (_, row) in enumerate(rows.iterrows()):
        name = row["method"] if row["config_id"] >= 0 else f"{row['method']} (no eligible config)"
        missing = ctx.completeness.missing(str(row["experiment_id"]))
        if missing:
            name += f" (INCOMPLETE: {missing[0]} of {missing[1]} trials missing)"
        cells = [name, row["modalities"]] + [columns[m][i] for m in metrics]
        cells += [] if len(seed_numbers) == 1 else [str(seed_counts[i])]
        table_rows.append(cells + [ci_cells[i], p_cells[i]])
    n_text = ", ".join(str(n) for n in sorted(n_test)) or "no"
    caption = (
        f"*Test metrics of each method's selected configuration (best mean validation {label} "
        f"over its seeds), mean ± SD over {seeds_text} (SD across seeds, not SEM); bold: best "
        f"per column (lowest for ECE and LoS MAD). {label} CI: {o.ci_level * 100:g} % "
        f"percentile bootstrap CI of the mean over seeds of the test {label} ({o.n_bootstrap:,} "
        f"resamples of the {n_text} test samples, seed {o.seed}; each resample is scored on "
        f"every seed's predictions and averaged). Δ {label} (p): {label} of a multimodal "
        f"method minus that of the best unimodal method by mean validation {label} "
        f"({ref_name}), both computed on the seed-averaged probabilities of each test sample; "
        f"two-sided paired permutation test, {o.n_permutations:,} permutations swapping the "
        f"two methods' predictions within each sample (seed {o.seed}).*"
    )
    if any_degenerate:
        caption += (f" *(n degenerate): n of the {o.n_bootstrap:,} bootstrap resamples had no "
                    f"positive or no negative, which leaves {label} undefined; they are left out "
                    "of the CI, which therefore describes only test sets holding both classes "
                    "and is too narrow.*")
    if any(small):
        caption += f" *{flag_text(o.min_positives)}*"
    if not n_test:
        caption = (f"*No method has an eligible configuration here: every configuration had a "
                   f"failed seed or an undefined validation {label} (e.g. a validation split "
                   f"without both classes).* " + caption)
    ratio = ctx.baseline_ratio(task, cohort)
    tested = "; ".join(dict.fromkeys(c.text() for c in counts if c is not None))
    return [f"### {task} — {cohort} cohort (CXR missing ratio {ratio:g}; mean ± SD over "
            f"{seeds_text}){ctx.incomplete_mark(task, cohort)}", "",
            f"Test set: {tested or 'no predictions'}.", "",
            *ctx.incomplete_note(task, cohort),
            *md_table(headers, table_rows, "ll" + "r" * (len(headers) - 2)), "", caption, ""]


def main_results_section(ctx: ReportContext) -> list[str]:
    """Section 1: per task and cohort, the method table with CIs and permutation tests."""
    lines = ["## 1. Main results", ""]
    for task, cohort in ctx.task_cohorts():
        lines += _main_table(ctx, task, cohort)
    return lines


def _rank_table(ctx: ReportContext, task: str, cohort: str) -> list[str]:
    rows = ctx.experiments(task, cohort)
    names = ctx.label_names(task)
    methods = list(rows["method"])
    grid = pd.DataFrame(np.nan, index=names, columns=methods)
    for _, row in rows.iterrows():
        for name in names:
            values = _metric_values(ctx, row, f"auprc/{name}")
            grid.loc[name, row["method"]] = mean_sd(values)[0]
    grid = grid.dropna(how="all")
    if grid.empty:
        return []
    ranks = grid.rank(axis=1, ascending=False, method="average").mean(axis=0)
    macro = [mean_sd(_metric_values(ctx, r, "auprc_macro"))[0] for _, r in rows.iterrows()]
    positives = _label_positives(ctx, rows, names)
    o = ctx.options
    table, flagged = [], False
    for name, values in grid.iterrows():
        pos = positives.get(name)
        small = pos is not None and min(pos) < o.min_positives
        flagged |= small
        cells = [t + FLAG if small and t != DASH else t
                 for t in bold_best([fmt(v) for v in values], list(values), True)]
        table.append([name, DASH if pos is None else f"{pos[0]:,}", *cells])
    table.append(["macro AUPRC", "", *bold_best([fmt(v) for v in macro], macro, True)])
    table.append(["**average rank**", "",
                  *bold_best([fmt(v, 2) for v in ranks], list(ranks), higher_is_better=False)])
    ratio = ctx.baseline_ratio(task, cohort)
    seeds = sorted({int(n) for n in rows["n_seeds"] if n})
    return [f"### {task} — {cohort} cohort (CXR missing ratio {ratio:g})"
            f"{ctx.incomplete_mark(task, cohort)}", "", *ctx.incomplete_note(task, cohort),
            *md_table(["Condition", "test positives", *methods], table,
                      "lr" + "r" * len(methods)), "",
            f"*Test AUPRC per condition, mean over {'/'.join(map(str, seeds))} seeds of each "
            "method's selected configuration; bold: best per row. Average rank: each "
            "condition ranks the methods (1 = highest AUPRC, ties share the mean rank), "
            "averaged over conditions (lower is better). Test positives: samples with the "
            "condition in the test set.*" + (f" *{flag_text(o.min_positives)}*" if flagged
                                              else ""), ""]


def _label_positives(ctx: ReportContext, rows: pd.DataFrame,
                     names: list[str]) -> dict[str, tuple[int, int]]:
    """Per label: (positives, rarer class count) in the first available prediction set."""
    for _, row in rows.iterrows():
        pset = ctx.predictions(row)
        if pset is not None and pset.y_true.ndim == 2 and pset.y_true.shape[1] == len(names):
            n = pset.y_true.shape[0]
            pos = (pset.y_true == 1).sum(axis=0)
            return {name: (int(p), int(min(p, n - p))) for name, p in zip(names, pos,
                                                                          strict=True)}
    return {}


def per_label_section(ctx: ReportContext) -> list[str]:
    """Section 2: per-condition AUPRC and average rank for every multilabel task and cohort."""
    lines = ["## 2. Per-condition AUPRC and average rank (multilabel tasks)", ""]
    pairs = [(t, c) for t, c in ctx.task_cohorts() if ctx.kind(t) == "multilabel"]
    for task, cohort in pairs:
        lines += _rank_table(ctx, task, cohort)
    if not pairs:
        lines += ["No multilabel task in this study.", ""]
    return lines
