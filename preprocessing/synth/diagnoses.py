"""Synthetic ``hosp/diagnoses_icd``: codes for each coded phenotype plus unrelated codes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from preprocessing.phenotypes import load_phenotypes

# Frequent MIMIC codes that belong to none of the 25 phenotypes.
UNMAPPED_ICD9 = ("V5861", "V1582", "53081", "3051", "311", "V4986", "2724X", "E8497", "V5867")
UNMAPPED_ICD10 = ("Z7901", "Z87891", "K219", "F329", "Z794", "F17210", "Z66", "E039", "G4733")


def _complete(prefix: str, version: int, digit: int) -> str:
    """Turn a prefix into a plausible full code (3-digit ICD-9 codes get a 4th digit)."""
    if version == 9 and len(prefix) == 3 and not prefix.startswith(("V", "E")):
        return f"{prefix}{digit}"
    if version == 10 and len(prefix) == 3:
        return f"{prefix}{digit}"
    return prefix


def diagnoses_rows(
    rng: np.random.Generator, admissions: pd.DataFrame, coded: pd.DataFrame
) -> pd.DataFrame:
    """One row per (admission, code); ICD version drawn per admission (40 % ICD-9)."""
    groups = load_phenotypes()
    n_a = len(admissions)
    version = np.where(rng.random(n_a) < 0.4, 9, 10)
    coded_values = coded.to_numpy().astype(bool)
    adm_idx, pheno_idx = np.nonzero(coded_values)
    codes = []
    for a, p in zip(adm_idx, pheno_idx, strict=True):
        prefixes = groups[p].icd9 if version[a] == 9 else groups[p].icd10
        prefix = prefixes[rng.integers(0, len(prefixes))]
        codes.append(_complete(prefix, version[a], int(rng.integers(0, 10))))
    n_other = rng.integers(2, 9, n_a)
    other_adm = np.repeat(np.arange(n_a), n_other)
    pool9, pool10 = np.array(UNMAPPED_ICD9), np.array(UNMAPPED_ICD10)
    pick = rng.integers(0, len(pool9), len(other_adm))
    other_codes = np.where(version[other_adm] == 9, pool9[pick], pool10[pick])
    all_adm = np.concatenate([adm_idx, other_adm])
    all_codes = np.concatenate([np.array(codes, dtype=object), other_codes.astype(object)])
    shuffle = rng.permutation(len(all_adm))
    all_adm, all_codes = all_adm[shuffle], all_codes[shuffle]
    order = np.argsort(all_adm, kind="stable")
    all_adm, all_codes = all_adm[order], all_codes[order]
    frame = pd.DataFrame({
        "subject_id": admissions["subject_id"].to_numpy()[all_adm],
        "hadm_id": admissions["hadm_id"].to_numpy()[all_adm],
        "icd_code": all_codes,
        "icd_version": version[all_adm],
    })
    frame = frame.drop_duplicates(["hadm_id", "icd_code"]).reset_index(drop=True)
    frame.insert(2, "seq_num", frame.groupby("hadm_id").cumcount() + 1)
    return frame
