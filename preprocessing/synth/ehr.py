"""Synthetic ``icu/chartevents`` and ``hosp/labevents`` rows, vectorised over all stays.

Each variable is measured on its own schedule (stay x time grid built with ``np.repeat``),
and its value is a function of the stay's latent severity at that time plus its conditions.
Stays of patients on Medicaid are measured half as often (planted measurement disparity).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from preprocessing import variables as V

UNITS = {
    220045: "bpm", 220050: "mmHg", 220051: "mmHg", 220052: "mmHg", 220179: "mmHg",
    220180: "mmHg", 220181: "mmHg", 220210: "insp/min", 224690: "insp/min", 220277: "%",
    V.ITEM_TEMP_F: "°F", V.ITEM_TEMP_C: "°C", 225664: "mg/dL", 220621: "mg/dL",
    223830: "units", V.ITEM_FIO2: "%", V.ITEM_WEIGHT_ADMIT: "kg", V.ITEM_WEIGHT_DAILY: "kg",
    V.ITEM_WEIGHT_LB: "lbs", V.ITEM_HEIGHT_CM: "cm", V.ITEM_HEIGHT_IN: "Inch",
}


def _schedule(
    rng: np.random.Generator, los_h: np.ndarray, interval_h: np.ndarray, selected: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stay indices and hours since ICU admission for a regular, jittered schedule."""
    stays = np.flatnonzero(selected)
    start = rng.uniform(0.05, 1.0, len(stays)) * interval_h[stays]
    count = np.floor((los_h[stays] - start) / interval_h[stays]).astype(np.int64) + 1
    count = np.maximum(count, 0)
    idx = np.repeat(stays, count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    jitter = rng.uniform(-0.15, 0.15, len(idx)) * interval_h[idx]
    t = np.clip(start.repeat(count) + k * interval_h[idx] + jitter, 0.01, los_h[idx] - 0.01)
    return idx, t


def _state(stays: pd.DataFrame, idx: np.ndarray, t: np.ndarray, los_h: np.ndarray) -> np.ndarray:
    """Severity at time t: the stay's level, worsening over the last 30 h before an ICU death."""
    base = stays["severity"].to_numpy()[idx]
    dies = stays["dies_in_icu"].to_numpy()[idx]
    ramp = np.clip(1.0 - (los_h[idx] - t) / 30.0, 0.0, 1.0) * 2.5
    recovery = -0.4 * t / np.maximum(los_h[idx], 1.0)
    return base + np.where(dies, ramp, recovery)


class _Rows:
    """Accumulates event columns from many variables, then builds one frame."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, idx, t, itemid, valuenum, text=None, uom=None) -> None:
        itemid = np.broadcast_to(np.asarray(itemid, dtype=np.int64), idx.shape)
        self.parts.append({
            "idx": idx, "t": t, "itemid": itemid,
            "valuenum": np.asarray(valuenum, dtype=np.float64),
            "text": text if text is not None else np.full(len(idx), None, dtype=object),
        })

    def frame(self) -> pd.DataFrame:
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        return pd.DataFrame(cols)


def _cond(stays: pd.DataFrame, key: str, idx: np.ndarray) -> np.ndarray:
    return stays[key].to_numpy()[idx].astype(np.float64)


def chart_rows(rng: np.random.Generator, stays: pd.DataFrame) -> pd.DataFrame:
    """All chartevents of all stays (hidden-truth ``stays`` frame from the cohort)."""
    n = len(stays)
    los_h = ((stays["outtime"] - stays["intime"]) / pd.Timedelta(hours=1)).to_numpy()
    sparse = np.where(stays["insurance"].to_numpy() == "Medicaid", 2.0, 1.0)
    every = np.ones(n, dtype=bool)
    sev = stays["severity"].to_numpy()
    vent = (stays["resp_failure"].to_numpy() == 1) | (sev > 1.3)
    arterial = rng.random(n) < 0.25 + 0.3 * (sev > 0.5)
    rows = _Rows()
    c = lambda key, idx: _cond(stays, key, idx)  # noqa: E731

    idx, t = _schedule(rng, los_h, 1.0 * sparse, every)
    s = _state(stays, idx, t, los_h)
    hr = 84 + 9 * s + 12 * c("shock", idx) + 10 * c("sepsis", idx) + rng.normal(0, 8, len(idx))
    rows.add(idx, t, 220045, np.round(hr))
    sbp = (120 - 10 * s + 18 * c("htn", idx) + 10 * c("htn_comp", idx) - 25 * c("shock", idx)
           + rng.normal(0, 12, len(idx)))
    dbp = 62 - 5 * s + 9 * c("htn", idx) - 12 * c("shock", idx) + rng.normal(0, 8, len(idx))
    mbp = (sbp + 2 * dbp) / 3 + rng.normal(0, 3, len(idx))
    art = arterial[idx]
    rows.add(idx, t, np.where(art, 220050, 220179), np.round(sbp))
    rows.add(idx, t, np.where(art, 220051, 220180), np.round(dbp))
    rows.add(idx, t, np.where(art, 220052, 220181), np.round(mbp))
    rr = 18 + 3 * s + 4 * c("pneumonia", idx) + 3 * c("copd", idx) + rng.normal(0, 3, len(idx))
    rows.add(idx, t, np.where(vent[idx], 224690, 220210), np.round(np.clip(rr, 4, 60)))
    spo2 = (97 - 1.5 * s - 2 * c("pneumonia", idx) - 2 * c("copd", idx)
            - 2 * c("resp_failure", idx) + rng.normal(0, 1.5, len(idx)))
    rows.add(idx, t, 220277, np.round(np.clip(spo2, 60, 100)))

    idx, t = _schedule(rng, los_h, 4.0 * sparse, every)
    s = _state(stays, idx, t, los_h)
    temp_c = (36.9 + 0.3 * s + 1.1 * c("sepsis", idx) + 0.7 * c("pneumonia", idx)
              + rng.normal(0, 0.4, len(idx)))
    fahrenheit = rng.random(len(idx)) < 0.7
    rows.add(idx, t, np.where(fahrenheit, V.ITEM_TEMP_F, V.ITEM_TEMP_C),
             np.where(fahrenheit, np.round(temp_c * 9 / 5 + 32, 1), np.round(temp_c, 1)))

    # GCS: three text-valued components charted together.
    idx, t = _schedule(rng, los_h, 4.0 * sparse, every)
    s = _state(stays, idx, t, los_h)
    deficit = np.clip(3.5 * np.maximum(s - 0.3, 0) + rng.normal(0, 1.0, len(idx)), 0, 12)
    eye = np.clip(np.round(4 - deficit * 3 / 12), 1, 4).astype(int)
    motor = np.clip(np.round(6 - deficit * 5 / 12), 1, 6).astype(int)
    verbal = np.clip(np.round(5 - deficit * 4 / 12), 1, 5).astype(int)
    for item, scores, table in (
        (V.ITEM_GCS_EYE, eye, V.GCS_EYE_TEXT),
        (V.ITEM_GCS_MOTOR, motor, V.GCS_MOTOR_TEXT),
        (V.ITEM_GCS_VERBAL, verbal, V.GCS_VERBAL_TEXT),
    ):
        by_score = {v: k for k, v in table.items() if k != "No Response-ETT"}
        text = np.array([by_score[v] for v in range(1, max(table.values()) + 1)], dtype=object)
        labels = text[scores - 1]
        if item == V.ITEM_GCS_VERBAL:
            labels = np.where(vent[idx] & (s > 0.5), "No Response-ETT", labels)
        rows.add(idx, t, item, scores.astype(float), text=labels)

    idx, t = _schedule(rng, los_h, 8.0 * sparse, every)
    s = _state(stays, idx, t, los_h)
    abnormal = rng.random(len(idx)) < 1 / (1 + np.exp(-(-2.0 + 1.2 * s + 2 * c("shock", idx))))
    crr_text = np.where(abnormal, "Abnormal >3 Seconds", "Normal <3 Seconds").astype(object)
    rows.add(idx, t, np.where(rng.random(len(idx)) < 0.5, V.ITEM_CRR_RIGHT, V.ITEM_CRR_LEFT),
             np.full(len(idx), np.nan), text=crr_text)

    idx, t = _schedule(rng, los_h, 2.0 * sparse, vent)
    s = _state(stays, idx, t, los_h)
    fio2 = np.clip(np.round((35 + 15 * s + rng.normal(0, 8, len(idx))) / 5) * 5, 21, 100)
    rows.add(idx, t, V.ITEM_FIO2, fio2)
    idx, t = _schedule(rng, los_h, 8.0 * sparse, vent)
    s = _state(stays, idx, t, los_h)
    ph = 7.40 - 0.04 * s - 0.05 * c("shock", idx) + rng.normal(0, 0.03, len(idx))
    rows.add(idx, t, 223830, np.round(ph, 2))

    diabetic = (stays["dm"].to_numpy() == 1) | (stays["dm_comp"].to_numpy() == 1)
    idx, t = _schedule(rng, los_h, np.where(diabetic, 4.0, 6.0) * sparse, every)
    s = _state(stays, idx, t, los_h)
    glucose = (120 + 10 * s + 70 * c("dm", idx) + 100 * c("dm_comp", idx)
               + rng.normal(0, 25, len(idx)))
    rows.add(idx, t, np.where(rng.random(len(idx)) < 0.8, 225664, 220621),
             np.round(np.clip(glucose, 40, 900)))

    # Vitals charted before intime: 20 % of stays inside the 2 h pre-intime window, 5 % far
    # outside it (3-6 h before; preprocessing drops those).
    for share, low, high in ((0.2, 0.1, 1.5), (0.05, 3.0, 6.0)):
        idx = np.flatnonzero(rng.random(n) < share)
        t = -rng.uniform(low, high, len(idx))
        rows.add(idx, t, 220045, np.round(84 + 9 * sev[idx] + rng.normal(0, 8, len(idx))))

    weight = stays["weight_kg"].to_numpy()
    in_lbs = rng.random(n) < 0.1
    all_idx = np.arange(n)
    # Admission weight and height are charted at the admission minute: seconds to ~2 h
    # before intime (MIMIC-IV), and for 10 % of stays 3-12 h before it, outside the
    # pre-intime window (only static variables may come from that far back).
    t0 = -rng.uniform(0.005, 2.0, n)
    early = rng.random(n) < 0.1
    t0[early] = -rng.uniform(3.0, 12.0, int(early.sum()))
    rows.add(all_idx, t0, np.where(in_lbs, V.ITEM_WEIGHT_LB, V.ITEM_WEIGHT_ADMIT),
             np.round(np.where(in_lbs, weight * 2.20462, weight), 1))
    idx, t = _schedule(rng, los_h, np.full(n, 24.0), rng.random(n) < 0.5)
    rows.add(idx, t, V.ITEM_WEIGHT_DAILY, np.round(weight[idx] + rng.normal(0, 1.5, len(idx)), 1))
    height = stays["height_cm"].to_numpy()
    h_kind = rng.random(n)
    has_h = h_kind < 0.8
    in_inch = h_kind < 0.2
    rows.add(all_idx[has_h], t0[has_h] + 0.01,
             np.where(in_inch[has_h], V.ITEM_HEIGHT_IN, V.ITEM_HEIGHT_CM),
             np.round(np.where(in_inch, height / 2.54, height)[has_h]))

    events = rows.frame()
    events = events[~stays["no_ehr"].to_numpy()[events["idx"].to_numpy()]].reset_index(drop=True)
    _corrupt(rng, events)
    return _to_chartevents(rng, events, stays)


def _corrupt(rng: np.random.Generator, events: pd.DataFrame) -> None:
    """Plant impossible values (0.2 %) and blanks (0.3 %) in numeric rows, in place."""
    numeric = events["text"].isna().to_numpy() & events["valuenum"].notna().to_numpy()
    u = rng.random(len(events))
    impossible = numeric & (u < 0.002)
    blank = numeric & (u >= 0.002) & (u < 0.005)
    bad_values = np.array([99999.0, -1.0, 0.0, 1e6])
    events.loc[impossible, "valuenum"] = bad_values[rng.integers(0, 4, impossible.sum())]
    events.loc[blank, "valuenum"] = np.nan
    events["blank"] = blank


def _to_chartevents(
    rng: np.random.Generator, events: pd.DataFrame, stays: pd.DataFrame
) -> pd.DataFrame:
    idx = events["idx"].to_numpy()
    charttime = (stays["intime"].to_numpy()[idx]
                 + pd.to_timedelta(events["t"].to_numpy(), unit="h").to_numpy())
    charttime = pd.DatetimeIndex(charttime).floor("min")
    itemid = events["itemid"].to_numpy()
    valuenum = events["valuenum"].to_numpy()
    text = events["text"].to_numpy()
    value = pd.Series(valuenum).map("{:g}".format).to_numpy(dtype=object)
    value = np.where(pd.isna(text), value, text)
    value = np.where(events["blank"].to_numpy(), None, value)
    uom = pd.Series(itemid).map(UNITS).to_numpy(dtype=object)
    frame = pd.DataFrame({
        "subject_id": stays["subject_id"].to_numpy()[idx],
        "hadm_id": stays["hadm_id"].to_numpy()[idx],
        "stay_id": stays["stay_id"].to_numpy()[idx],
        "caregiver_id": rng.integers(1000, 99999, len(idx)),
        "charttime": charttime,
        "storetime": charttime + pd.to_timedelta(rng.integers(1, 60, len(idx)), unit="min"),
        "itemid": itemid,
        "value": value,
        "valuenum": valuenum,
        "valueuom": uom,
        "warning": np.zeros(len(idx), dtype=np.int64),
    })
    order = np.lexsort((itemid, charttime.asi8, frame["stay_id"].to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


def lab_rows(rng: np.random.Generator, stays: pd.DataFrame) -> pd.DataFrame:
    """Lab glucose (50931, 50809) and blood-gas pH (50820) rows; labs carry no stay_id."""
    n = len(stays)
    los_h = ((stays["outtime"] - stays["intime"]) / pd.Timedelta(hours=1)).to_numpy()
    sev = stays["severity"].to_numpy()
    vent = (stays["resp_failure"].to_numpy() == 1) | (sev > 1.3)
    parts = []
    idx, t = _schedule(rng, los_h, np.full(n, 12.0), np.ones(n, dtype=bool))
    s = _state(stays, idx, t, los_h)
    glucose = (118 + 10 * s + 70 * stays["dm"].to_numpy()[idx]
               + 100 * stays["dm_comp"].to_numpy()[idx]
               + rng.normal(0, 20, len(idx)))
    parts.append((idx, t, 50931, np.round(np.clip(glucose, 40, 900)), "mg/dL", 70.0, 100.0))
    idx, t = _schedule(rng, los_h, np.full(n, 6.0), vent)
    s = _state(stays, idx, t, los_h)
    ph = 7.40 - 0.04 * s - 0.05 * stays["shock"].to_numpy()[idx] + rng.normal(0, 0.03, len(idx))
    parts.append((idx, t, 50820, np.round(ph, 2), "units", 7.35, 7.45))
    glucose_bg = 125 + 10 * s + rng.normal(0, 20, len(idx))
    parts.append((idx, t, 50809, np.round(glucose_bg), "mg/dL", 70.0, 105.0))

    frames = []
    for idx, t, itemid, val, uom, lo, hi in parts:
        charttime = pd.DatetimeIndex(
            stays["intime"].to_numpy()[idx] + pd.to_timedelta(t, unit="h").to_numpy()
        ).floor("min")
        frames.append(pd.DataFrame({
            "subject_id": stays["subject_id"].to_numpy()[idx],
            "hadm_id": stays["hadm_id"].to_numpy()[idx],
            "itemid": itemid,
            "charttime": charttime,
            "valuenum": val,
            "valueuom": uom,
            "ref_range_lower": lo,
            "ref_range_upper": hi,
        }))
    labs = pd.concat(frames, ignore_index=True)
    labs = labs[~labs["hadm_id"].isin(stays.loc[stays["no_ehr"], "hadm_id"])]
    labs = labs.sort_values(["subject_id", "charttime", "itemid"], kind="stable")
    labs = labs.reset_index(drop=True)
    m = len(labs)
    flag = np.where(
        (labs["valuenum"] < labs["ref_range_lower"]) | (labs["valuenum"] > labs["ref_range_upper"]),
        "abnormal", None,
    )
    labs.insert(0, "labevent_id", np.arange(1, m + 1, dtype=np.int64))
    labs.insert(3, "specimen_id", rng.integers(1, 99_999_999, m))
    labs.insert(5, "order_provider_id", None)
    delay = pd.to_timedelta(rng.integers(20, 120, m), unit="min")
    labs.insert(7, "storetime", labs["charttime"] + delay)
    labs.insert(8, "value", labs["valuenum"].map("{:g}".format))
    labs["flag"] = flag
    labs["priority"] = np.where(rng.random(m) < 0.6, "STAT", "ROUTINE")
    labs["comments"] = None
    return labs
