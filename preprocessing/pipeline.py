"""``raybench preprocess``: raw MIMIC-IV + MIMIC-CXR-JPG -> a prepared dataset directory.

Stages (each cached and written atomically, see :mod:`preprocessing.stages`):

1. ``cohort``  base cohort, exclusions, patient-level splits (stay-ID lists), phenotypes
2. ``samples`` samples and labels of every task, with the chosen CXR of each sample
3. ``cxr``     the chosen AP images decoded at reduced scale and resized (Ray Data)
4. ``ehr``     events -> bins -> imputed, normalised features with masks (Ray Data)
5. ``labels``  final per-task label files pointing at image rows and EHR lengths

Then ``manifest.json`` and a summary table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

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
from preprocessing.phenotypes import label_admissions, phenotype_names
from preprocessing.raw_io import check_inputs, read_table
from preprocessing.stages import fingerprint, run_stage, stage_key
from raybench.errors import RaybenchError

COHORT_FIELDS = ("min_age", "exclude_transfers", "exclude_multi_stay_admissions",
                 "split_fractions", "split_seed")
SAMPLE_FIELDS = ("mortality_hours", "hourly_min_hours", "decompensation_horizon_hours",
                 "cxr_lookback_hours", "radiology_uncertain", "max_hours")
EHR_FIELDS = ("resample_hours", "max_hours", "imputations")


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
        stays, exclusions = build_cohort(files, config)
        diagnoses = read_table(files["diagnoses_icd"], _schema("diagnoses_icd"),
                               ("hadm_id", "icd_code", "icd_version"))
        phenos = label_admissions(diagnoses, stays["hadm_id"].to_numpy())
        stays.to_parquet(tmp / "stays.parquet", index=False)
        phenos.reset_index().to_parquet(tmp / "phenotypes.parquet", index=False)
        (tmp / "splits").mkdir()
        for split in SPLITS:
            stays.loc[stays["split"] == split, ["stay_id"]].to_csv(
                tmp / "splits" / f"{split}_stay_ids.csv", index=False)
        return {"stays": len(stays), "exclusions": exclusions,
                "patients": int(stays["subject_id"].nunique())}
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
        events, stats = extract_events(files, stays, config.max_hours)
        work = tmp / "_work"
        n_parts = max(2 * (config.num_cpus or os.cpu_count() or 1), -(-len(stays) // 1000))
        n_parts = min(n_parts, len(stays))
        parts = write_partitions(events, stays, work, n_parts)
        del events
        step, max_h = config.resample_hours, config.max_hours
        _parallel(config, [{"part": p} for p in parts],
                  lambda r: bin_partition(work, r["part"], step, max_h), progress,
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
            n_steps=n_bins(stays["los_hours"].to_numpy(), step, max_h))
        lengths.to_parquet(tmp / "stay_lengths.parquet", index=False)
        return {"features": feature_names(), "rows": int(lengths["n_steps"].sum()), **stats}
    return build


def _labels_stage(out: Path, config):
    def build(tmp: Path) -> dict:
        index = pd.read_parquet(out / "samples" / "cxr_index.parquet")
        written = pd.read_parquet(out / "cxr" / "images.parquet", columns=["cxr_index"])
        ok = index[index["cxr_index"].isin(written["cxr_index"])]
        to_row = pd.Series(ok["cxr_index"].to_numpy(), index=ok["dicom_id"].to_numpy())
        lengths = pd.read_parquet(out / "ehr" / "stay_lengths.parquet").set_index("stay_id")
        tasks = L.task_definitions(phenotype_names())
        for name in tasks:
            frame = pd.read_parquet(out / "samples" / f"{name}.parquet")
            cxr = to_row.reindex(frame["dicom_id"].astype(object)).to_numpy()
            frame["cxr_index"] = np.nan_to_num(cxr.astype(float), nan=-1).astype(np.int32)
            steps = np.floor(frame["ehr_hours"].to_numpy() / config.resample_hours)
            cap = lengths["n_steps"].reindex(frame["stay_id"]).to_numpy()
            frame["n_steps"] = np.clip(steps, 1, cap).astype(np.int32)
            frame = frame.drop(columns=["dicom_id"])
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        return {"tasks": sorted(tasks)}
    return build


def run_preprocess(mimic_iv: Path, mimic_cxr: Path, out: Path,
                   config_path: Path | None = None, config: PreprocessConfig | None = None,
                   show: bool = True) -> dict:
    """Run every stage (skipping finished ones) and write ``out/manifest.json``."""
    from raybench.progress import progress_bar

    config = config or load_config(config_path)
    files = check_inputs(Path(mimic_iv), Path(mimic_cxr))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RaybenchError(f"cannot create output directory {out}: {exc.strerror}") from None
    inputs = fingerprint(list(files.values()))
    k_cohort = stage_key("cohort", inputs, config.digest(*COHORT_FIELDS))
    k_samples = stage_key("samples", k_cohort, config.digest(*SAMPLE_FIELDS))
    k_cxr = stage_key("cxr", k_samples, str(config.cxr_image_size))
    k_ehr = stage_key("ehr", k_cohort, config.digest(*EHR_FIELDS))
    k_labels = stage_key("labels", k_samples, k_cxr, k_ehr)
    markers, skipped = {}, []
    with progress_bar() as progress:
        progress.disable = not show
        for name, key, build in (
            ("cohort", k_cohort, _cohort_stage(files, config)),
            ("samples", k_samples, _samples_stage(out, files, config)),
            ("cxr", k_cxr, _cxr_stage(out, Path(mimic_cxr), config, progress)),
            ("ehr", k_ehr, _ehr_stage(out, files, config, progress)),
            ("labels", k_labels, _labels_stage(out, config)),
        ):
            task = progress.add_task(f"stage {name}", total=1)
            markers[name], was_done = run_stage(out, name, key, build)
            progress.update(task, completed=1,
                            description=f"stage {name}" + (" (cached)" if was_done else ""))
            if was_done:
                skipped.append(name)
    manifest = write_manifest(out, config, files, markers, skipped)
    if show:
        summarise(manifest)
    return manifest
