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
    bin_partition(tmp_path, 0, step=1)
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


INTIME = pd.Timestamp("2150-01-01 10:00:30")  # MIMIC-IV intime has seconds


def _extract_by_hand(tmp_path, chart_rows, lab_rows, pre_intime_hours=2.0):
    """Run extraction and binning on hand-written chartevents/labevents of one 10 h stay."""
    from preprocessing.ehr_extract import extract_events, write_partitions

    stays = pd.DataFrame({"stay_id": [7], "hadm_id": [70], "intime": [INTIME],
                          "los_hours": [10.0], "split": ["train"]})
    chart = pd.DataFrame(chart_rows, columns=["charttime", "itemid", "valuenum"])
    chart = chart.assign(stay_id=7, value=chart["valuenum"].astype(str))
    labs = pd.DataFrame(lab_rows, columns=["charttime", "itemid", "valuenum"]).assign(hadm_id=70)
    files = {"chartevents": tmp_path / "chartevents.csv.gz",
             "labevents": tmp_path / "labevents.csv.gz"}
    for frame, path in ((chart, files["chartevents"]), (labs, files["labevents"])):
        frame.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    events, stats = extract_events(files, stays, pre_intime_hours)
    work = tmp_path / "work"
    write_partitions(events, stays, work, 1)
    bin_partition(work, 0, step=1)
    return pd.read_parquet(work / "hourly-00000.parquet"), stats


def test_events_charted_before_intime_reach_the_first_bin(tmp_path):
    at = lambda hm: pd.Timestamp(f"2150-01-01 {hm}")  # noqa: E731
    hourly, stats = _extract_by_hand(tmp_path, [
        (at("10:00:00"), V.ITEM_HEIGHT_CM, 180.0),  # 30 s before intime (minute precision)
        (at("02:00:00"), V.ITEM_WEIGHT_ADMIT, 80.0),  # static: any time before intime
        (at("07:00:00"), 220045, 50.0),  # 3 h before: outside the 2 h window
        (at("09:30:00"), 220045, 60.0),  # inside the window ...
        (at("10:20:00"), 220045, 70.0),  # ... but a later value in bin 0 wins
        (at("08:45:00"), 220210, 22.0),  # 1.25 h before: inside the window, alone in bin 0
        (at("21:00:00"), 220277, 95.0),  # after outtime: dropped
    ], [
        (at("09:50:00"), 50931, 140.0),  # lab before intime: labs have no stay_id, dropped
        (at("12:00:00"), 50931, 150.0),  # lab inside the stay: bin 1
    ])
    first = hourly.iloc[0]
    assert first["height"] == 180.0 and first["weight"] == 80.0
    assert first["heart_rate"] == 70.0 and first["resp_rate"] == 22.0
    assert np.isnan(first["glucose"]) and hourly["glucose"].iloc[1] == 150.0
    assert not (hourly["heart_rate"] == 50.0).any() and hourly["spo2"].isna().all()
    assert len(hourly) == 10 and first["n_observed"] == 4
    assert stats["before_intime_kept"] == 4 and stats["before_intime_dropped"] == 2
    assert stats["outside_stay"] == 3


def test_pre_intime_window_is_a_setting(tmp_path):
    at = lambda hm: pd.Timestamp(f"2150-01-01 {hm}")  # noqa: E731
    rows = [(at("06:00:00"), 220045, 50.0), (at("09:59:00"), 220045, 60.0)]
    wide, _ = _extract_by_hand(tmp_path, rows, [], pre_intime_hours=6.0)
    none, _ = _extract_by_hand(tmp_path, rows, [], pre_intime_hours=0.0)
    assert wide["heart_rate"].iloc[0] == 60.0  # both kept, the later one wins
    assert np.isnan(none["heart_rate"].iloc[0])  # even the 1.5 min early value is dropped
