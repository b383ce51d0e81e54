"""Samples and labels of every task, built from the cohort (vectorised, no loop over stays).

Each task gives a frame with one row per sample: ``stay_id``, ``split``, ``pred_time``
(prediction time), ``ehr_hours`` (EHR available at prediction time, from ICU admission),
``window_start`` for the CXR and ``label_*`` columns. Definitions (see docs/preprocessing.md):

- ``mortality``: stays with >= 48 h in the ICU; death in hospital (MedMod); EHR first 48 h.
- ``mortality_icu``: same stays; death before ICU discharge (CareBench's ``icu_mortality``).
- ``phenotyping``: all stays; 25 phenotypes of the admission; predicted at ICU discharge.
- ``decompensation``: every whole hour t > 4 h while alive in the ICU, over the whole stay;
  death in less than 24 h after t.
- ``length_of_stay``: the same hours; remaining ICU stay in 10 buckets (<1, 1-2, ..., 7-8,
  8-14, >14 days); ``remaining_hours`` kept for the MAD metric.
- ``length_of_stay_7``: CareBench: stays with >= 48 h; total LoS [2,3), ..., [6,7), [7,14),
  >= 14 days (= remaining stay after 48 h in 7 buckets); EHR first 48 h.
- ``radiology``: one sample per AP image with a report inside the stay; 14 CheXpert labels
  (blank -> 0; uncertain -1 -> 0, or 1 with the U-ones policy); EHR up to the image time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from preprocessing.config import PreprocessConfig
from preprocessing.schemas import CHEXPERT_LABELS

# Version of the ``samples`` stage (this module and preprocessing/cxr_select.py). Bump it when
# a change alters what the stage writes; tests/test_stage_versions.py holds its golden hash.
STAGE_VERSION = 2

LOS_EDGES_DAYS = (1, 2, 3, 4, 5, 6, 7, 8, 14)
LOS7_EDGES_DAYS = (3, 4, 5, 6, 7, 14)


@dataclass(frozen=True)
class TaskLabels:
    """What a task's label columns mean (written to the manifest)."""

    kind: str  # binary | multilabel | multiclass
    labels: tuple[str, ...]
    hourly: bool = False


def task_definitions(phenotypes: list[str]) -> dict[str, TaskLabels]:
    """Label meaning per task name."""
    los10 = ("<1d", "1-2d", "2-3d", "3-4d", "4-5d", "5-6d", "6-7d", "7-8d", "8-14d", ">14d")
    los7 = ("2-3d", "3-4d", "4-5d", "5-6d", "6-7d", "7-14d", ">=14d")
    return {
        "mortality": TaskLabels("binary", ("in_hospital_death",)),
        "mortality_icu": TaskLabels("binary", ("icu_death",)),
        "phenotyping": TaskLabels("multilabel", tuple(phenotypes)),
        "decompensation": TaskLabels("binary", ("death_within_24h",), hourly=True),
        "length_of_stay": TaskLabels("multiclass", los10, hourly=True),
        "length_of_stay_7": TaskLabels("multiclass", los7),
        "radiology": TaskLabels("multilabel", CHEXPERT_LABELS),
    }


def _base(stays: pd.DataFrame, hours: np.ndarray | float) -> pd.DataFrame:
    frame = stays[["stay_id", "split", "intime"]].copy()
    frame["ehr_hours"] = np.asarray(hours, dtype=np.float64) * np.ones(len(stays))
    frame["pred_time"] = frame["intime"] + pd.to_timedelta(frame["ehr_hours"], unit="h")
    return frame


def mortality(stays: pd.DataFrame, config: PreprocessConfig, icu: bool) -> pd.DataFrame:
    """In-hospital (or ICU) mortality predicted at 48 h, for stays of at least 48 h."""
    h = config.mortality_hours
    kept = stays[stays["los_hours"] >= h]
    frame = _base(kept, h)
    if icu:
        died = kept["death_time"].notna() & (kept["death_time"] <= kept["outtime"])
    else:
        died = kept["died_in_hospital"]
    frame["label_0"] = died.astype(np.float32).to_numpy()
    return frame


def phenotyping(stays: pd.DataFrame, phenotype_labels: pd.DataFrame,
                config: PreprocessConfig) -> pd.DataFrame:
    """25 phenotypes of the admission, predicted from the whole stay."""
    frame = _base(stays, stays["los_hours"].to_numpy())
    values = phenotype_labels.reindex(stays["hadm_id"]).fillna(0).to_numpy(np.float32)
    for k in range(values.shape[1]):
        frame[f"label_{k}"] = values[:, k]
    return frame


def _hourly_grid(stays: pd.DataFrame, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(stay row, hour) for whole hours t > 4 strictly before ICU discharge and death.

    The whole stay is sampled (mimic3-benchmarks); ``max_hours`` only limits the EHR
    history each sample carries (see the labels stage).
    """
    los = stays["los_hours"].to_numpy()
    death_h = ((stays["death_time"] - stays["intime"]) / pd.Timedelta(hours=1)).to_numpy()
    end = np.fmin(los, np.where(np.isnan(death_h), np.inf, death_h))
    first = config.hourly_min_hours + 1  # mimic3-benchmarks: t > shortest_length
    count = np.maximum(np.ceil(end - first).astype(np.int64), 0)  # t < end
    rows = np.repeat(np.arange(len(stays)), count)
    hours = first + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return rows, hours.astype(np.float64)


def decompensation(stays: pd.DataFrame, config: PreprocessConfig) -> pd.DataFrame:
    """Hourly samples; label 1 when death follows within the horizon (24 h)."""
    rows, hours = _hourly_grid(stays, config)
    sub = stays.iloc[rows].reset_index(drop=True)
    frame = _base(sub, hours)
    death_h = ((sub["death_time"] - sub["intime"]) / pd.Timedelta(hours=1)).to_numpy()
    horizon = config.decompensation_horizon_hours
    # mimic3-benchmarks: lived_time - t < future_time_interval (strict)
    frame["label_0"] = ((death_h > hours) & (death_h - hours < horizon)).astype(np.float32)
    return frame


def length_of_stay(stays: pd.DataFrame, config: PreprocessConfig) -> pd.DataFrame:
    """Hourly samples; remaining ICU stay bucketed into 10 classes (MedMod)."""
    rows, hours = _hourly_grid(stays.assign(death_time=pd.NaT), config)
    sub = stays.iloc[rows].reset_index(drop=True)
    frame = _base(sub, hours)
    remaining = sub["los_hours"].to_numpy() - hours
    frame["remaining_hours"] = remaining
    frame["label_0"] = np.digitize(remaining / 24.0, LOS_EDGES_DAYS, right=False).astype(np.int64)
    return frame


def length_of_stay_7(stays: pd.DataFrame, config: PreprocessConfig) -> pd.DataFrame:
    """CareBench: total ICU stay of stays >= 48 h in 7 buckets, predicted at 48 h."""
    kept = stays[stays["los_hours"] >= 48]
    frame = _base(kept, 48.0)
    days = kept["los_hours"].to_numpy() / 24.0
    frame["remaining_hours"] = kept["los_hours"].to_numpy() - 48.0
    frame["label_0"] = np.digitize(days, LOS7_EDGES_DAYS, right=False).astype(np.int64)
    return frame


def radiology(stays: pd.DataFrame, images: pd.DataFrame, chexpert: pd.DataFrame,
              config: PreprocessConfig) -> pd.DataFrame:
    """One sample per AP image with a report inside the stay; labels from its study."""
    inside = images[(images["time"] >= images["intime"]) & (images["time"] <= images["outtime"])
                    & images["has_report"]]
    inside = inside.merge(stays[["stay_id", "split"]], on="stay_id")
    frame = inside[["stay_id", "split", "intime", "dicom_id"]].copy()
    frame["ehr_hours"] = ((inside["time"] - inside["intime"]) / pd.Timedelta(hours=1)).to_numpy()
    frame["pred_time"] = inside["time"].to_numpy()
    reports = chexpert.drop_duplicates("study_id").set_index("study_id")
    values = reports.reindex(inside["study_id"])[list(CHEXPERT_LABELS)].to_numpy(np.float32)
    uncertain = 1.0 if config.radiology_uncertain == "ones" else 0.0
    values = np.where(values == -1.0, uncertain, values)
    values = np.nan_to_num(values, nan=0.0)
    for k in range(values.shape[1]):
        frame[f"label_{k}"] = values[:, k]
    return frame.sort_values(["stay_id", "pred_time", "dicom_id"]).reset_index(drop=True)
