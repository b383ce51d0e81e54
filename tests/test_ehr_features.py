"""EHR cleaning, binning and feature construction on hand-built events."""

from __future__ import annotations

import numpy as np
import pandas as pd

from preprocessing import variables as V
from preprocessing.ehr_extract import _clean
from preprocessing.ehr_features import (
    NAMES,
    bin_partition,
    feature_names,
    forward_fill,
    make_features,
    train_statistics,
)


def test_clean_maps_text_converts_units_and_drops_impossible_values():
    frame = pd.DataFrame({
        "itemid": [V.ITEM_TEMP_F, V.ITEM_FIO2, V.ITEM_GCS_VERBAL, V.ITEM_CRR_LEFT, 220045, 220045,
                   V.ITEM_HEIGHT_IN],
        "value": ["98.6", "50", "No Response-ETT", "Abnormal >3 Seconds", "80", "99999", "70"],
        "valuenum": [98.6, 50.0, 1.0, np.nan, 80.0, 99999.0, 70.0],
    })
    stats: dict = {}
    out = _clean(frame, stats)
    by_var = dict(zip([NAMES[c] for c in out["var"]], out["value"], strict=True))
    assert np.isclose(by_var["temperature"], 37.0, atol=0.01)
    assert np.isclose(by_var["fio2"], 0.5)
    assert by_var["gcs_verbal"] == 1 and by_var["capillary_refill"] == 1
    assert np.isclose(by_var["height"], 177.8)
    assert by_var["heart_rate"] == 80  # the 99999 row is dropped and counted
    assert stats["out_of_range"] == {"heart_rate": 1}


def test_forward_fill_does_not_cross_stays():
    values = np.array([[1.0], [np.nan], [np.nan], [2.0], [np.nan]])
    stay_start = np.array([0, 0, 2, 2, 2])  # rows 0-1 stay A, rows 2-4 stay B
    filled = forward_fill(values, stay_start)
    assert filled[:, 0].tolist()[:2] == [1.0, 1.0]
    assert np.isnan(filled[2, 0]) and filled[3:, 0].tolist() == [2.0, 2.0]


def _write_part(tmp_path, stays, events):
    stays.to_parquet(tmp_path / "stays-00000.parquet", index=False)
    events.to_parquet(tmp_path / "events-00000.parquet", index=False)


def test_binning_keeps_last_value_per_bin_and_sums_gcs(tmp_path):
    v = {n: i for i, n in enumerate(NAMES)}
    stays = pd.DataFrame({"stay_id": [1, 2], "los_hours": [3.5, 1.0], "split": ["train", "val"]})
    events = pd.DataFrame({
        "stay_id": [1, 1, 1, 1, 1, 2],
        "hours": np.array([0.2, 0.8, 2.5, 2.5, 2.6, 0.5], dtype=np.float32),
        "var": np.array([v["heart_rate"], v["heart_rate"], v["gcs_eye"], v["gcs_verbal"],
                         v["gcs_motor"], v["heart_rate"]], dtype=np.int8),
        "value": np.array([80, 90, 3, 4, 5, 60], dtype=np.float32),
    })
    _write_part(tmp_path, stays, events)
    bin_partition(tmp_path, 0, step=1, max_hours=48)
    hourly = pd.read_parquet(tmp_path / "hourly-00000.parquet")
    assert hourly["stay_id"].tolist() == [1, 1, 1, 1, 2]  # ceil(3.5) = 4 bins, then 1 bin
    assert hourly["heart_rate"].tolist()[0] == 90  # last value in the bin
    assert np.isnan(hourly["heart_rate"].iloc[1])
    assert hourly["gcs_total"].iloc[2] == 12 and np.isnan(hourly["gcs_total"].iloc[0])


def test_features_impute_normalise_and_mask(tmp_path):
    hourly = pd.DataFrame(np.nan, index=range(4), columns=NAMES)
    hourly.insert(0, "stay_id", [1, 1, 2, 2])
    hourly["heart_rate"] = [100.0, np.nan, np.nan, 70.0]
    stats = {"mean": {n: 0.0 for n in V.CONTINUOUS}, "std": {n: 1.0 for n in V.CONTINUOUS},
             "median": {n: 50.0 for n in V.CONTINUOUS}}
    names = feature_names()
    medmod = pd.DataFrame(make_features(hourly, "medmod", stats), columns=names)
    carebench = pd.DataFrame(make_features(hourly, "carebench", stats), columns=names)
    # stay 1 forward-fills 100; stay 2 starts unobserved: normal value (MedMod) or median
    assert medmod["heart_rate"].tolist() == [100.0, 100.0, 86.0, 70.0]
    assert carebench["heart_rate"].tolist() == [100.0, 100.0, 50.0, 70.0]
    assert medmod["mask:heart_rate"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert medmod["gcs_total=15"].tolist() == [1.0] * 4  # normal value, one-hot
    assert len(names) == len(V.CONTINUOUS) + 30 + len(NAMES)


def test_normalisation_uses_train_split_only(tmp_path):
    rows = pd.DataFrame(np.nan, index=range(4), columns=NAMES)
    rows.insert(0, "split", ["train", "train", "val", "test"])
    rows["heart_rate"] = [80.0, 100.0, 1000.0, 2000.0]
    rows.to_parquet(tmp_path / "hourly-00000.parquet")
    stats = train_statistics(tmp_path, [0])
    assert stats["mean"]["heart_rate"] == 90.0
    assert stats["median"]["heart_rate"] == 90.0
    assert stats["observed"]["heart_rate"] == 2
