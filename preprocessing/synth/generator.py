"""``raybench synth``: write a synthetic MIMIC-IV v2.2 + MIMIC-CXR-JPG v2.0.0 tree.

Layout of ``out``::

    mimic-iv/hosp/{patients,admissions,diagnoses_icd,labevents,d_labitems}.csv.gz
    mimic-iv/icu/{icustays,chartevents,d_items}.csv.gz
    mimic-cxr-jpg/mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz
    mimic-cxr-jpg/files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
    synthetic_truth.csv.gz      hidden per-stay latent variables (for tests and docs only)
    synthetic_manifest.json     seed, sizes, counts

Same arguments, same bytes: every draw comes from one seeded generator, gzip headers carry
no timestamp and every JPEG is rendered from its own seed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from preprocessing import schemas as S
from preprocessing.synth.cohort import make_cohort
from preprocessing.synth.cxr import cxr_tables
from preprocessing.synth.diagnoses import diagnoses_rows
from preprocessing.synth.ehr import chart_rows, lab_rows
from preprocessing.synth.render import render
from preprocessing.variables import VARIABLES
from raybench.disk import writing
from raybench.errors import RaybenchError
from raybench.ownership import claim

MIMIC_IV_DIR = "mimic-iv"
MIMIC_CXR_DIR = "mimic-cxr-jpg"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthConfig:
    """Arguments of one generator run."""

    out: Path
    patients: int = 200
    seed: int = 0
    image_size: int = 512


def write_table(frame: pd.DataFrame, schema: S.TableSchema, root: Path) -> Path:
    """Write ``frame`` as ``root/schema.relpath`` with the declared columns, deterministically."""
    missing = [c for c in schema.column_names if c not in frame.columns]
    if missing:
        raise ValueError(f"{schema.name}: generator produced no column(s) {missing}")
    path = root / schema.relpath
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[schema.column_names].to_csv(
            tmp,
            index=False,
            date_format="%Y-%m-%d %H:%M:%S",
            compression={"method": "gzip", "compresslevel": 3, "mtime": 0},
        )
        os.replace(tmp, path)
    return path


def _d_items() -> pd.DataFrame:
    rows = []
    for var in VARIABLES:
        for itemid in var.chart_itemids:
            rows.append({
                "itemid": itemid, "label": f"{var.name.replace('_', ' ').title()} ({itemid})",
                "abbreviation": var.name, "linksto": "chartevents",
                "category": "Routine Vital Signs",
                "unitname": var.unit or None, "param_type": "Numeric" if var.kind == "continuous"
                else "Text", "lownormalvalue": None, "highnormalvalue": None,
            })
    return pd.DataFrame(rows)


def _d_labitems() -> pd.DataFrame:
    return pd.DataFrame({
        "itemid": [50809, 50820, 50931, 50817],
        "label": ["Glucose", "pH", "Glucose", "Oxygen Saturation"],
        "fluid": ["Blood", "Blood", "Blood", "Blood"],
        "category": ["Blood Gas", "Blood Gas", "Chemistry", "Blood Gas"],
    })


def _check_out(out: Path) -> None:
    """Claim ``out`` (new, empty or an earlier synthetic tree); proves it is writable."""
    try:
        with writing(out):
            claim(out, "synthetic")
    except OSError as exc:
        raise RaybenchError(f"cannot write to output directory {out}: {exc.strerror}") from None


def _write_images(images: pd.DataFrame, cxr_root: Path, size: int, progress) -> None:
    labels = list(S.CHEXPERT_LABELS)
    findings = images[labels].to_numpy()
    task = progress.add_task("rendering CXR JPEGs", total=len(images)) if progress else None
    for i, row in enumerate(images[["dicom_id", "subject_id", "study_id", "ViewPosition",
                                    "seed"]].itertuples(index=False)):
        dicom_id, subject_id, study_id, view, seed = row
        path = cxr_root / S.cxr_image_relpath(subject_id, study_id, dicom_id)
        pixels = render(dict(zip(labels, findings[i], strict=True)), view, int(seed), size)
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, format="JPEG", quality=JPEG_QUALITY)
        if progress:
            progress.advance(task)


def generate(config: SynthConfig, progress=None) -> dict:
    """Generate the synthetic tree; returns the manifest dictionary (also written to disk)."""
    if config.patients < 1:
        raise RaybenchError(f"--patients must be at least 1, got {config.patients}")
    if not 32 <= config.image_size <= 4096:
        raise RaybenchError(f"--image-size must be between 32 and 4096 px, got {config.image_size}")
    out = Path(config.out)
    _check_out(out)
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    cohort = make_cohort(rng, config.patients)
    chart = chart_rows(rng, cohort.stays)
    labs = lab_rows(rng, cohort.stays)
    diagnoses = diagnoses_rows(rng, cohort.admissions, cohort.coded)
    metadata, chexpert, split, images = cxr_tables(
        rng, cohort.stays, cohort.patients, cohort.admissions, config.image_size
    )

    iv, cxr = out / MIMIC_IV_DIR, out / MIMIC_CXR_DIR
    for frame, schema in (
        (cohort.patients, S.PATIENTS), (cohort.admissions, S.ADMISSIONS),
        (diagnoses, S.DIAGNOSES_ICD), (_d_labitems(), S.D_LABITEMS), (labs, S.LABEVENTS),
        (cohort.icustays, S.ICUSTAYS), (_d_items(), S.D_ITEMS), (chart, S.CHARTEVENTS),
    ):
        write_table(frame, schema, iv)
    for frame, schema in ((metadata, S.CXR_METADATA), (chexpert, S.CXR_CHEXPERT),
                          (split, S.CXR_SPLIT)):
        write_table(frame, schema, cxr)
    _write_images(images, cxr, config.image_size, progress)
    truth = cohort.stays.drop(columns=["intime", "outtime"])
    with writing(out / "synthetic_truth.csv.gz"):
        truth.to_csv(out / "synthetic_truth.csv.gz", index=False,
                     compression={"method": "gzip", "mtime": 0})

    manifest = {
        "generator": "raybench synth",
        "seed": config.seed,
        "patients": config.patients,
        "image_size": config.image_size,
        "counts": {
            "admissions": len(cohort.admissions),
            "icu_stays": len(cohort.icustays),
            "chartevents": len(chart),
            "labevents": len(labs),
            "diagnoses": len(diagnoses),
            "cxr_studies": int(metadata["study_id"].nunique()),
            "cxr_images": len(metadata),
        },
    }
    with writing(out / "synthetic_manifest.json"):
        (out / "synthetic_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    return manifest
