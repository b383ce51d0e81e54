"""How big a study is, and what it would cost: trials, trial-hours, GPU-hours.

``raybench validate`` prints it before anything runs. Trials are exact (every configuration
of every experiment once per seed). Cost is an **upper bound** (every trial runs all its
epochs; early stopping ends many sooner) built from measured per-epoch costs, where known:

1. this study's own finished trials (``trials.parquet`` of an earlier or interrupted run):
   median ``runtime_s / epochs_run`` per task, cohort and method, i.e. measured on this data,
   these settings and this hardware;
2. else the training costs in ``epoch_costs.csv`` (``RAYBENCH_EPOCH_COSTS``), which
   ``benchmarks/epoch_costs.py`` measures on your machine (none ships with raybench; CPU only)
   for the method, CXR backbone and crop: a per-epoch overhead plus a cost per batch, times
   the batches of an epoch (``training.max_train_batches``, or the train
   split size of a prepared ``data.path`` divided by the batch size) -- CPU studies only
   (``resources.gpu`` 0), since a CPU cost says nothing about a GPU.

Anything else is reported as unknown, by experiment count, never guessed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["CostEstimate", "estimate_study"]

#: Training costs measured on this machine by ``benchmarks/epoch_costs.py`` (none ship).
EPOCH_COSTS = Path(os.environ.get("RAYBENCH_EPOCH_COSTS")
                   or Path(__file__).with_name("epoch_costs.csv"))


@dataclass
class CostEstimate:
    """Trials per experiment and the estimated cost of those whose cost is known."""

    trials: dict[str, int]
    epochs: int
    trial_hours: float = 0.0
    gpu_hours: float = 0.0
    known: dict[str, str] = field(default_factory=dict)  # experiment -> where its cost is from
    unknown: list[str] = field(default_factory=list)

    @property
    def total_trials(self) -> int:
        """Trials of the whole study."""
        return sum(self.trials.values())

    def lines(self) -> list[str]:
        """What ``raybench validate`` prints about size and cost."""
        sizes = sorted(set(self.trials.values()))
        per = (f"{sizes[0]} per experiment" if len(sizes) == 1
               else f"{sizes[0]}-{sizes[-1]} per experiment")
        out = [f"size: {self.total_trials:,} trials ({per}: configurations x seeds), at most "
               f"{self.epochs} epochs each"]
        if not self.known:
            out.append("estimated cost: unknown (no measured per-epoch cost for these methods "
                       "and settings; a first run of the study measures them)")
            return out
        sources = sorted(set(self.known.values()))
        text = (f"estimated cost: at most {self.trial_hours:,.2f} trial-hours, "
                f"{self.gpu_hours:,.2f} GPU-hours (upper bound: every trial runs all its "
                f"epochs) for {len(self.known)} of {len(self.trials)} experiments, from "
                f"{' and '.join(sources)}")
        if self.unknown:
            text += (f"; unknown for {len(self.unknown)} experiment(s) "
                     f"({', '.join(self.unknown[:3])}{' ...' if len(self.unknown) > 3 else ''})")
        out.append(text)
        return out


def _study_epoch_seconds(storage) -> dict[tuple, float]:
    """Median seconds per epoch per (task, cohort, method) from the study's own trials."""
    data = storage.read_bytes("trials.parquet")
    if data is None:
        return {}
    trials = pd.read_parquet(io.BytesIO(data))
    needed = {"status", "runtime_s", "epochs_run", "task", "cohort", "method"}
    if not needed <= set(trials.columns):
        return {}
    ok = trials[(trials["status"] == "ok") & (pd.to_numeric(trials["epochs_run"],
                                                            errors="coerce") > 0)]
    per_epoch = pd.to_numeric(ok["runtime_s"], errors="coerce") / ok["epochs_run"].astype(float)
    ok = ok.assign(per_epoch=per_epoch)
    ok = ok[np.isfinite(ok["per_epoch"])]
    return {key: float(part["per_epoch"].median())
            for key, part in ok.groupby(["task", "cohort", "method"])}


def _batch_costs() -> dict[tuple, tuple[float, float]]:
    """(method, cxr_backbone, crop, device) -> (epoch overhead s, seconds per batch of 16)."""
    if not EPOCH_COSTS.is_file():
        return {}
    with EPOCH_COSTS.open() as handle:
        return {(r["method"], r["cxr_backbone"], int(r["crop"]), r["device"]):
                (float(r.get("epoch_overhead_s") or 0.0), float(r["seconds_per_batch"]))
                for r in csv.DictReader(line for line in handle if not line.startswith("#"))}


def _train_samples(study, task: str, cohort: str) -> int | None:
    """Train samples of a task and cohort from a prepared dataset's manifest, if readable."""
    if study.data.path is None:
        return None
    manifest = Path(study.data.path) / "manifest.json"
    try:
        counts = json.loads(manifest.read_text())["counts"]
        return int(counts[task][cohort]["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _batches_per_epoch(study, task: str, cohort: str) -> int | None:
    from raybench.tasks import get_task

    t = study.training
    cap = t.max_train_batches
    if get_task(task).hourly and t.hourly_max_train_batches is not None:
        cap = t.hourly_max_train_batches
    samples = _train_samples(study, task, cohort)
    full = None if samples is None else math.ceil(samples / t.batch_size)
    known = [n for n in (cap, full) if n is not None]
    return min(known) if known else None


def _crop(study) -> int:
    if study.training.crop:
        return int(study.training.crop)
    size = (study.data.synthetic.preprocess.cxr_image_size if study.data.synthetic
            else 256)  # a prepared dataset's images: PreprocessConfig's default size
    return max(8, size * 7 // 8)


def estimate_study(study, storage=None) -> CostEstimate:
    """Trials and estimated cost of ``study`` (``storage``: its StudyStorage, if it exists)."""
    from raybench.study.config import (
        expand_experiments,
        fixed_hparams_for,
        search_settings_for,
        search_space_for,
    )
    from raybench.study.searchers import planned_configurations

    measured = _study_epoch_seconds(storage) if storage is not None else {}
    batch_costs = _batch_costs()
    epochs = study.training.epochs
    estimate = CostEstimate(trials={}, epochs=epochs)
    gpu = float(study.resources.gpu)
    for e in expand_experiments(study):
        space = search_space_for(study, e.method)
        trials = planned_configurations(search_settings_for(study, e.method), space) * len(
            study.seeds)
        estimate.trials[e.experiment_id] = trials
        per_epoch, source = measured.get((e.task, e.cohort, e.method)), "this study's trials"
        if per_epoch is None and gpu == 0:
            fixed = fixed_hparams_for(study, e.method)
            key = (e.method, "-", 0, "cpu")  # EHR only: no image, no crop
            if "cxr_backbone" in space:
                key = None  # searched backbone: no single per-batch cost applies
            elif "cxr_backbone" in fixed:
                key = (e.method, str(fixed["cxr_backbone"]), _crop(study), "cpu")
            cost = batch_costs.get(key) if key else None
            batches = _batches_per_epoch(study, e.task, e.cohort)
            if cost is not None and batches is not None:
                overhead, per_batch = cost
                per_epoch = overhead + per_batch * batches * study.training.batch_size / 16
                source = f"measured CPU costs in {EPOCH_COSTS.name}"
        if per_epoch is None:
            estimate.unknown.append(e.experiment_id)
            continue
        hours = trials * epochs * per_epoch / 3600
        estimate.trial_hours += hours
        estimate.gpu_hours += hours * gpu
        estimate.known[e.experiment_id] = source
    return estimate
