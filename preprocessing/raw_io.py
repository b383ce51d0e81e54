"""Reading raw MIMIC tables: presence and column checks, then typed, filtered reads.

Large event tables are streamed with pyarrow and filtered batch by batch (itemid, id sets),
so real MIMIC-IV chartevents (hundreds of millions of rows) never sits in memory whole.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from preprocessing import schemas as S
from raybench.errors import RaybenchError

# Columns preprocessing actually uses, per table (a file may have more).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("subject_id", "gender", "anchor_age", "anchor_year"),
    "admissions": ("subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                   "admission_type", "insurance", "race"),
    "diagnoses_icd": ("hadm_id", "icd_code", "icd_version"),
    "labevents": ("subject_id", "hadm_id", "itemid", "charttime", "valuenum"),
    "icustays": ("subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit",
                 "intime", "outtime"),
    "chartevents": ("stay_id", "charttime", "itemid", "value", "valuenum"),
    "cxr_metadata": ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate",
                     "StudyTime"),
    "cxr_chexpert": ("study_id", *S.CHEXPERT_LABELS),
}
NEEDED_IV = (S.PATIENTS, S.ADMISSIONS, S.DIAGNOSES_ICD, S.LABEVENTS, S.ICUSTAYS, S.CHARTEVENTS)
NEEDED_CXR = (S.CXR_METADATA, S.CXR_CHEXPERT)


def _locate(root: Path, schema: S.TableSchema) -> Path | None:
    """The table's file below root, accepting an uncompressed .csv as well."""
    gz = root / schema.relpath
    if gz.is_file():
        return gz
    plain = root / schema.relpath.removesuffix(".gz")
    return plain if plain.is_file() else None


def _header(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            return handle.readline().strip().split(",")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise RaybenchError(f"{path}: cannot read the header line ({exc})") from None


def check_inputs(mimic_iv: Path, mimic_cxr: Path) -> dict[str, Path]:
    """Find every needed file and check its columns; one error lists every problem."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for root, tables in ((Path(mimic_iv), NEEDED_IV), (Path(mimic_cxr), NEEDED_CXR)):
        for schema in tables:
            path = _locate(root, schema)
            if path is None:
                missing.append(str(root / schema.relpath))
            else:
                found[schema.name] = path
    if missing:
        raise RaybenchError("missing input file(s): " + ", ".join(missing))
    bad = []
    for name, path in found.items():
        absent = [c for c in REQUIRED_COLUMNS[name] if c not in _header(path)]
        if absent:
            bad.append(f"{path} lacks column(s) {', '.join(absent)}")
    if bad:
        raise RaybenchError("wrong columns: " + "; ".join(bad))
    return found


def read_table(path: Path, schema: S.TableSchema, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read the named columns of a small/medium table with declared dtypes and parsed dates."""
    dtypes = {c: schema.columns[c] for c in columns if not schema.columns[c].startswith("date")}
    dates = [c for c in columns if c in schema.datetime_columns]
    try:
        frame = pd.read_csv(path, usecols=list(columns), dtype=dtypes, parse_dates=dates)
    except (ValueError, TypeError) as exc:
        raise RaybenchError(f"{path}: values do not match the declared column types ({exc})") \
            from None
    return frame


def stream_events(
    path: Path,
    columns: dict[str, pa.DataType],
    itemids: list[int],
    id_column: str,
    ids: np.ndarray,
    block_size: int = 1 << 24,
) -> pa.Table:
    """Stream a large event CSV, keeping rows whose itemid and id are wanted."""
    convert = pacsv.ConvertOptions(column_types=columns, include_columns=list(columns),
                                   timestamp_parsers=["%Y-%m-%d %H:%M:%S"])
    read = pacsv.ReadOptions(block_size=block_size)
    wanted_items = pa.array(itemids, pa.int64())
    wanted_ids = pa.array(np.asarray(ids, dtype=np.int64))
    kept = []
    try:
        reader = pacsv.open_csv(path, read_options=read, convert_options=convert)
        for batch in reader:
            mask = pc.and_(pc.is_in(batch["itemid"], wanted_items),
                           pc.is_in(batch[id_column], wanted_ids))
            if pc.any(mask).as_py():
                kept.append(pa.Table.from_batches([batch]).filter(mask))
    except (pa.ArrowInvalid, OSError) as exc:
        raise RaybenchError(f"{path}: cannot parse ({exc})") from None
    if not kept:
        return pa.table({name: pa.array([], type=t) for name, t in columns.items()})
    return pa.concat_tables(kept)
