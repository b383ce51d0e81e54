"""The 25 benchmark phenotypes (HCUP CCS 2015 groups) and ICD-code -> phenotype labelling.

Membership is exact: an ICD-9 code belongs to a phenotype when the HCUP CCS 2015 list of
that phenotype holds it; an ICD-10 code when the CMS 2018 GEM route maps it there (the
resource ``preprocessing/resources/phenotypes.yaml`` is generated from both sources by
``scripts/build_phenotype_resource.py``; its rules are in :mod:`preprocessing.phenotype_sources`).
Codes are compared without dots, upper case, surrounding blanks removed.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from preprocessing.phenotype_sources import MIN_PARENT_LENGTH

TOP_UNKNOWN = 20


@dataclass(frozen=True)
class Phenotype:
    """One phenotype with its exact ICD-9 and ICD-10 code lists."""

    name: str
    type: str
    ccs_id: int
    icd9: tuple[str, ...]
    icd10: tuple[str, ...]
    icd10_parents: tuple[str, ...] = ()


def _resource_bytes(name: str) -> bytes:
    return resources.files("preprocessing.resources").joinpath(name).read_bytes()


@cache
def load_phenotypes(path: str | None = None) -> tuple[Phenotype, ...]:
    """Read phenotype definitions (the shipped resource unless ``path`` is given)."""
    if path is None:
        text = _resource_bytes("phenotypes.yaml").decode("utf-8")
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    raw = yaml.safe_load(text)
    return tuple(
        Phenotype(name=g["name"], type=g["type"], ccs_id=int(g.get("ccs_id", 0)),
                  icd9=tuple(str(c) for c in g.get("icd9", [])),
                  icd10=tuple(str(c) for c in g.get("icd10", [])),
                  icd10_parents=tuple(str(c) for c in g.get("icd10_parents", [])))
        for g in raw["phenotypes"]
    )


def phenotype_names() -> list[str]:
    """The 25 phenotype names in their fixed label order."""
    return [p.name for p in load_phenotypes()]


def resource_digest() -> str:
    """sha256 of the shipped resource files (part of the cohort stage's cache key)."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("phenotypes.yaml", "icd_known_codes.txt.gz"):
        digest.update(_resource_bytes(name))
    return digest.hexdigest()[:16]


@cache
def known_codes() -> dict[int, frozenset[str]]:
    """Codes the sources know, per ICD version (ICD-10: GEM codes and their parents)."""
    known: dict[int, set[str]] = {9: set(), 10: set()}
    text = gzip.decompress(_resource_bytes("icd_known_codes.txt.gz")).decode("ascii")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        version, category, *suffixes = line.split()
        for suffix in suffixes:
            known[int(version)].add(category + ("" if suffix == "." else suffix))
    parents = {code[:end] for code in known[10] for end in range(MIN_PARENT_LENGTH, len(code))}
    known[10] |= parents
    return {v: frozenset(codes) for v, codes in known.items()}


@cache
def code_table(path: str | None = None) -> pd.DataFrame:
    """One row per mapped (icd_version, icd_code), one uint8 column per phenotype."""
    groups = load_phenotypes(path)
    rows = []
    for j, group in enumerate(groups):
        rows += [(9, code, j) for code in group.icd9]
        rows += [(10, code, j) for code in (*group.icd10, *group.icd10_parents)]
    pairs = pd.DataFrame(rows, columns=["icd_version", "icd_code", "group"])
    hits = np.zeros((len(pairs), len(groups)), dtype=np.uint8)
    hits[np.arange(len(pairs)), pairs["group"].to_numpy()] = 1
    table = pd.concat([pairs[["icd_version", "icd_code"]],
                       pd.DataFrame(hits, columns=[g.name for g in groups])], axis=1)
    return table.groupby(["icd_version", "icd_code"], as_index=False).max()


def normalise_codes(diagnoses: pd.DataFrame) -> pd.DataFrame:
    """hadm_id, icd_code (no dots, upper case, stripped), icd_version (int; -1 if unreadable)."""
    codes = diagnoses[["hadm_id", "icd_code", "icd_version"]].dropna(subset=["icd_code"])
    code = codes["icd_code"].astype(str).str.strip().str.replace(".", "", regex=False).str.upper()
    version = pd.to_numeric(codes["icd_version"], errors="coerce").fillna(-1).astype(np.int64)
    return pd.DataFrame({"hadm_id": codes["hadm_id"].to_numpy(), "icd_code": code.to_numpy(),
                         "icd_version": version.to_numpy()})


def label_admissions(
    diagnoses: pd.DataFrame, hadm_ids: np.ndarray, definitions_path: str | None = None
) -> pd.DataFrame:
    """Multi-hot phenotype labels per admission from ``diagnoses_icd`` rows (exact codes).

    Returns:
        A frame indexed by ``hadm_id`` (all of ``hadm_ids``), one uint8 column per phenotype.
    """
    table = code_table(definitions_path)
    names = [c for c in table.columns if c not in ("icd_version", "icd_code")]
    codes = normalise_codes(diagnoses)
    merged = codes.merge(table, on=["icd_version", "icd_code"], how="inner")
    per_adm = merged.groupby("hadm_id")[names].max()
    labels = per_adm.reindex(pd.Index(hadm_ids, name="hadm_id"), fill_value=0)
    return labels.fillna(0).astype(np.uint8)


def coding_summary(diagnoses: pd.DataFrame, hadm_ids: np.ndarray) -> dict:
    """How the diagnosis rows of the given admissions were resolved (for the manifest).

    Per ICD version: rows, rows mapped to a phenotype, rows with a known code outside the 25
    phenotypes, rows with an unknown code; plus the most frequent unknown codes (codes are
    not identifiers, so listing them is safe).
    """
    codes = normalise_codes(diagnoses)
    codes = codes[codes["hadm_id"].isin(hadm_ids)]
    table = code_table()
    mapped = pd.MultiIndex.from_frame(table[["icd_version", "icd_code"]])
    key = pd.MultiIndex.from_frame(codes[["icd_version", "icd_code"]])
    is_mapped = key.isin(mapped)
    known = known_codes()
    distinct = key.unique()
    known_distinct = [code in known.get(int(v), ()) for v, code in distinct]
    is_known = pd.Series(known_distinct, index=distinct, dtype=bool).reindex(key).to_numpy()
    is_known = is_known | is_mapped
    summary: dict = {"rows": int(len(codes)), "by_version": {}}
    for version in sorted(set(codes["icd_version"].tolist())):
        sel = (codes["icd_version"] == version).to_numpy()
        summary["by_version"][str(version)] = {
            "rows": int(sel.sum()), "mapped": int((sel & is_mapped).sum()),
            "known_not_in_phenotypes": int((sel & is_known & ~is_mapped).sum()),
            "unknown": int((sel & ~is_known).sum()),
        }
    unknown = codes[~is_known]
    counts = unknown.groupby(["icd_version", "icd_code"]).size().sort_values(ascending=False,
                                                                              kind="stable")
    summary["unknown_distinct_codes"] = int(len(counts))
    summary["unknown_most_frequent"] = [
        {"icd_version": int(v), "icd_code": c, "rows": int(n)}
        for (v, c), n in counts.head(TOP_UNKNOWN).items()]
    return summary
