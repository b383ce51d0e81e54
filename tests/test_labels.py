"""Hand-built edge cases for task labels and CXR selection (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from preprocessing import labels as L
from preprocessing.cohort import assign_splits
from preprocessing.config import PreprocessConfig
from preprocessing.cxr_select import latest_image, study_datetime

T0 = pd.Timestamp("2150-01-01 08:00")
CONFIG = PreprocessConfig()


def _stays(rows: list[dict]) -> pd.DataFrame:
    """Stays with intime T0; each row gives los_hours and optionally death_hours."""
    frames = []
    for i, row in enumerate(rows):
        los = row["los_hours"]
        death = row.get("death_hours")
        frames.append({
            "stay_id": 100 + i, "subject_id": 10 + i, "hadm_id": 1000 + i, "split": "train",
            "intime": T0, "outtime": T0 + pd.Timedelta(hours=los), "los_hours": float(los),
            "death_time": T0 + pd.Timedelta(hours=death) if death is not None else pd.NaT,
            "died_in_hospital": death is not None,
        })
    return pd.DataFrame(frames)


def test_mortality_death_at_47h_excluded_death_at_49h_positive():
    stays = _stays([
        {"los_hours": 47, "death_hours": 47},  # died in the ICU before 48 h: not in cohort
        {"los_hours": 49, "death_hours": 49},  # died in the ICU after 48 h: positive
        {"los_hours": 60, "death_hours": 100},  # died on the ward after ICU discharge
        {"los_hours": 60},  # survived
    ])
    hospital = L.mortality(stays, CONFIG, icu=False).set_index("stay_id")["label_0"]
    icu = L.mortality(stays, CONFIG, icu=True).set_index("stay_id")["label_0"]
    assert 100 not in hospital.index
    assert hospital.to_dict() == {101: 1.0, 102: 1.0, 103: 0.0}
    assert icu.to_dict() == {101: 1.0, 102: 0.0, 103: 0.0}
    assert (L.mortality(stays, CONFIG, icu=False)["ehr_hours"] == 48).all()


def test_decompensation_samples_stop_at_death_and_label_24h_ahead():
    frame = L.decompensation(_stays([{"los_hours": 30, "death_hours": 30}]), CONFIG)
    assert frame["ehr_hours"].tolist() == list(range(5, 30))  # t > 4 h, before death
    positive = frame.loc[frame["label_0"] == 1, "ehr_hours"]
    assert positive.min() == 7 and positive.max() == 29  # death - t < 24 h (strict)


def test_decompensation_samples_the_whole_stay_beyond_max_hours():
    frame = L.decompensation(_stays([{"los_hours": 489, "death_hours": 489}]), CONFIG)
    assert CONFIG.max_hours == 336 and frame["ehr_hours"].max() == 488
    positive = frame.loc[frame["label_0"] == 1, "ehr_hours"]
    assert positive.tolist() == list(range(466, 489))
    los = L.length_of_stay(_stays([{"los_hours": 500.5}]), CONFIG)
    assert los["ehr_hours"].max() == 500 and los["remaining_hours"].min() == 0.5


def test_samples_beyond_max_hours_carry_the_last_max_hours_of_ehr():
    from preprocessing.label_files import ehr_windows

    hours = np.array([5.0, 336.0, 488.0, 488.0, 0.4])
    stay_bins = np.array([490, 490, 490, 400, 3])
    first, n = ehr_windows(hours, stay_bins, step=1, max_hours=336)
    assert n.tolist() == [5, 336, 336, 336, 1]
    assert first.tolist() == [0, 0, 152, 64, 0]  # the window never passes the stay's end
    first2, n2 = ehr_windows(hours, stay_bins, step=2, max_hours=336)
    assert n2.tolist() == [2, 168, 168, 168, 1] and first2.tolist()[2] == 244 - 168


def test_length_of_stay_bucket_edges():
    stays = _stays([{"los_hours": 5 + 24}, {"los_hours": 5 + 8 * 24}, {"los_hours": 5 + 14 * 24}])
    frame = L.length_of_stay(stays, CONFIG)
    at_5h = frame[frame["ehr_hours"] == 5].set_index("stay_id")
    # remaining exactly 1 day -> bucket 1 (1-2 d); 8 days -> 8 (8-14 d); 14 days -> 9 (>14 d)
    assert at_5h["label_0"].to_dict() == {100: 1, 101: 8, 102: 9}
    first = frame[frame["stay_id"] == 100]
    assert first.loc[first["ehr_hours"] == 6, "label_0"].item() == 0  # 23 h left
    assert np.allclose(first["remaining_hours"], 29 - first["ehr_hours"])


def test_length_of_stay_7_buckets():
    stays = _stays([{"los_hours": h} for h in (47.9, 48, 72, 7 * 24 - 0.1, 7 * 24, 14 * 24)])
    frame = L.length_of_stay_7(stays, CONFIG).set_index("stay_id")["label_0"]
    assert frame.to_dict() == {101: 0, 102: 1, 103: 4, 104: 5, 105: 6}


def test_cxr_after_the_prediction_hour_is_not_used():
    samples = pd.DataFrame({
        "stay_id": [1, 1, 1, 2],
        "intime": [T0] * 4,
        "pred_time": [T0 + pd.Timedelta(hours=h) for h in (5, 6, 7, 5)],
    })
    images = pd.DataFrame({
        "stay_id": [1, 1, 2],
        "time": [T0 + pd.Timedelta(hours=5.5), T0 - pd.Timedelta(hours=3),
                 T0 + pd.Timedelta(hours=1)],
        "dicom_id": ["late", "before_admission", "early"],
    })
    chosen = latest_image(samples, images, lookback_hours=0).tolist()
    assert chosen[0] is pd.NA  # 5.5 h image post-dates hour 5; pre-admission one not allowed
    assert chosen[1:] == ["late", "late", "early"]
    with_lookback = latest_image(samples, images, lookback_hours=24).tolist()
    assert with_lookback[0] == "before_admission"


def test_study_time_without_leading_zeros():
    stamp = study_datetime(pd.Series([21500101, 21500101]), pd.Series([5012.5, 134501.0]))
    assert stamp.tolist() == [pd.Timestamp("2150-01-01 00:50:12.5"),
                              pd.Timestamp("2150-01-01 13:45:01")]


def test_splits_are_by_patient_deterministic_and_near_70_10_20():
    subjects = np.arange(10_000_000, 10_020_000)
    first = assign_splits(subjects, (0.7, 0.1, 0.2), seed=0)
    again = assign_splits(subjects[::-1], (0.7, 0.1, 0.2), seed=0)[::-1]
    assert (first == again).all()
    shares = pd.Series(first).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.015)
    assert shares["val"] == pytest.approx(0.1, abs=0.01)
    assert (assign_splits(subjects, (0.7, 0.1, 0.2), seed=1) != first).any()


def test_latest_image_keeps_the_sample_index():
    samples = pd.DataFrame({"stay_id": [2, 1], "intime": [T0, T0],
                            "pred_time": [T0 + pd.Timedelta(hours=9)] * 2}, index=[7, 3])
    images = pd.DataFrame({"stay_id": [1], "time": [T0 + pd.Timedelta(hours=1)],
                           "dicom_id": ["one"]})
    chosen = latest_image(samples, images, lookback_hours=0)
    assert chosen.index.tolist() == [7, 3]
    assert chosen.loc[3] == "one" and chosen.loc[7] is pd.NA
