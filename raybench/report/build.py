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
from raybench.report.results import main_results_section, per_label_section
from raybench.report.robustness import robustness_section
from raybench.report.tables import md_table, metric_label

__all__ = ["GENERATED_FILE", "build_report"]

REPORT_NAME = "report.md"
#: Files a previous build may have written (removed when this build does not write them).
GENERATED_FILE = re.compile(r"^(robustness|fairness|convergence)_[A-Za-z0-9_.-]+\.(png|csv)$")
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
        ["Seeds", ", ".join(str(s) for s in sorted(trials["seed"].unique()))],
        ["Search", ", ".join(f"{k} {search[k]}" for k in ("type", "n_calls") if k in search)
         or "not recorded"],
        ["CXR missing ratios", ratios],
        ["Trials", f"{len(trials)} run: {ok} ok, {len(trials) - ok} failed"],
        ["Experiments", f"{len(sel)} ({int((sel['config_id'] >= 0).sum())} with a selectable "
                        "configuration)"],
    ]
    lines = [f"# Results report: {ctx.study.name}", "",
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
        "7. Failed trials", ""]
    return lines


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


def _write(out_dir: Path, files: dict[str, bytes]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(out_dir.iterdir()):
        if old.is_file() and GENERATED_FILE.match(old.name) and old.name not in files:
            old.unlink()
    for name in sorted(files):
        (out_dir / name).write_bytes(files[name])


def build_report(study_dir: Path, out_dir: Path | None = None, *, n_bootstrap: int = 1000,
                 n_permutations: int = 1000, seed: int = 0, dpi: int = 150) -> Path:
    """Write ``report.md`` with its PNG figures and CSVs; return the ``report.md`` path.

    ``out_dir`` defaults to ``study_dir / "report"``. ``n_bootstrap`` / ``n_permutations``
    are the resample counts of the CIs and permutation tests, ``seed`` their RNG seed, ``dpi``
    the PNG resolution. Raises :class:`RaybenchError` when the study directory or its
    ``trials.parquet`` is missing or malformed. Failed trials are reported, never fatal.
    """
    if n_bootstrap < 1 or n_permutations < 1 or dpi < 10:
        raise RaybenchError("n_bootstrap and n_permutations must be >= 1 and dpi >= 10")
    study = load_study(study_dir)
    out = Path(out_dir) if out_dir is not None else study.root / "report"
    ctx = ReportContext(study, ReportOptions(n_bootstrap=n_bootstrap,
                                             n_permutations=n_permutations, seed=seed, dpi=dpi))
    with np.errstate(all="ignore"):
        lines = [*_header(ctx), *main_results_section(ctx), *per_label_section(ctx),
                 *robustness_section(ctx), *fairness_section(ctx),
                 *calibration_cost_section(ctx), *search_section(ctx), *_failed_section(ctx)]
    text = "\n".join(lines).rstrip("\n") + "\n"
    ctx.files[REPORT_NAME] = text.encode("utf-8")
    _write(out, ctx.files)
    return out / REPORT_NAME
