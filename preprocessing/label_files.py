"""The ``labels`` stage: final per-task label files that point at image rows and EHR bins.

Each sample's EHR is a window of its stay's bins: it ends at the prediction time
(``floor(ehr_hours / resample_hours)`` bins, at least 1) and holds at most ``max_hours`` of
history, i.e. bins ``[first_step, first_step + n_steps)``. With ``require_ehr_events`` (the
default, as mimic3-benchmarks requires at least one event) a sample whose window holds no
observation is dropped and counted; radiology samples (an image is the sample) are kept.
Without it such samples stay, and their all-zero masks say that nothing was observed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import labels as L
from preprocessing.config import PreprocessConfig
from preprocessing.phenotypes import phenotype_names

# Version of the ``labels`` stage (this module). Bump it when a change alters what the stage
# writes; tests/test_stage_versions.py holds its golden hash.
STAGE_VERSION = 2
TASKS_WITHOUT_EHR_RULE = ("radiology",)


def ehr_windows(ehr_hours: np.ndarray, stay_bins: np.ndarray, step: int, max_hours: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(first_step, n_steps) of each sample: the last ``max_hours`` bins before its time."""
    end = np.clip(np.floor(ehr_hours / step), 1, stay_bins).astype(np.int64)
    n_steps = np.minimum(end, max(max_hours // step, 1))
    return (end - n_steps).astype(np.int32), n_steps.astype(np.int32)


class ObservedBins:
    """Counts of observed bins per stay, to ask whether a window holds any observation."""

    def __init__(self, hourly: pd.DataFrame) -> None:
        hourly = hourly.sort_values(["stay_id", "step"], kind="stable")
        stay = hourly["stay_id"].to_numpy()
        first = np.r_[True, stay[1:] != stay[:-1]]
        self.stays = stay[first]
        self.starts = np.flatnonzero(first)
        self.cumulative = np.r_[0, np.cumsum(hourly["n_observed"].to_numpy() > 0)]
        totals = np.diff(np.r_[self.cumulative[self.starts], self.cumulative[-1]])
        self.stays_without_events = int((totals == 0).sum())

    def has_events(self, stay_id: np.ndarray, first_step: np.ndarray, n_steps: np.ndarray
                   ) -> np.ndarray:
        """True where bins [first_step, first_step + n_steps) of the stay hold an event."""
        start = self.starts[np.searchsorted(self.stays, stay_id)] + first_step
        return self.cumulative[start + n_steps] > self.cumulative[start]


def build_label_files(out: Path, tmp: Path, config: PreprocessConfig) -> dict:
    """Write ``tmp/<task>.parquet`` for every task; returns counts for the manifest."""
    index = pd.read_parquet(out / "samples" / "cxr_index.parquet")
    written = pd.read_parquet(out / "cxr" / "images.parquet", columns=["cxr_index"])
    ok = index[index["cxr_index"].isin(written["cxr_index"])]
    to_row = pd.Series(ok["cxr_index"].to_numpy(), index=ok["dicom_id"].to_numpy())
    lengths = pd.read_parquet(out / "ehr" / "stay_lengths.parquet").set_index("stay_id")
    observed = ObservedBins(pd.read_parquet(out / "ehr" / "hourly",
                                            columns=["stay_id", "step", "n_observed"]))
    tasks = L.task_definitions(phenotype_names())
    without_events = {}
    for name in tasks:
        frame = pd.read_parquet(out / "samples" / f"{name}.parquet")
        cxr = to_row.reindex(frame["dicom_id"].astype(object)).to_numpy()
        frame["cxr_index"] = np.nan_to_num(cxr.astype(float), nan=-1).astype(np.int32)
        stay_bins = lengths["n_steps"].reindex(frame["stay_id"]).to_numpy()
        frame["first_step"], frame["n_steps"] = ehr_windows(
            frame["ehr_hours"].to_numpy(), stay_bins, config.resample_hours, config.max_hours)
        has = observed.has_events(frame["stay_id"].to_numpy(), frame["first_step"].to_numpy(),
                                  frame["n_steps"].to_numpy())
        without_events[name] = int((~has).sum())
        if config.require_ehr_events and name not in TASKS_WITHOUT_EHR_RULE:
            frame = frame[has]
        frame = frame.drop(columns=["dicom_id"]).reset_index(drop=True)
        frame.to_parquet(tmp / f"{name}.parquet", index=False)
    return {"tasks": sorted(tasks),
            "ehr_events": {"stays_without_events": observed.stays_without_events,
                           "samples_without_events": without_events,
                           "dropped": config.require_ehr_events,
                           "kept_anyway": list(TASKS_WITHOUT_EHR_RULE)}}
