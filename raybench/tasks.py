"""The task registry: what each prepared task predicts, how it is scored and selected.

Task names are the prepared dataset's label files (``labels/<name>.parquet``); the label
names and counts come from the dataset's manifest, so nothing here hard-codes a dimension.
Model selection always uses the validation split.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from raybench.errors import RaybenchError
from raybench.metrics import SELECTION_METRIC


@dataclass(frozen=True)
class Task:
    """One prediction task."""

    name: str
    kind: str  # binary | multilabel | multiclass
    description: str
    hourly: bool = False
    loss: str = ""  # filled from kind
    selection_metric: str = ""  # filled from kind, always computed on validation

    def __post_init__(self) -> None:
        loss = "cross_entropy" if self.kind == "multiclass" else "bce_with_logits"
        object.__setattr__(self, "loss", self.loss or loss)
        object.__setattr__(self, "selection_metric",
                           self.selection_metric or SELECTION_METRIC[self.kind])


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry (a duplicate name raises)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


for _task in (
    Task("mortality", "binary", "in-hospital mortality from the first 48 h (MedMod)"),
    Task("mortality_icu", "binary", "ICU mortality from the first 48 h (CareBench)"),
    Task("phenotyping", "multilabel", "25 acute/chronic phenotypes from the whole stay"),
    Task("decompensation", "binary", "death within 24 h, every hour from 4 h", hourly=True),
    Task("length_of_stay", "multiclass", "remaining ICU stay, 10 buckets, hourly (MedMod)",
         hourly=True),
    Task("length_of_stay_7", "multiclass",
         "remaining stay after 48 h, 7 buckets (CareBench)", selection_metric="accuracy"),
    Task("radiology", "multilabel", "14 CheXpert findings per AP image"),
):
    register_task(_task)


def get_task(name: str) -> Task:
    """The registered task ``name``; an unknown name lists the known ones."""
    if name not in TASKS:
        raise RaybenchError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def list_tasks(pattern: str = "*") -> list[str]:
    """Registered task names matching a wildcard pattern."""
    return sorted(n for n in TASKS if fnmatch.fnmatch(n, pattern))
