"""Phenotype definitions (25 CCS groups) and ICD-code -> phenotype labelling."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import yaml


@dataclass(frozen=True)
class Phenotype:
    """One phenotype group with its ICD-9 and ICD-10 code prefixes."""

    name: str
    type: str
    icd9: tuple[str, ...]
    icd10: tuple[str, ...]


@cache
def load_phenotypes(path: str | None = None) -> tuple[Phenotype, ...]:
    """Read phenotype definitions (the shipped file unless ``path`` is given)."""
    if path is None:
        text = resources.files("preprocessing.resources").joinpath("phenotypes.yaml").read_text()
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    raw = yaml.safe_load(text)
    groups = tuple(
        Phenotype(
            name=g["name"],
            type=g["type"],
            icd9=tuple(str(c) for c in g.get("icd9", [])),
            icd10=tuple(str(c) for c in g.get("icd10", [])),
        )
        for g in raw["phenotypes"]
    )
    return groups


def phenotype_names() -> list[str]:
    """The 25 phenotype names in their fixed label order."""
    return [p.name for p in load_phenotypes()]


def label_admissions(
    diagnoses: pd.DataFrame, hadm_ids: np.ndarray, definitions_path: str | None = None
) -> pd.DataFrame:
    """Multi-hot phenotype labels per admission from ``diagnoses_icd`` rows.

    Vectorised over codes: each distinct (code, version) pair is matched against the prefixes
    once, then joined back onto the diagnosis rows.

    Returns:
        A frame indexed by ``hadm_id`` (all of ``hadm_ids``), one uint8 column per phenotype.
    """
    groups = load_phenotypes(definitions_path)
    codes = diagnoses[["hadm_id", "icd_code", "icd_version"]].dropna()
    codes = codes.assign(icd_code=codes["icd_code"].astype(str).str.replace(".", "", regex=False))
    distinct = codes[["icd_code", "icd_version"]].drop_duplicates().reset_index(drop=True)
    names = [g.name for g in groups]
    hits = np.zeros((len(distinct), len(groups)), dtype=np.uint8)
    for j, group in enumerate(groups):
        for version, prefixes in ((9, group.icd9), (10, group.icd10)):
            if not prefixes:
                continue
            is_version = distinct["icd_version"].astype(int).to_numpy() == version
            starts = distinct["icd_code"].str.startswith(prefixes).to_numpy()
            hits[:, j] |= (is_version & starts).astype(np.uint8)
    code_hits = pd.concat([distinct, pd.DataFrame(hits, columns=names)], axis=1)
    merged = codes.merge(code_hits, on=["icd_code", "icd_version"], how="left")
    per_adm = merged.groupby("hadm_id")[names].max()
    labels = per_adm.reindex(pd.Index(hadm_ids, name="hadm_id"), fill_value=0)
    return labels.fillna(0).astype(np.uint8)
