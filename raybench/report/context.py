"""What every report section shares: the study, the selected configurations, the options and
the files (figures, CSVs) written beside ``report.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raybench.metrics import higher_is_better
from raybench.report.completeness import Completeness
from raybench.report.load import PredictionSet, Study
from raybench.report.select import select_configurations, selected_rows
from raybench.report.tables import csv_bytes, slug

__all__ = ["KEY_METRICS", "ReportContext", "ReportOptions"]

#: The task kind's key test metrics shown in the main table (``los_mad_days`` when present).
KEY_METRICS = {
    "binary": ("auroc", "auprc", "f1", "ece"),
    "multilabel": ("auroc_macro", "auprc_macro", "ece"),
    "multiclass": ("kappa_linear", "accuracy", "f1_macro", "ece", "los_mad_days"),
}


@dataclass(frozen=True)
class ReportOptions:
    """Resampling counts, seed and figure resolution (the defaults are what the docs state)."""

    n_bootstrap: int = 1000
    n_permutations: int = 1000
    seed: int = 0
    dpi: int = 150
    threshold: float = 0.5
    ci_level: float = 0.95
    min_positives: int = 10  # figures resting on fewer test positives are flagged


@dataclass
class ReportContext:
    """The loaded study, its selected configurations and the output files being collected."""

    study: Study
    options: ReportOptions
    selection: pd.DataFrame = field(init=False)
    completeness: Completeness = field(init=False)
    files: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.selection = select_configurations(self.study.trials, self.study.expected_seeds)
        self.completeness = Completeness.of(self.study.config, self.study.trials)

    def incomplete_mark(self, task: str, cohort: str) -> str:
        """`` — INCOMPLETE`` for a heading when an experiment of the task and cohort misses
        trials, else an empty string."""
        sel = self.selection
        ids = sel.loc[(sel["task"] == task) & (sel["cohort"] == cohort), "experiment_id"]
        return " — INCOMPLETE" if self.completeness.incomplete(ids) else ""

    def incomplete_note(self, task: str, cohort: str) -> list[str]:
        """A paragraph naming the experiments of a task and cohort that miss trials."""
        sel = self.selection
        rows = sel[(sel["task"] == task) & (sel["cohort"] == cohort)]
        parts = []
        for _, row in rows.iterrows():
            missing = self.completeness.missing(str(row["experiment_id"]))
            if missing:
                parts.append(f"{row['method']} at CXR missing ratio {row['missing_ratio']:g}: "
                             f"{missing[0]} of {missing[1]} trials missing")
        if not parts:
            return []
        return [f"**INCOMPLETE**: {'; '.join(parts)}. Their figures rest on the trials "
                "finished so far; a configuration counts only with every seed of the study.",
                ""]

    @property
    def trials(self) -> pd.DataFrame:
        """The normalised trials table."""
        return self.study.trials

    def _ordered(self, key: str, values) -> list[str]:
        listed = self.study.config.get(key)
        order = [v for v in listed if isinstance(v, str)] if isinstance(listed, list) else []
        present = sorted(set(values))
        return [v for v in order if v in present] + [v for v in present if v not in order]

    def tasks(self) -> list[str]:
        """Tasks in ``resolved_study.yaml`` order (then any others, sorted)."""
        return self._ordered("tasks", self.selection["task"])

    def task_cohorts(self) -> list[tuple[str, str]]:
        """(task, cohort) pairs present in the study, in study order."""
        pairs = set(zip(self.selection["task"], self.selection["cohort"], strict=True))
        cohorts = self._ordered("cohorts", self.selection["cohort"])
        return [(t, c) for t in self.tasks() for c in cohorts if (t, c) in pairs]

    def baseline_ratio(self, task: str, cohort: str) -> float:
        """The smallest CXR missing ratio of a task and cohort (0 in any normal study)."""
        sel = self.selection
        return float(sel.loc[(sel["task"] == task) & (sel["cohort"] == cohort),
                             "missing_ratio"].min())

    def experiments(self, task: str, cohort: str, ratio: float | None = None) -> pd.DataFrame:
        """Selection rows of a task and cohort at ``ratio`` (default: the baseline ratio).

        Ordered unimodal first (by modalities, then method), then multimodal (by method).
        """
        ratio = self.baseline_ratio(task, cohort) if ratio is None else ratio
        sel = self.selection
        rows = sel[(sel["task"] == task) & (sel["cohort"] == cohort)
                   & np.isclose(sel["missing_ratio"], ratio)]
        return rows.sort_values(["multimodal", "modalities", "method"],
                                key=lambda s: s.map(_sort_key)).reset_index(drop=True)

    def seed_rows(self, selection_row: pd.Series) -> pd.DataFrame:
        """The ok trials (one per seed) of the selected configuration of an experiment."""
        return selected_rows(self.trials, selection_row)

    def predictions(self, selection_row: pd.Series) -> PredictionSet | None:
        """Aligned test predictions of the selected configuration (None if unavailable)."""
        rows = self.seed_rows(selection_row)
        return self.study.predictions(rows) if len(rows) else None

    def kind(self, task: str) -> str:
        """The task's kind (binary, multilabel or multiclass)."""
        return str(self.selection.loc[self.selection["task"] == task, "kind"].iloc[0])

    def selection_metric(self, task: str) -> str:
        """The task's selection metric (the ``selection_metric`` column)."""
        return str(self.selection.loc[self.selection["task"] == task,
                                      "selection_metric"].iloc[0])

    def higher_is_better(self, task: str) -> bool:
        """Direction of the task's selection metric."""
        return higher_is_better(self.selection_metric(task))

    def label_names(self, task: str) -> list[str]:
        """The task's label names (parsed from the JSON ``label_names`` column)."""
        value = self.selection.loc[self.selection["task"] == task, "label_names"].iloc[0]
        names = json.loads(value)
        return [str(n) for n in names] if isinstance(names, list) else []

    def file_name(self, prefix: str, task: str, cohort: str, ext: str) -> str:
        """``<prefix>_<task>_<cohort>.<ext>`` with file-name-safe parts."""
        return f"{prefix}_{slug(task)}_{slug(cohort)}.{ext}"

    def add_csv(self, name: str, frame: pd.DataFrame) -> str:
        """Register a CSV output; returns its file name."""
        self.files[name] = csv_bytes(frame)
        return name

    def add_file(self, name: str, data: bytes) -> str:
        """Register a binary output (a PNG); returns its file name."""
        self.files[name] = data
        return name


def _sort_key(value):
    return value if not isinstance(value, str) else value.lower()
