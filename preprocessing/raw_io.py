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


def _first_bad_value(path: Path, frame: pd.DataFrame, columns: list[str],
                     schema: S.TableSchema) -> str | None:
    """``column C, line L: 'value'`` of the first value that does not parse as declared."""
    for column in columns:
        text = frame[column]
        declared = schema.columns[column]
        if column in schema.datetime_columns:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
            expected = "a date-time YYYY-MM-DD HH:MM:SS"
        elif declared.startswith(("int", "float")):
            parsed = pd.to_numeric(text, errors="coerce")
            expected = "an integer" if declared.startswith("int") else "a number"
            if declared.startswith("int"):
                parsed = parsed.where(text.notna() & (parsed % 1 == 0))  # NA in int columns too
                text = text.fillna("")
        else:
            continue
        bad = text.notna() & parsed.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = str(text.iloc[row])[:40]
            return (f"{path}: column {column}, line {row + 2} (data row {row + 1}): cannot "
                    f"parse {value!r} as {expected}")
    return None


def read_table(path: Path, schema: S.TableSchema, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read the named columns of a small/medium table with declared dtypes and parsed dates.

    A value that does not parse (a date-time, an integer) raises :class:`RaybenchError`
    naming the file, the column and the line.
    """
    try:
        text = pd.read_csv(path, usecols=list(columns), dtype=str, keep_default_na=True)
    except (ValueError, OSError) as exc:
        raise RaybenchError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None
    problem = _first_bad_value(path, text, list(columns), schema)
    if problem:
        raise RaybenchError(problem)
    frame = pd.DataFrame(index=text.index)
    for column in columns:
        declared = schema.columns[column]
        if column in schema.datetime_columns:
            frame[column] = pd.to_datetime(text[column], format="ISO8601")
        elif declared.startswith("int"):
            frame[column] = pd.to_numeric(text[column]).astype(declared)
        elif declared.startswith("float"):
            frame[column] = pd.to_numeric(text[column]).astype(declared)
        else:
            frame[column] = text[column].astype(declared)
    return frame


def read_keyed_table(path: Path, schema: S.TableSchema, columns: tuple[str, ...],
                     key: str) -> tuple[pd.DataFrame, int]:
    """:func:`read_table`, then exact duplicate rows dropped (and counted) and rows that
    share ``key`` with different values refused.

    Returns ``(frame, exact duplicates dropped)``. A conflicting duplicate raises
    :class:`RaybenchError` naming the file, the key column, how many keys conflict and the
    line of the first one (values are not shown: they are identifiers).
    """
    frame = read_table(path, schema, columns)
    exact = frame.duplicated(keep="first")
    frame = frame[~exact]
    conflicting = frame[key].duplicated(keep=False)
    if conflicting.any():
        n_keys = int(frame.loc[conflicting, key].nunique())
        line = int(frame.index[conflicting.to_numpy()][0]) + 2
        raise RaybenchError(
            f"{path}: {n_keys} {key} value(s) appear on several rows with different values "
            f"(first at line {line}); raybench cannot tell which row is right. Exact duplicate "
            "rows are dropped and counted, conflicting ones must be fixed in the table")
    return frame.reset_index(drop=True), int(exact.sum())


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
