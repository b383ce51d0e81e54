"""Choosing the chest X-ray of each sample: AP only, inside the task window, latest first.

A sample's window is [intime - lookback, prediction time]. The image is the latest AP image
in it; for hourly tasks the prediction time is the sample's hour, so an image never
post-dates the hour it is used for (MedMod attaches one per-stay image to every hour).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import schemas as S
from preprocessing.raw_io import read_table


def study_datetime(study_date: pd.Series, study_time: pd.Series) -> pd.Series:
    """``StudyDate`` (YYYYMMDD) + ``StudyTime`` (HHMMSS.fff, leading zeros dropped) -> datetime."""
    date = pd.to_datetime(study_date.astype("int64").astype(str), format="%Y%m%d")
    t = study_time.astype(float).fillna(0.0)
    hours = np.floor(t / 10000)
    minutes = np.floor(t / 100) % 100
    seconds = t % 100
    return date + pd.to_timedelta(hours * 3600 + minutes * 60 + seconds, unit="s")


def load_ap_images(metadata_path: Path, chexpert_path: Path, stays: pd.DataFrame) -> pd.DataFrame:
    """AP images of cohort patients, each paired with every stay of its subject.

    Returns one row per (stay_id, image) with dicom_id, subject_id, study_id, time and
    ``has_report`` (a CheXpert label row exists for the study).
    """
    meta = read_table(metadata_path, S.CXR_METADATA,
                      ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate",
                       "StudyTime"))
    meta = meta[meta["ViewPosition"] == "AP"].copy()
    meta["time"] = study_datetime(meta["StudyDate"], meta["StudyTime"])
    reports = read_table(chexpert_path, S.CXR_CHEXPERT, ("study_id",))
    meta["has_report"] = meta["study_id"].isin(reports["study_id"])
    pairs = meta.drop(columns=["ViewPosition", "StudyDate", "StudyTime"]).merge(
        stays[["stay_id", "subject_id", "intime", "outtime"]], on="subject_id", how="inner")
    return pairs.reset_index(drop=True)


def latest_image(
    samples: pd.DataFrame, images: pd.DataFrame, lookback_hours: float
) -> pd.Series:
    """dicom_id of the latest image in [intime - lookback, pred_time] for each sample (or NA).

    ``samples`` needs stay_id, intime, pred_time; ``images`` stay_id, time, dicom_id.
    Vectorised with ``merge_asof`` (backward, ties allowed: an image taken at the prediction
    time is usable).
    """
    left = samples[["stay_id", "intime", "pred_time"]].copy()
    left["_row"] = np.arange(len(left))
    left["pred_time"] = left["pred_time"].astype("datetime64[ns]")
    left = left.sort_values("pred_time", kind="stable")
    right = images[["stay_id", "time", "dicom_id"]].sort_values(["time", "dicom_id"],
                                                                kind="stable")
    right = right.drop_duplicates(["stay_id", "time"], keep="last")
    right["time"] = right["time"].astype("datetime64[ns]")
    matched = pd.merge_asof(left, right, left_on="pred_time", right_on="time", by="stay_id",
                            direction="backward", allow_exact_matches=True)
    start = matched["intime"] - pd.Timedelta(hours=lookback_hours)
    ok = matched["time"].notna() & (matched["time"] >= start)
    dicom = matched["dicom_id"].where(ok)
    values = np.full(len(samples), None, dtype=object)
    values[matched["_row"].to_numpy()] = dicom.astype(object).where(ok, None).to_numpy()
    return pd.Series(values, index=samples.index, dtype="string")
