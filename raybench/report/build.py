"""``build_report``: the whole markdown report of a study directory, with figures and CSVs.

The report is a pure function of the study directory and the options: seeded resampling,
sorted orders, deterministic PNGs, no timestamps and no absolute paths, so re-running it gives
byte-identical files. No subject/admission/stay/image identifier is ever read or written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from raybench.errors import RaybenchError
from raybench.report.context import ReportContext, ReportOptions
from raybench.report.convergence import search_section
from raybench.report.costs import calibration_cost_section
from raybench.report.fairness_section import fairness_section
from raybench.report.load import load_study
from raybench.report.output import write_outputs
from raybench.report.results import main_results_section, per_label_section
from raybench.report.robustness import robustness_section
from raybench.report.ssl_section import has_ssl, ssl_section
from raybench.report.tables import md_table, metric_label

__all__ = ["build_report"]

REPORT_NAME = "report.md"
_MAX_FAILED_ROWS = 50


def _sanitise_error(text: object) -> str:
    """One line, long digit runs masked (an error message could quote an identifier)."""
    if not isinstance(text, str) or not text.strip():
        return "(no message)"
    line = re.sub(r"\s+", " ", text).strip()
    line = re.sub(r"\d{6,}", "<number>", line)
    return line if len(line) <= 120 else line[:117] + "..."


def _header(ctx: ReportContext) -> list[str]:
    trials, sel = ctx.trials, ctx.selection
    ok = int((trials["status"] == "ok").sum())
    tasks = ", ".join(f"{t} ({ctx.kind(t)}; selection: validation "
                      f"{metric_label(ctx.selection_metric(t))})" for t in ctx.tasks())
    cohorts = list(dict.fromkeys(c for _, c in ctx.task_cohorts()))
    methods = sel.drop_duplicates("method").sort_values(["multimodal", "modalities", "method"])
    search = ctx.study.section("search")
    ratios = ", ".join(f"{r:g}" for r in sorted(sel["missing_ratio"].unique()))
    rows = [
        ["Tasks", tasks],
        ["Cohorts", ", ".join(cohorts)],
        ["Methods", ", ".join(f"{m} ({mod})" for m, mod in
                              zip(methods["method"], methods["modalities"], strict=True))],
        ["Seeds", _seeds_text(ctx)],
        ["Search", ", ".join(f"{k} {search[k]}" for k in ("type", "n_calls") if k in search)
         or "not recorded"],
        ["CXR missing ratios", ratios],
        ["Trials", f"{len(trials)} run: {ok} ok, {len(trials) - ok} failed"
                   + _planned_text(ctx)],
        ["Experiments", f"{len(sel)} ({int((sel['config_id'] >= 0).sum())} with a selectable "
                        "configuration)"],
    ]
    missing, _ = ctx.completeness.totals()
    title = f"# Results report: {ctx.study.name}" + (" (INCOMPLETE)" if missing else "")
    lines = [title, "", *_incomplete_banner(ctx),
             "Built from the study directory alone (`resolved_study.yaml`, `trials.parquet`, "
             "`predictions/`); nothing is retrained. Regenerate with "
             "`raybench report STUDY_DIR`.", "", *md_table(["", ""], rows), ""]
    lines += [f"> {note}" for note in ctx.study.notes] + ([""] if ctx.study.notes else [])
    lines += [
        "**Selected configuration.** For every experiment (task, cohort, method, CXR missing "
        "ratio) the configuration with the best mean VALIDATION selection metric over its "
        "seeds, among configurations whose seeds all finished ok (ties: lowest config id). Test "
        "metrics are only reported, never used to choose. Every table below shows that "
        "configuration's test metrics as mean ± SD over its seeds.", "",
        "Contents: 1. Main results · 2. Per-condition AUPRC · 3. Robustness to missing CXR · "
        "4. Fairness · 5. Calibration and cost · 6. Hyperparameters and convergence · "
        "7. Failed trials" + (" · 8. Self-supervised pretraining" if has_ssl(ctx) else ""), ""]
    return lines


def _seeds_text(ctx: ReportContext) -> str:
    ran = sorted(int(s) for s in ctx.trials["seed"].unique())
    expected = ctx.study.expected_seeds
    if expected is None or sorted(expected) == ran:
        return ", ".join(map(str, ran))
    return (f"{', '.join(map(str, expected))} (trials so far with seeds "
            f"{', '.join(map(str, ran))})")


def _planned_text(ctx: ReportContext) -> str:
    missing, planned = ctx.completeness.totals()
    if not ctx.completeness.known:
        return " (planned count unknown: `resolved_study.yaml` lacks the study grid)"
    return f"; {planned} planned, {missing} missing" if missing else f"; all {planned} planned"


def _incomplete_banner(ctx: ReportContext) -> list[str]:
    missing, planned = ctx.completeness.totals()
    if not missing:
        return []
    affected = ctx.completeness.incomplete()
    absent = ctx.completeness.never_started()
    text = (f"> **INCOMPLETE**: {missing} of {planned} planned trials have no result (the study "
            f"was interrupted or is still running); {len(affected)} of "
            f"{len(ctx.completeness.planned)} experiments are affected")
    if absent:
        text += (f", {len(absent)} of them without any trial and therefore absent from every "
                 f"table ({', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''})")
    return [text + ". Tables holding an affected experiment say INCOMPLETE. Resume the study "
            "(`raybench study` with the same file) to complete it.", ""]


def _failed_section(ctx: ReportContext) -> list[str]:
    failed = ctx.trials[ctx.trials["status"] != "ok"]
    lines = ["## 7. Failed trials", ""]
    if failed.empty:
        return lines + ["No trial failed.", ""]
    lines.append(f"{len(failed)} of {len(ctx.trials)} trials did not finish ok. They count in "
                 "the cost table and make their configuration ineligible for selection.")
    lines.append("")
    rows = [[r.experiment_id, str(r.config_id), str(r.seed), r.status, _sanitise_error(r.error)]
            for r in failed.head(_MAX_FAILED_ROWS).itertuples(index=False)]
    lines += md_table(["Experiment", "Config", "Seed", "Status", "Error"], rows, "lrrll")
    if len(failed) > _MAX_FAILED_ROWS:
        lines.append(f"\n... and {len(failed) - _MAX_FAILED_ROWS} more.")
    return lines + [""]


def build_report(study_dir: Path, out_dir: Path | None = None, *, n_bootstrap: int = 1000,
                 n_permutations: int = 1000, seed: int = 0, dpi: int = 150,
                 min_positives: int = 10) -> Path:
    """Write ``report.md`` with its PNG figures and CSVs; return the ``report.md`` path.

    ``out_dir`` defaults to ``study_dir / "report"``. ``n_bootstrap`` / ``n_permutations``
    are the resample counts of the CIs and permutation tests, ``seed`` their RNG seed, ``dpi``
    the PNG resolution, ``min_positives`` the rarer-class count below which a figure is flagged
    (see :mod:`raybench.report.small_sample`). Raises :class:`RaybenchError` when the study
    directory or its ``trials.parquet`` is missing or malformed. Failed trials are reported,
    never fatal.
    """
    if n_bootstrap < 1 or n_permutations < 1 or dpi < 10 or min_positives < 1:
        raise RaybenchError("n_bootstrap, n_permutations and min_positives must be >= 1 and "
                            "dpi >= 10")
    study = load_study(study_dir)
    out = Path(out_dir) if out_dir is not None else study.root / "report"
    ctx = ReportContext(study, ReportOptions(n_bootstrap=n_bootstrap,
                                             n_permutations=n_permutations, seed=seed, dpi=dpi,
                                             min_positives=min_positives))
    with np.errstate(all="ignore"):
        lines = [*_header(ctx), *main_results_section(ctx), *per_label_section(ctx),
                 *robustness_section(ctx), *fairness_section(ctx),
                 *calibration_cost_section(ctx), *search_section(ctx), *_failed_section(ctx),
                 *ssl_section(ctx)]
    text = "\n".join(lines).rstrip("\n") + "\n"
    ctx.files[REPORT_NAME] = text.encode("utf-8")
    write_outputs(out, ctx.files)
    return out / REPORT_NAME
