"""The prepared dataset's ``manifest.json`` and the end-of-run summary table."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from preprocessing import labels as L
from preprocessing.cohort import SPLITS
from preprocessing.config import SCHEMA_VERSION, PreprocessConfig
from preprocessing.phenotypes import phenotype_names

COHORTS = ("base", "matched")


def _git_sha() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def task_counts(out: Path) -> dict:
    """Samples per task, cohort (base = all, matched = CXR present) and split."""
    counts = {}
    for name in L.task_definitions(phenotype_names()):
        frame = pd.read_parquet(out / "labels" / f"{name}.parquet",
                                columns=["split", "cxr_index"])
        per = {}
        for cohort in COHORTS:
            sub = frame if cohort == "base" else frame[frame["cxr_index"] >= 0]
            per[cohort] = {s: int((sub["split"] == s).sum()) for s in SPLITS}
        counts[name] = per
    return counts


def write_manifest(out: Path, config: PreprocessConfig, files: dict, markers: dict,
                   cached: list[str], rebuilt: dict[str, str] | None = None) -> dict:
    """Write ``out/manifest.json``: schema, config, counts, skipped items, timings, provenance."""
    import ray

    from raybench import __version__

    tasks = L.task_definitions(phenotype_names())
    ehr = markers["ehr"]["summary"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "config": config.model_dump(mode="json"),
        "config_hash": config.digest(),
        "tasks": {name: {"kind": t.kind, "labels": list(t.labels), "hourly": t.hourly,
                         "file": f"labels/{name}.parquet"} for name, t in tasks.items()},
        "counts": task_counts(out),
        "cohort": {"stays": markers["cohort"]["summary"]["stays"],
                   "patients": markers["cohort"]["summary"]["patients"],
                   "duplicates_dropped": markers["cohort"]["summary"].get(
                       "duplicates_dropped", {}),
                   "exclusions": markers["cohort"]["summary"]["exclusions"]},
        "phenotype_coding": markers["cohort"]["summary"].get("phenotype_coding"),
        "ehr": {"features": ehr["features"], "n_features": len(ehr["features"]),
                "resample_hours": config.resample_hours, "imputations": list(config.imputations),
                "feature_dirs": {s: f"ehr/features_{s}" for s in config.imputations},
                "dropped_out_of_range": ehr.get("out_of_range", {}),
                "blank_values": ehr.get("blank", 0), "events_kept": ehr.get("events_kept"),
                "before_intime_kept": ehr.get("before_intime_kept"),
                "before_intime_dropped": ehr.get("before_intime_dropped"),
                "outside_stay": ehr.get("outside_stay"),
                "events_required": markers["labels"]["summary"].get("ehr_events")},
        "cxr": {"file": "cxr/images.parquet", "image_size": config.cxr_image_size,
                "written": markers["cxr"]["summary"]["written"],
                "skipped": markers["cxr"]["summary"]["skipped"],
                "skipped_list": "cxr/skipped.json"},
        "warnings": [w for m in markers.values() for w in m["summary"].get("warnings", [])],
        "stages": {name: {"key": m["key"], "version": m.get("version", 1),
                          "seconds": m["seconds"]} for name, m in markers.items()},
        "cached_stages": cached,
        "rebuilt_stages": rebuilt or {},
        "provenance": {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "raybench_version": __version__, "git_sha": _git_sha(),
            "python": platform.python_version(), "ray": ray.__version__,
            "inputs": {name: str(path) for name, path in sorted(files.items())},
        },
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / "manifest.json")
    return manifest


def summarise(manifest: dict) -> None:
    """Print the counts per task, cohort and split, and the stage timings."""
    console = Console(stderr=True)
    table = Table(title="prepared dataset: samples per task (base / matched = CXR present)")
    table.add_column("task")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for name, per in manifest["counts"].items():
        table.add_row(name, *(f"{per['base'][s]:,} / {per['matched'][s]:,}" for s in SPLITS))
    console.print(table)
    stages = ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in manifest["stages"].items())
    cached = manifest["cached_stages"]
    console.print(f"stages: {stages}" + (f" (cached: {', '.join(cached)})" if cached else ""))
    for name, reason in manifest.get("rebuilt_stages", {}).items():
        console.print(f"stage {name} rebuilt: {reason}")
    required = manifest["ehr"].get("events_required") or {}
    if required:
        action = "dropped" if required["dropped"] else "kept (masks all zero)"
        counts = ", ".join(f"{t} {n}" for t, n in required["samples_without_events"].items()
                           if n)
        console.print(f"stays without any EHR event: {required['stays_without_events']}; "
                      f"samples without an event in their window, {action}: {counts or 'none'}")
    coding = manifest.get("phenotype_coding") or {}
    if coding.get("unknown_distinct_codes"):
        unknown = sum(v["unknown"] for v in coding["by_version"].values())
        console.print(f"diagnosis codes unknown to the phenotype sources: {unknown} rows, "
                      f"{coding['unknown_distinct_codes']} distinct codes (see manifest)")
    console.print(f"CXR images written {manifest['cxr']['written']}, "
                  f"skipped {manifest['cxr']['skipped']}; cohort {manifest['cohort']['stays']} "
                  f"stays of {manifest['cohort']['patients']} patients")
