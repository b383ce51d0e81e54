"""Per-partition EHR work, run in parallel by Ray Data: binning, then features.

Binning keeps the last value of each variable in each bin (MedMod's discretiser) on a grid
of ``ceil(LoS / step)`` bins per stay (the whole stay; events charted just before intime fall
in bin 0); GCS total is the sum of its three
components where all three are charted in the bin. Features: forward fill within the stay,
then MedMod's normal values or CareBench's train medians; z-scores of the continuous
variables with train-split statistics; one-hot categoricals; observation masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import variables as V

NAMES = [v.name for v in V.VARIABLES]
GCS_PARTS = [NAMES.index(n) for n in ("gcs_eye", "gcs_verbal", "gcs_motor")]
GCS_TOTAL = NAMES.index("gcs_total")
# Version of the ``ehr`` stage (this module, preprocessing/ehr_extract.py and
# preprocessing/variables.py). Bump it when a change alters what the stage writes;
# tests/test_stage_versions.py holds its golden hash.
STAGE_VERSION = 2


def feature_names() -> list[str]:
    """Model input columns: z-scored continuous, one-hot categoricals, masks (in this order)."""
    names = list(V.CONTINUOUS)
    for var in V.VARIABLES:
        if var.kind == "categorical":
            names += [f"{var.name}={c:g}" for c in var.categories]
    return names + [f"mask:{n}" for n in NAMES]


def n_bins(los_hours: np.ndarray, step: int) -> np.ndarray:
    """Bins per stay: ceil(LoS / step), at least 1 (the whole stay is binned)."""
    return np.maximum(np.ceil(np.asarray(los_hours) / step), 1).astype(np.int64)


def bin_partition(workdir: Path, part: int, step: int) -> dict:
    """Events of one partition -> ``hourly-PART.parquet``.

    Columns: stay_id, step, split, the 17 variables (NaN = not observed) and ``n_observed``
    (variables observed in the bin). Events before intime (negative hours) fall in bin 0,
    where, as in every bin, the latest value wins.
    """
    stays = pd.read_parquet(workdir / f"stays-{part:05d}.parquet")
    events = pd.read_parquet(workdir / f"events-{part:05d}.parquet")
    counts = n_bins(stays["los_hours"].to_numpy(), step)
    offsets = pd.Series(np.cumsum(counts) - counts, index=stays["stay_id"].to_numpy())
    values = np.full((int(counts.sum()), len(NAMES)), np.nan, dtype=np.float32)
    if len(events):
        events = events.assign(bin=np.maximum(events["hours"] // step, 0).astype(np.int64))
        events = events.sort_values(["stay_id", "var", "hours"], kind="stable")
        last = events.drop_duplicates(["stay_id", "bin", "var"], keep="last")
        rows = offsets.reindex(last["stay_id"]).to_numpy() + last["bin"].to_numpy()
        values[rows, last["var"].to_numpy().astype(np.int64)] = last["value"].to_numpy()
    parts = values[:, GCS_PARTS]
    complete = ~np.isnan(parts).any(axis=1)
    values[complete, GCS_TOTAL] = parts[complete].sum(axis=1)
    frame = pd.DataFrame(values, columns=NAMES)
    frame.insert(0, "step", (np.arange(len(values)) - np.repeat(offsets.to_numpy(), counts))
                 .astype(np.int32))
    frame.insert(0, "stay_id", np.repeat(stays["stay_id"].to_numpy(), counts))
    frame.insert(2, "split", np.repeat(stays["split"].to_numpy(), counts))
    frame["n_observed"] = (~np.isnan(values)).sum(axis=1).astype(np.int8)
    frame.to_parquet(workdir / f"hourly-{part:05d}.parquet", index=False)
    return {"part": part, "rows": len(frame), "stays": len(stays)}


def forward_fill(values: np.ndarray, stay_start: np.ndarray) -> np.ndarray:
    """Forward fill each column within each stay (rows of a stay are contiguous)."""
    rows = np.arange(len(values))[:, None]
    idx = np.where(np.isnan(values), -1, rows)
    idx = np.maximum.accumulate(idx, axis=0)
    valid = idx >= stay_start[:, None]
    filled = values[np.where(valid, idx, 0), np.arange(values.shape[1])[None, :]]
    return np.where(valid, filled, np.nan)


def make_features(hourly: pd.DataFrame, strategy: str, stats: dict) -> np.ndarray:
    """Model-ready float32 matrix (rows of ``hourly``, columns of :func:`feature_names`)."""
    values = hourly[NAMES].to_numpy(np.float32)
    mask = ~np.isnan(values)
    stay = hourly["stay_id"].to_numpy()
    starts = np.r_[True, stay[1:] != stay[:-1]]
    stay_start = np.maximum.accumulate(np.where(starts, np.arange(len(stay)), 0))
    filled = forward_fill(values, stay_start)
    for j, var in enumerate(V.VARIABLES):
        if strategy == "carebench" and var.kind == "continuous":
            default = stats["median"][var.name]
        else:
            default = var.normal
        col = filled[:, j]
        col[np.isnan(col)] = default
    blocks = []
    for j, var in enumerate(V.VARIABLES):
        if var.kind == "continuous":
            std = stats["std"][var.name] or 1.0
            blocks.append(((filled[:, j] - stats["mean"][var.name]) / std)[:, None])
    for j, var in enumerate(V.VARIABLES):
        if var.kind == "categorical":
            cats = np.asarray(var.categories, dtype=np.float32)
            blocks.append((np.round(filled[:, j])[:, None] == cats[None, :]).astype(np.float32))
    blocks.append(mask.astype(np.float32))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def feature_partition(workdir: Path, out_dir: Path, part: int, strategy: str,
                      stats: dict) -> dict:
    """Hourly values of one partition -> ``out_dir/part-PART.parquet`` of model features."""
    hourly = pd.read_parquet(workdir / f"hourly-{part:05d}.parquet")
    matrix = make_features(hourly, strategy, stats)
    frame = pd.DataFrame(matrix, columns=feature_names())
    frame.insert(0, "step", hourly["step"].to_numpy())
    frame.insert(0, "stay_id", hourly["stay_id"].to_numpy())
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out_dir / f"part-{part:05d}.parquet", index=False)
    return {"part": part, "rows": len(frame)}


def train_statistics(workdir: Path, parts: list[int]) -> dict:
    """Mean, std and median of each continuous variable over observed train-split bins."""
    frames = [pd.read_parquet(workdir / f"hourly-{p:05d}.parquet",
                              columns=["split", *V.CONTINUOUS]) for p in parts]
    train = pd.concat(frames, ignore_index=True)
    train = train[train["split"] == "train"]
    stats: dict = {"mean": {}, "std": {}, "median": {}, "observed": {}}
    for name in V.CONTINUOUS:
        col = train[name].dropna().to_numpy(np.float64)
        normal = V.VARIABLES_BY_NAME[name].normal
        stats["observed"][name] = int(len(col))
        stats["mean"][name] = float(col.mean()) if len(col) else float(normal)
        stats["std"][name] = float(col.std()) if len(col) > 1 else 1.0
        stats["median"][name] = float(np.median(col)) if len(col) else float(normal)
    return stats
