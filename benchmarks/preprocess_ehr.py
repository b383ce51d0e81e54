"""EHR resampling benchmark: raybench (vectorised, Ray Data over stay partitions) vs the
anchors' way (a pandas loop over stays: pivot, resample, forward fill, fill normal values).

Both start from the same extracted events (hours since admission, variable, value) and
produce the same model features for MedMod imputation; the script checks that they agree,
then prints stays/s for each and the ratio (target >= 10x).

    python benchmarks/preprocess_ehr.py [--patients 1500] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import variables as V
from preprocessing.cohort import build_cohort
from preprocessing.config import PreprocessConfig
from preprocessing.ehr_extract import extract_events, write_partitions
from preprocessing.ehr_features import (
    NAMES,
    bin_partition,
    feature_partition,
    n_bins,
    train_statistics,
)
from preprocessing.raw_io import check_inputs
from preprocessing.synth.generator import SynthConfig, generate

STEP = 1
ORIGIN = pd.Timestamp("2000-01-01")  # stands for each stay's ICU admission time


def baseline(events: pd.DataFrame, stays: pd.DataFrame, stats: dict) -> np.ndarray:
    """Per-stay pandas loop, like the anchors' discretisers (one stay at a time)."""
    by_stay = dict(tuple(events.groupby("stay_id")))
    normal = {v.name: v.normal for v in V.VARIABLES}
    out = []
    for stay_id, los in zip(stays["stay_id"], stays["los_hours"], strict=True):
        bins = int(n_bins(np.array([los]), STEP)[0])
        grid = pd.DataFrame(np.nan, index=pd.RangeIndex(bins), columns=NAMES)
        sub = by_stay.get(stay_id)
        if sub is not None:
            # Events charted before intime (negative hours) belong to the first bin.
            wide = sub.assign(name=np.array(NAMES)[sub["var"].to_numpy()],
                              time=ORIGIN + pd.to_timedelta(sub["hours"].clip(lower=0),
                                                            unit="h"))
            wide = wide.sort_values("hours", kind="stable")
            wide = wide.pivot_table(index="time", columns="name",
                                                         values="value", aggfunc="last")
            wide = wide.resample(f"{STEP}h", origin=ORIGIN).last()
            wide.index = ((wide.index - ORIGIN) / pd.Timedelta(hours=STEP)).astype(int)
            grid.update(wide.reindex(grid.index))
        parts = grid[["gcs_eye", "gcs_verbal", "gcs_motor"]]
        grid["gcs_total"] = parts.sum(axis=1, min_count=3)
        mask = grid.notna().astype(np.float32)
        filled = grid.ffill().fillna(normal)
        cont = [(filled[n] - stats["mean"][n]) / (stats["std"][n] or 1.0) for n in V.CONTINUOUS]
        onehot = [(filled[v.name].round() == c).astype(np.float32)
                  for v in V.VARIABLES if v.kind == "categorical" for c in v.categories]
        out.append(np.column_stack([*cont, *onehot, mask.to_numpy()]).astype(np.float32))
    return np.concatenate(out)


def main() -> None:
    """Generate data, run both implementations, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1500)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="raybench-ehr-bench-"))
    raw = workdir / f"synth-{args.patients}"
    if not (raw / "synthetic_manifest.json").exists():
        generate(SynthConfig(out=raw, patients=args.patients, seed=0, image_size=32))
    files = check_inputs(raw / "mimic-iv", raw / "mimic-cxr-jpg")
    config = PreprocessConfig()
    stays, _ = build_cohort(files, config)
    events, _ = extract_events(files, stays, config.pre_intime_hours)
    print(f"{len(stays)} stays, {len(events):,} events after extraction")

    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    parts_dir = workdir / "parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    started = time.perf_counter()
    n_parts = 2 * (os.cpu_count() or 1)
    parts = write_partitions(events, stays, parts_dir, n_parts)
    items = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=n_parts)
    list(items.map(lambda r: bin_partition(parts_dir, r["part"], STEP)).iter_rows())
    stats = train_statistics(parts_dir, parts)
    feats = parts_dir / "features"
    list(items.map(lambda r: feature_partition(parts_dir, feats, r["part"], "medmod", stats))
         .iter_rows())
    fast_seconds = time.perf_counter() - started
    fast = pd.read_parquet(feats).drop(columns=["stay_id", "step"]).to_numpy()

    started = time.perf_counter()
    slow = baseline(events, stays.sort_values("stay_id"), stats)
    slow_seconds = time.perf_counter() - started
    diff = float(np.abs(fast - slow).max())
    verdict = "agree" if diff < 1e-4 else "DISAGREE"
    print(f"outputs {verdict}: max |difference| = {diff:.2e} over {fast.shape} features")
    print(f"baseline (per-stay pandas loop): {slow_seconds:7.2f} s  "
          f"{len(stays) / slow_seconds:9.1f} stays/s")
    print(f"raybench (Ray Data, vectorised): {fast_seconds:7.2f} s  "
          f"{len(stays) / fast_seconds:9.1f} stays/s  (Ray start-up excluded)")
    ratio = slow_seconds / fast_seconds
    print(f"speed-up: {ratio:.1f}x (target >= 10x): {'PASS' if ratio >= 10 else 'FAIL'}")
    ray.shutdown()
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
