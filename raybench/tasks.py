"""The task registry: what each prepared task predicts, how it is scored and selected.

Task names are the prepared dataset's label files (``labels/<name>.parquet``); the label
names and counts come from the dataset's manifest, so nothing here hard-codes a dimension.
Model selection always uses the validation split.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from raybench.errors import RaybenchError
from raybench.metrics import MEDMOD_LOS_BUCKET_EDGES_DAYS, SELECTION_METRIC

#: CareBench's total-stay buckets [2,3), ..., [6,7), [7,14), [14, inf) days, written as the
#: remaining stay after the 48 h prediction time (the ``remaining_hours`` of its label file).
CAREBENCH_LOS7_REMAINING_EDGES_DAYS = (0, 1, 2, 3, 4, 5, 12, math.inf)


@dataclass(frozen=True)
class Task:
    """One prediction task."""

    name: str
    kind: str  # binary | multilabel | multiclass
    description: str
    hourly: bool = False
    loss: str = ""  # filled from kind
    selection_metric: str = ""  # filled from kind, always computed on validation
    # length-of-stay tasks: bucket edges of the remaining stay in days (n_outputs + 1 entries),
    # used to turn bucket probabilities back into a duration for the MAD metric
    los_bucket_edges_days: tuple[float, ...] | None = None

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
         hourly=True, los_bucket_edges_days=MEDMOD_LOS_BUCKET_EDGES_DAYS),
    Task("length_of_stay_7", "multiclass",
         "total ICU stay of stays >= 48 h, 7 buckets, predicted at 48 h (CareBench)",
         selection_metric="accuracy",
         los_bucket_edges_days=CAREBENCH_LOS7_REMAINING_EDGES_DAYS),
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
