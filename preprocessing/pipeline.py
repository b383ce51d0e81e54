"""``raybench preprocess``: raw MIMIC-IV + MIMIC-CXR-JPG -> a prepared dataset directory.

Stages (each cached and written atomically, see :mod:`preprocessing.stages`):

1. ``cohort``  base cohort, exclusions, patient-level splits (stay-ID lists), phenotypes
2. ``samples`` samples and labels of every task, with the chosen CXR of each sample
3. ``cxr``     the chosen AP images decoded at reduced scale and resized (Ray Data)
4. ``ehr``     events -> bins -> imputed, normalised features with masks (Ray Data)
5. ``labels``  final per-task label files pointing at image rows and EHR windows

Each stage has a version (``STAGE_VERSION`` in its module) that is part of its cache key, so
a code change that bumps it rebuilds the stage; the console and the manifest say why a stage
was rebuilt. Then ``manifest.json`` and a summary table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import cohort as cohort_module
from preprocessing import cxr_images as cxr_module
from preprocessing import ehr_features as ehr_module
from preprocessing import label_files
from preprocessing import labels as L
from preprocessing.cohort import SPLITS, build_cohort
from preprocessing.config import PreprocessConfig, load_config
from preprocessing.cxr_select import latest_image, load_ap_images
from preprocessing.ehr_extract import extract_events, write_partitions
from preprocessing.ehr_features import (
    bin_partition,
    feature_names,
    feature_partition,
    n_bins,
    train_statistics,
)
from preprocessing.manifest import summarise, write_manifest
from preprocessing.phenotypes import coding_summary, label_admissions, resource_digest
from preprocessing.raw_io import check_inputs, read_table
from preprocessing.stages import (
    MARKER,
    adopt,
    fingerprint,
    output_digests,
    outputs_digest,
    rebuild_reason,
    run_stage,
    stage_key,
)
from raybench.errors import RaybenchError
from raybench.ownership import claim

COHORT_FIELDS = ("min_age", "exclude_transfers", "exclude_multi_stay_admissions",
                 "count_stays_after_transfer_filter", "split_fractions", "split_seed")
SAMPLE_FIELDS = ("mortality_hours", "hourly_min_hours", "decompensation_horizon_hours",
                 "cxr_lookback_hours", "radiology_uncertain")
EHR_FIELDS = ("resample_hours", "pre_intime_hours", "imputations")
LABEL_FIELDS = ("resample_hours", "max_hours", "require_ehr_events")
STAGE_VERSIONS = {"cohort": cohort_module.STAGE_VERSION, "samples": L.STAGE_VERSION,
                  "cxr": cxr_module.STAGE_VERSION, "ehr": ehr_module.STAGE_VERSION,
                  "labels": label_files.STAGE_VERSION}


def _ray(config: PreprocessConfig):
    import ray

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=config.num_cpus or os.cpu_count(),
                 include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", configure_logging=True)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def _parallel(config: PreprocessConfig, items: list[dict], fn, progress, label: str) -> list:
    """Run ``fn(item)`` over items with Ray Data (one block per item), advancing a bar."""
    ray = _ray(config)
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(fn)
    task = progress.add_task(label, total=len(items)) if progress else None
    results = []
    for row in dataset.iter_rows():
        results.append(row)
        if progress:
            progress.advance(task)
    return sorted(results, key=lambda r: r["part"])


def _cohort_stage(files, config):
    def build(tmp: Path) -> dict:
        duplicates: dict[str, int] = {}
        stays, exclusions = build_cohort(files, config, duplicates)
        diagnoses = read_table(files["diagnoses_icd"], _schema("diagnoses_icd"),
                               ("hadm_id", "icd_code", "icd_version"))
        phenos = label_admissions(diagnoses, stays["hadm_id"].to_numpy())
        coding = coding_summary(diagnoses, stays["hadm_id"].to_numpy())
        stays.to_parquet(tmp / "stays.parquet", index=False)
        phenos.reset_index().to_parquet(tmp / "phenotypes.parquet", index=False)
        (tmp / "splits").mkdir()
        for split in SPLITS:
            stays.loc[stays["split"] == split, ["stay_id"]].to_csv(
                tmp / "splits" / f"{split}_stay_ids.csv", index=False)
        warnings = [f"{files[table]}: {n:,} exact duplicate row(s) dropped" for table, n in
                    duplicates.items() if n]
        return {"stays": len(stays), "exclusions": exclusions, "duplicates_dropped": duplicates,
                "patients": int(stays["subject_id"].nunique()), "phenotype_coding": coding,
                "warnings": warnings}
    return build


def _schema(name: str):
    from preprocessing import schemas as S

    return {s.name: s for s in (*S.MIMIC_IV_TABLES, *S.MIMIC_CXR_TABLES)}[name]


def _samples_stage(out: Path, files, config):
    def build(tmp: Path) -> dict:
        stays = pd.read_parquet(out / "cohort" / "stays.parquet")
        phenos = pd.read_parquet(out / "cohort" / "phenotypes.parquet").set_index("hadm_id")
        images = load_ap_images(files["cxr_metadata"], files["cxr_chexpert"], stays)
        chexpert = read_table(files["cxr_chexpert"], _schema("cxr_chexpert"),
                              ("study_id", *L.CHEXPERT_LABELS))
        tasks = {
            "mortality": L.mortality(stays, config, icu=False),
            "mortality_icu": L.mortality(stays, config, icu=True),
            "phenotyping": L.phenotyping(stays, phenos, config),
            "decompensation": L.decompensation(stays, config),
            "length_of_stay": L.length_of_stay(stays, config),
            "length_of_stay_7": L.length_of_stay_7(stays, config),
        }
        for frame in tasks.values():
            frame["dicom_id"] = latest_image(frame, images, config.cxr_lookback_hours)
        tasks["radiology"] = L.radiology(stays, images, chexpert, config)
        used = pd.concat([f["dicom_id"] for f in tasks.values()]).dropna().unique()
        index = (images.drop_duplicates("dicom_id").set_index("dicom_id")
                 .loc[np.sort(used), ["subject_id", "study_id", "time"]].reset_index())
        index.insert(0, "cxr_index", np.arange(len(index), dtype=np.int32))
        index.to_parquet(tmp / "cxr_index.parquet", index=False)
        for name, frame in tasks.items():
            frame.drop(columns=["intime"]).to_parquet(tmp / f"{name}.parquet", index=False)
        return {"samples": {k: len(v) for k, v in tasks.items()}, "images": len(index)}
    return build


def _cxr_stage(out: Path, cxr_root: Path, config, progress):
    def build(tmp: Path) -> dict:
        from preprocessing.cxr_images import resize_images

        index = pd.read_parquet(out / "samples" / "cxr_index.parquet")
        _ray(config)
        result = resize_images(index, cxr_root, tmp / "images.parquet",
                               size=config.cxr_image_size, progress=progress)
        (tmp / "skipped.json").write_text(json.dumps(result["skipped"], indent=2) + "\n")
        return {"written": result["written"], "skipped": len(result["skipped"]),
                "images_per_second": result.get("images_per_second")}
    return build


def _ehr_stage(out: Path, files, config, progress):
    def build(tmp: Path) -> dict:
        stays = pd.read_parquet(out / "cohort" / "stays.parquet")
        events, stats = extract_events(files, stays, config.pre_intime_hours)
        stats["warnings"] = event_source_warnings(files, stats)
        work = tmp / "_work"
        n_parts = max(2 * (config.num_cpus or os.cpu_count() or 1), -(-len(stays) // 1000))
        n_parts = min(n_parts, len(stays))
        parts = write_partitions(events, stays, work, n_parts)
        del events
        step = config.resample_hours
        _parallel(config, [{"part": p} for p in parts],
                  lambda r: bin_partition(work, r["part"], step), progress,
                  "EHR: binning stays")
        norm = train_statistics(work, parts)
        (tmp / "normalization.json").write_text(json.dumps(norm, indent=2) + "\n")
        for strategy in config.imputations:
            target = tmp / f"features_{strategy}"
            _parallel(config, [{"part": p} for p in parts],
                      lambda r, s=strategy, d=target: feature_partition(work, d, r["part"], s,
                                                                        norm),
                      progress, f"EHR: features ({strategy} imputation)")
        hourly = tmp / "hourly"
        hourly.mkdir()
        for p in parts:
            os.replace(work / f"hourly-{p:05d}.parquet", hourly / f"part-{p:05d}.parquet")
        shutil.rmtree(work)
        lengths = stays[["stay_id"]].assign(
            n_steps=n_bins(stays["los_hours"].to_numpy(), step))
        lengths.to_parquet(tmp / "stay_lengths.parquet", index=False)
        return {"features": feature_names(), "rows": int(lengths["n_steps"].sum()), **stats}
    return build


def _labels_stage(out: Path, config):
    def build(tmp: Path) -> dict:
        return label_files.build_label_files(out, tmp, config)
    return build


def _legacy_cxr_index(out: Path) -> str | None:
    """Digest of the image index a pre-versioning ``cxr`` stage was built from, if any.

    Read before the ``samples`` stage may rewrite the index: a directory prepared before
    stage versions keeps its decoded images when the new index is byte-identical.
    """
    marker, index = out / "cxr" / MARKER, out / "samples" / "cxr_index.parquet"
    if not (marker.is_file() and index.is_file()):
        return None
    try:
        if "version" in json.loads(marker.read_text()):
            return None
    except (OSError, json.JSONDecodeError):
        return None
    return output_digests(index.parent)[index.name]


def _same_images(out: Path, legacy_index: str | None, markers: dict, config) -> bool:
    """True when a pre-versioning ``cxr`` stage holds exactly the images now asked for."""
    if legacy_index is None or markers["samples"]["outputs"].get("cxr_index.parquet") \
            != legacy_index:
        return False
    images = out / "cxr" / "images.parquet"
    if not images.is_file():
        return False
    height = pd.read_parquet(images, columns=["height"])["height"]
    return height.empty or int(height.iloc[0]) == config.cxr_image_size


def event_source_warnings(files: dict[str, Path], stats: dict) -> list[str]:
    """Warnings for an event table without usable values; an error when neither has one.

    ``stats`` are :func:`~preprocessing.ehr_extract.extract_events`' counts: rows of the EHR
    variables' items for cohort stays, and those with a usable value.
    """
    warnings = []
    for table, what in (("chartevents", "vital signs and GCS"), ("labevents", "labs")):
        rows, values = stats.get(f"{table}_rows", 0), stats.get(f"{table}_values", 0)
        if rows == 0:
            warnings.append(f"{files[table]}: no row for the cohort's stays with an item of "
                            f"the EHR variables ({what}); those variables are imputed for "
                            "every stay")
        elif values == 0:
            warnings.append(f"{files[table]}: all {rows:,} rows of the EHR variables' items "
                            f"have an empty valuenum (and no usable text value); the {what} "
                            "variables are imputed for every stay")
    if not stats.get("events_kept"):
        raise RaybenchError(
            f"no EHR variable has any value inside a cohort stay: {files['chartevents']} and "
            f"{files['labevents']} give {stats.get('chartevents_values', 0):,} and "
            f"{stats.get('labevents_values', 0):,} usable values, none within a stay; check those "
            "files (are they the MIMIC-IV tables of the same patients?)")
    return warnings


def _warn_console(warnings: list[str]) -> None:
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {warning}", markup=True, highlight=False)


def run_preprocess(mimic_iv: Path, mimic_cxr: Path, out: Path,
                   config_path: Path | None = None, config: PreprocessConfig | None = None,
                   show: bool = True) -> dict:
    """Run every stage (skipping finished ones) and write ``out/manifest.json``."""
    from raybench.progress import progress_bar

    config = config or load_config(config_path)
    files = check_inputs(Path(mimic_iv), Path(mimic_cxr))
    out = Path(out)
    try:
        claim(out, "prepared")  # a new, empty or raybench-prepared directory only
    except OSError as exc:
        raise RaybenchError(f"cannot create output directory {out}: {exc.strerror}") from None
    def inputs(*names: str) -> str:
        return fingerprint([files[n] for n in names])

    markers: dict = {}

    def upstream(name: str, *prefixes: str) -> str:
        return outputs_digest(out, name, markers[name], *prefixes)

    # Each key: stage version, settings used, raw inputs read, digests of upstream files read.
    keys = {
        "cohort": lambda: stage_key(
            "cohort", f"v{STAGE_VERSIONS['cohort']}", config.digest(*COHORT_FIELDS),
            inputs("icustays", "admissions", "patients", "diagnoses_icd"), resource_digest()),
        "samples": lambda: stage_key(
            "samples", f"v{STAGE_VERSIONS['samples']}", config.digest(*SAMPLE_FIELDS),
            inputs("cxr_metadata", "cxr_chexpert"), upstream("cohort")),
        "cxr": lambda: stage_key(
            "cxr", f"v{STAGE_VERSIONS['cxr']}", str(config.cxr_image_size),
            upstream("samples", "cxr_index.parquet")),
        "ehr": lambda: stage_key(
            "ehr", f"v{STAGE_VERSIONS['ehr']}", config.digest(*EHR_FIELDS),
            inputs("chartevents", "labevents"), upstream("cohort", "stays.parquet")),
        "labels": lambda: stage_key(
            "labels", f"v{STAGE_VERSIONS['labels']}", config.digest(*LABEL_FIELDS),
            upstream("samples"), upstream("cxr"),
            upstream("ehr", "stay_lengths.parquet", "hourly/")),
    }
    legacy_index = _legacy_cxr_index(out)
    skipped, rebuilt = [], {}
    with progress_bar() as progress:
        progress.disable = not show
        for name, build in (
            ("cohort", _cohort_stage(files, config)),
            ("samples", _samples_stage(out, files, config)),
            ("cxr", _cxr_stage(out, Path(mimic_cxr), config, progress)),
            ("ehr", _ehr_stage(out, files, config, progress)),
            ("labels", _labels_stage(out, config)),
        ):
            key = keys[name]()
            reason = rebuild_reason(out, name, key, STAGE_VERSIONS[name])
            if name == "cxr" and reason and _same_images(out, legacy_index, markers, config):
                adopt(out, "cxr", key, STAGE_VERSIONS["cxr"])
                reason = None
            if reason is not None and reason != "not built yet":
                rebuilt[name] = reason
                if show:
                    progress.console.print(f"stage {name}: rebuilding ({reason})")
            task = progress.add_task(f"stage {name}", total=1)
            markers[name], was_done = run_stage(out, name, key, build, STAGE_VERSIONS[name])
            progress.update(task, completed=1,
                            description=f"stage {name}" + (" (cached)" if was_done else ""))
            if was_done:
                skipped.append(name)
    manifest = write_manifest(out, config, files, markers, skipped, rebuilt)
    if show:
        summarise(manifest)
    _warn_console(manifest["warnings"])
    return manifest
