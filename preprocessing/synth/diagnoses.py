"""Synthetic ``hosp/diagnoses_icd``: codes for each coded phenotype plus unrelated codes.

Codes are drawn from the phenotype resource's exact lists (ICD-9: HCUP CCS 2015; ICD-10:
the CMS 2018 GEM route). Half the time an ICD-10 phenotype gets its most common MIMIC-IV
code, several of which only the GEM route maps (the anchors' hand-made ICD-10 lists miss
E1122, J9601, I480, R571 and E780). A few admissions carry codes newer than the 2018 GEM,
which preprocessing must count as unknown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from preprocessing.phenotypes import load_phenotypes

# Frequent MIMIC codes that belong to none of the 25 phenotypes.
UNMAPPED_ICD9 = ("V5861", "V1582", "53081", "3051", "311", "V4986", "2859", "E8497", "V5867")
UNMAPPED_ICD10 = ("Z7901", "Z87891", "K219", "F329", "Z794", "F17210", "Z66", "E039", "G4733")
# Valid ICD-10-CM codes added after the 2018 GEM (COVID-19 in FY2020, Z11.52 in FY2021).
UNKNOWN_ICD10 = ("U071", "Z1152")
UNKNOWN_SHARE = 0.03
# Phenotype (label order) -> a common MIMIC-IV ICD-10 code of it.
COMMON_ICD10 = {
    "Acute and unspecified renal failure": "N179",
    "Cardiac dysrhythmias": "I480",
    "Coronary atherosclerosis and other heart disease": "I2510",
    "Diabetes mellitus with complications": "E1122",
    "Diabetes mellitus without complication": "E119",
    "Disorders of lipid metabolism": "E780",
    "Essential hypertension": "I10",
    "Respiratory failure; insufficiency; arrest (adult)": "J9601",
    "Septicemia (except in labor)": "A419",
    "Shock": "R571",
}


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
        group = groups[p]
        pool = group.icd9 if version[a] == 9 else group.icd10
        code = pool[rng.integers(0, len(pool))]
        if version[a] == 10 and group.name in COMMON_ICD10 and rng.random() < 0.5:
            code = COMMON_ICD10[group.name]
        codes.append(code)
    n_other = rng.integers(2, 9, n_a)
    other_adm = np.repeat(np.arange(n_a), n_other)
    pool9, pool10 = np.array(UNMAPPED_ICD9), np.array(UNMAPPED_ICD10)
    pick = rng.integers(0, len(pool9), len(other_adm))
    other_codes = np.where(version[other_adm] == 9, pool9[pick], pool10[pick])
    unknown_adm = np.flatnonzero((version == 10) & (rng.random(n_a) < UNKNOWN_SHARE))
    unknown_codes = np.array(UNKNOWN_ICD10)[rng.integers(0, len(UNKNOWN_ICD10),
                                                         len(unknown_adm))]
    all_adm = np.concatenate([adm_idx, other_adm, unknown_adm])
    all_codes = np.concatenate([np.array(codes, dtype=object), other_codes.astype(object),
                                unknown_codes.astype(object)])
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
