"""EHR extraction: raw chartevents/labevents -> one compact event table per stay partition.

Driver side, vectorised with pyarrow/pandas: keep the items of the 17 variables, map text
values (GCS, capillary refill) to codes, harmonise units (F->C, FiO2 % -> fraction,
inch -> cm, lb -> kg), drop values outside the valid ranges (counted), express time as hours
since ICU admission (negative for events of the stay charted just before it). The result is
split into partitions of whole stays for Ray Data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from preprocessing import variables as V
from preprocessing.raw_io import stream_events

VAR_INDEX = {v.name: i for i, v in enumerate(V.VARIABLES)}


def _convert(values: np.ndarray, itemids: np.ndarray) -> np.ndarray:
    out = values.astype(np.float64).copy()
    for var in V.VARIABLES:
        for itemid, how in var.conversions.items():
            sel = itemids == itemid
            if how == "fahrenheit_to_celsius":
                out[sel] = (out[sel] - 32.0) * 5.0 / 9.0
            elif how == "percent_to_fraction":
                # FiO2 is charted in percent; a few rows already hold a fraction.
                out[sel] = np.where(out[sel] > 1.0, out[sel] / 100.0, out[sel])
            elif how == "inch_to_cm":
                out[sel] = out[sel] * 2.54
            elif how == "pound_to_kg":
                out[sel] = out[sel] * 0.45359237
    return out


def _clean(frame: pd.DataFrame, stats: dict) -> pd.DataFrame:
    """Map items to variables, text to codes, units, valid ranges; frame has itemid, value(s)."""
    item_var = V.itemid_to_variable()
    itemids = frame["itemid"].to_numpy()
    values = frame["valuenum"].to_numpy(dtype=np.float64, na_value=np.nan).copy()
    if "value" in frame:
        text = frame["value"].astype("string")
        for itemid, table in V.TEXT_VALUE_MAPS.items():
            sel = itemids == itemid
            if sel.any():
                mapped = text[sel].map(table, na_action="ignore")
                values[sel] = pd.to_numeric(mapped, errors="coerce").to_numpy(
                    np.float64, na_value=np.nan)
    values = _convert(values, itemids)
    var_names = pd.Series(itemids).map(item_var).to_numpy()
    var_code = pd.Series(var_names).map(VAR_INDEX).to_numpy()
    valid = ~np.isnan(values)
    stats["blank"] = stats.get("blank", 0) + int((~valid).sum())
    for var in V.VARIABLES:
        if var.valid_low is None:
            continue
        sel = (var_names == var.name) & valid
        bad = sel & ((values < var.valid_low) | (values > var.valid_high))
        n_bad = int(bad.sum())
        if n_bad:
            stats.setdefault("out_of_range", {})[var.name] = (
                stats.get("out_of_range", {}).get(var.name, 0) + n_bad)
        valid &= ~bad
    return pd.DataFrame({"var": var_code[valid].astype(np.int8),
                         "value": values[valid].astype(np.float32)}, index=frame.index[valid])


def extract_events(files: dict[str, Path], stays: pd.DataFrame, pre_intime_hours: float
                   ) -> tuple[pd.DataFrame, dict]:
    """All kept events of cohort stays: stay_id, hours (since intime), var code, value.

    chartevents are matched by ``stay_id`` and kept from ``pre_intime_hours`` before intime
    (static variables, height and weight, from any time before it) up to outtime; their
    negative hours put them in the first bin. labevents carry no stay_id: they are matched
    by admission and kept between intime and outtime.
    """
    stats: dict = {}
    chart_items = sorted({i for v in V.VARIABLES for i in v.chart_itemids})
    chart = stream_events(
        files["chartevents"],
        {"stay_id": pa.int64(), "charttime": pa.timestamp("ns"), "itemid": pa.int64(),
         "value": pa.string(), "valuenum": pa.float64()},
        chart_items, "stay_id", stays["stay_id"].to_numpy(),
    ).to_pandas()
    stats["chartevents_rows"] = len(chart)
    cleaned = _clean(chart, stats)
    stats["chartevents_values"] = len(cleaned)
    chart = chart.loc[cleaned.index, ["stay_id", "charttime"]].join(cleaned)

    lab_items = sorted({i for v in V.VARIABLES for i in v.lab_itemids})
    labs = stream_events(
        files["labevents"],
        {"hadm_id": pa.int64(), "charttime": pa.timestamp("ns"), "itemid": pa.int64(),
         "valuenum": pa.float64()},
        lab_items, "hadm_id", stays["hadm_id"].to_numpy(),
    ).to_pandas()
    stats["labevents_rows"] = len(labs)
    cleaned = _clean(labs, stats)
    stats["labevents_values"] = len(cleaned)
    labs = labs.loc[cleaned.index, ["hadm_id", "charttime"]].join(cleaned)
    labs = labs.merge(stays[["hadm_id", "stay_id"]], on="hadm_id").drop(columns="hadm_id")

    n_chart = len(chart)
    events = pd.concat([chart, labs], ignore_index=True)
    timing = stays.set_index("stay_id")[["intime", "los_hours"]]
    joined = timing.reindex(events["stay_id"])
    hours = (events["charttime"].to_numpy() - joined["intime"].to_numpy()) / np.timedelta64(1, "h")
    from_chart = np.arange(len(events)) < n_chart
    static = np.isin(events["var"].to_numpy(), [VAR_INDEX[n] for n in V.STATIC])
    before = hours < 0
    early_ok = from_chart & (static | (hours >= -pre_intime_hours))
    inside = (hours < joined["los_hours"].to_numpy()) & (~before | early_ok)
    stats["before_intime_kept"] = int((inside & before).sum())
    stats["before_intime_dropped"] = int((~inside & before).sum())
    stats["outside_stay"] = int((~inside).sum())
    events = pd.DataFrame({
        "stay_id": events["stay_id"].to_numpy()[inside],
        "hours": hours[inside].astype(np.float32),
        "var": events["var"].to_numpy()[inside],
        "value": events["value"].to_numpy()[inside],
    })
    stats["events_kept"] = len(events)
    return events, stats


def write_partitions(events: pd.DataFrame, stays: pd.DataFrame, workdir: Path,
                     n_parts: int) -> list[int]:
    """Write events and stay lists per partition of whole stays; returns partition ids."""
    workdir.mkdir(parents=True, exist_ok=True)
    order = stays.sort_values("stay_id")
    part_of_stay = pd.Series(np.arange(len(order)) * n_parts // len(order),
                             index=order["stay_id"].to_numpy())
    event_part = part_of_stay.reindex(events["stay_id"]).to_numpy()
    for part in range(n_parts):
        ids = part_of_stay.index[part_of_stay.to_numpy() == part]
        order[order["stay_id"].isin(ids)][["stay_id", "los_hours", "split"]].to_parquet(
            workdir / f"stays-{part:05d}.parquet", index=False)
        events[event_part == part].to_parquet(workdir / f"events-{part:05d}.parquet",
                                              index=False)
    return list(range(n_parts))
