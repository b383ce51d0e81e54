"""Section 8: self-supervised pretraining, laid out like MedMod's Tables 4-6.

For each cohort, one table per representation -- multimodal (MedMod Table 4), EHR only
(Table 5), CXR only (Table 6) -- with a row per SSL method and evaluation (``linear``,
``finetune``) and, for comparison, the best supervised method of the same modality group on
each task (chosen by mean VALIDATION selection metric, like everything in this report).
Cells are the test metrics of the selected downstream configuration, mean ± SD over seeds.
Then the pretraining runs and the checkpoint chosen for each task (``pretraining.json``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from raybench.metrics import higher_is_better
from raybench.report.context import KEY_METRICS, ReportContext
from raybench.report.tables import DASH, fmt, md_table, mean_sd, metric_label

__all__ = ["has_ssl", "ssl_section"]

_TABLES = (("multimodal", "cxr+ehr", "Table 4 layout: multimodal"),
           ("ehr", "ehr", "Table 5 layout: EHR only"),
           ("cxr", "cxr", "Table 6 layout: CXR only"))


def _is_ssl(method: str) -> bool:
    return method.count("/") == 2


def has_ssl(ctx: ReportContext) -> bool:
    """Whether the study has downstream SSL experiments."""
    return bool(ctx.selection["method"].map(_is_ssl).any())


def _metrics(ctx: ReportContext, task: str) -> tuple[str, ...]:
    return KEY_METRICS[ctx.kind(task)][:2]


def _cells(ctx: ReportContext, row: pd.Series | None, task: str) -> list[str]:
    if row is None:
        return [DASH] * len(_metrics(ctx, task))
    seeds = ctx.seed_rows(row)
    cells = []
    for metric in _metrics(ctx, task):
        column = f"test_{metric}"
        values = seeds[column].to_numpy(np.float64) if column in seeds.columns else []
        cells.append(mean_sd(values)[2])
    return cells


def _best_supervised(rows: pd.DataFrame, modalities: str) -> pd.Series | None:
    group = rows[~rows["method"].map(_is_ssl) & (rows["config_id"] >= 0)
                 & np.isfinite(rows["val_mean"])]
    group = group[group["modalities"] == modalities] if modalities != "cxr+ehr" else group[
        group["multimodal"]]
    if group.empty:
        return None
    sign = -1.0 if higher_is_better(str(group["selection_metric"].iloc[0])) else 1.0
    order = np.lexsort((group["method"].to_numpy(), sign * group["val_mean"].to_numpy()))
    return group.iloc[order[0]]


def _table(ctx: ReportContext, cohort: str, modality: str, modalities: str, title: str
           ) -> list[str]:
    tasks = [t for t, c in ctx.task_cohorts() if c == cohort]
    rows = {t: ctx.experiments(t, cohort) for t in tasks}
    names = []
    for task in tasks:
        for method in rows[task]["method"]:
            if _is_ssl(method) and method.endswith(f"/{modality}"):
                name = method.rsplit("/", 1)[0]
                names += [] if name in names else [name]
    if not names:
        return []
    headers = ["Method"] + [f"{task} {metric_label(m)}" for task in tasks
                            for m in _metrics(ctx, task)]
    table = []
    for name in names:
        cells = []
        for task in tasks:
            match = rows[task][rows[task]["method"] == f"{name}/{modality}"]
            cells += _cells(ctx, match.iloc[0] if len(match) else None, task)
        table.append([name.replace("/", " "), *cells])
    best = {t: _best_supervised(rows[t], modalities) for t in tasks}
    cells = [c for t in tasks for c in _cells(ctx, best[t], t)]
    table.append(["best supervised", *cells])
    chosen = ", ".join(f"{t}: {best[t]['method'] if best[t] is not None else DASH}"
                       for t in tasks)
    return [f"### {title} — {cohort} cohort", "",
            *md_table(headers, table, "l" + "r" * (len(headers) - 1)), "",
            f"*Test metrics, mean ± SD over seeds, of each downstream experiment's selected "
            f"configuration. Best supervised ({modalities} methods, by mean validation "
            f"selection metric): {chosen}.*", ""]


def _summary(ctx: ReportContext) -> dict | None:
    path = ctx.study.root / "pretraining.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _runs_table(ctx: ReportContext, summary: dict) -> list[str]:
    resources = ctx.study.section("resources")
    cpu = float(resources.get("cpu", 1.0) or 0.0)
    table = []
    for run in summary.get("runs", []):
        params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in sorted(run["params"].items())) or "defaults"
        hours = (run["pretrain_seconds"] + run["probe_seconds"]) * cpu / 3600
        table.append([run["method"], str(run["config_id"]), params, str(run["seed"]),
                      str(run["epochs_run"]), str(run["best_epoch"]),
                      fmt(run["best_val_ssl_loss"], 4), fmt(run["seconds_per_epoch"], 2),
                      fmt(run["probe_seconds"], 1), fmt(hours, 3)])
    headers = ["Method", "Config", "Pretraining params", "Seed", "Epochs", "Best epoch",
               "Val SSL loss", "s / epoch", "Probing s", "CPU core-h"]
    failed = int(summary.get("failed_runs", 0))
    return ["### Pretraining runs", "", *md_table(headers, table, "llll" + "r" * 6), "",
            f"*One run per method, pretraining configuration and seed, on the paired training "
            f"samples; early stopping on validation SSL loss. Probing: the linear probes that "
            f"score each stored checkpoint. {failed} run(s) failed.*", ""]


def _selection_table(summary: dict) -> list[str]:
    table = []
    for method, keys in sorted(summary.get("selection", {}).items()):
        for key, choice in sorted(keys.items()):
            task, cohort, modality = key.split("|")
            epochs = ", ".join(f"{s}: {v['epoch']}" for s, v in sorted(choice["seeds"].items()))
            table.append([method, task, cohort, modality, str(choice["config_id"]),
                          choice.get("by", "probe"), fmt(choice["val_score"]), epochs])
    if not table:
        return []
    headers = ["Method", "Task", "Cohort", "Modality", "Config", "Chosen by", "Val score",
               "Checkpoint epoch per seed"]
    return ["### Chosen pretraining checkpoints", "", *md_table(headers, table, "llllllrl"), "",
            "*Per task, cohort and modality: the pretraining configuration with the best mean "
            "over seeds of each seed's best VALIDATION linear-probe score (the task's "
            "selection metric; `val_ssl_loss`: no probe score was defined, e.g. one class in "
            "validation, so the lowest validation SSL loss decided), and each seed's "
            "checkpoint.*", ""]


def ssl_section(ctx: ReportContext) -> list[str]:
    """Section 8 (only when the study has downstream SSL experiments)."""
    if not has_ssl(ctx):
        return []
    lines = ["## 8. Self-supervised pretraining", ""]
    cohorts = list(dict.fromkeys(c for _, c in ctx.task_cohorts()))
    for cohort in cohorts:
        for modality, modalities, title in _TABLES:
            lines += _table(ctx, cohort, modality, modalities, title)
    summary = _summary(ctx)
    if summary is None:
        return lines + ["`pretraining.json` not found: pretraining runs not shown.", ""]
    return lines + _runs_table(ctx, summary) + _selection_table(summary)
