"""Synthetic patients, admissions and ICU stays with the latent variables that drive the rest.

Every random draw comes from one ``numpy.random.Generator`` passed in by the caller, in a fixed
order, so the same seed gives the same tables. See ``docs/synthetic_data.md`` for the planted
signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from preprocessing.phenotypes import phenotype_names

RACES = (
    ("WHITE", 0.60),
    ("WHITE - OTHER EUROPEAN", 0.02),
    ("BLACK/AFRICAN AMERICAN", 0.10),
    ("BLACK/CAPE VERDEAN", 0.01),
    ("HISPANIC OR LATINO", 0.02),
    ("HISPANIC/LATINO - PUERTO RICAN", 0.02),
    ("ASIAN", 0.02),
    ("ASIAN - CHINESE", 0.01),
    ("OTHER", 0.04),
    ("UNKNOWN", 0.08),
    ("UNABLE TO OBTAIN", 0.02),
    ("PATIENT DECLINED TO ANSWER", 0.01),
    ("AMERICAN INDIAN/ALASKA NATIVE", 0.02),
    ("NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", 0.01),
    ("MULTIPLE RACE/ETHNICITY", 0.02),
)
ADMISSION_TYPES = (
    ("EW EMER.", 0.45),
    ("URGENT", 0.15),
    ("SURGICAL SAME DAY ADMISSION", 0.10),
    ("OBSERVATION ADMIT", 0.10),
    ("ELECTIVE", 0.05),
    ("DIRECT EMER.", 0.05),
    ("EU OBSERVATION", 0.05),
    ("DIRECT OBSERVATION", 0.05),
)
CAREUNITS = (
    "Medical Intensive Care Unit (MICU)",
    "Surgical Intensive Care Unit (SICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)",
    "Medical/Surgical Intensive Care Unit (MICU/SICU)",
    "Coronary Care Unit (CCU)",
    "Trauma SICU (TSICU)",
    "Neuro Surgical Intensive Care Unit (Neuro SICU)",
)
LATE_DEATH_HOURS = 489.6  # the planted late ICU death (hours after intime)
YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")

# Phenotype short keys, in the order of preprocessing/resources/phenotypes.yaml.
PHENO_KEYS = (
    "aki", "cvd", "ami", "dysrhythmia", "ckd", "copd", "complications", "conduction", "chf",
    "cad", "dm_comp", "dm", "lipid", "htn", "fluid", "gi_bleed", "htn_comp", "liver",
    "lower_resp", "upper_resp", "pleurisy", "pneumonia", "resp_failure", "sepsis", "shock",
)
CHRONIC_PREVALENCE = {
    "dysrhythmia": 0.28, "ckd": 0.14, "copd": 0.13, "conduction": 0.07, "cad": 0.28,
    "dm_comp": 0.10, "dm": 0.18, "lipid": 0.35, "htn": 0.40, "htn_comp": 0.12,
}
# acute phenotype -> (intercept, weight on severity) of a logistic model
ACUTE_LOGITS = {
    "aki": (-1.4, 0.6), "cvd": (-2.8, 0.2), "ami": (-2.6, 0.3), "complications": (-1.8, 0.2),
    "chf": (-1.5, 0.3), "fluid": (-0.8, 0.4), "gi_bleed": (-2.6, 0.2), "liver": (-2.4, 0.3),
    "lower_resp": (-2.2, 0.2), "upper_resp": (-3.5, 0.0), "pleurisy": (-2.4, 0.3),
    "pneumonia": (-1.6, 0.4), "resp_failure": (-1.6, 0.9), "sepsis": (-2.0, 0.9),
    "shock": (-2.6, 1.1),
}
# Probability that a true phenotype is *not* coded, by race group: planted label noise.
MISS_CODE_RATE = {"WHITE": 0.05, "BLACK": 0.22, "HISPANIC": 0.15, "ASIAN": 0.10, "OTHER": 0.10}


def race_group(race: pd.Series | np.ndarray) -> np.ndarray:
    """CareBench's five race groups from MIMIC-IV ``race`` strings."""
    race = pd.Series(np.asarray(race, dtype=object)).fillna("").astype(str)
    out = np.full(len(race), "OTHER", dtype=object)
    out[race.str.startswith("WHITE").to_numpy()] = "WHITE"
    out[race.str.startswith("BLACK").to_numpy()] = "BLACK"
    out[race.str.startswith("HISPANIC").to_numpy()] = "HISPANIC"
    out[race.str.startswith("ASIAN").to_numpy()] = "ASIAN"
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _choice(rng: np.random.Generator, table: tuple[tuple[str, float], ...], n: int) -> np.ndarray:
    names = np.array([name for name, _ in table], dtype=object)
    probs = np.array([p for _, p in table])
    return names[rng.choice(len(names), size=n, p=probs / probs.sum())]


def _unique_ids(rng: np.random.Generator, n: int, base: int, span: int) -> np.ndarray:
    return base + np.sort(rng.choice(span, size=n, replace=False)).astype(np.int64)


@dataclass
class Cohort:
    """The generated hospital population: raw tables plus the hidden truth behind them."""

    patients: pd.DataFrame
    admissions: pd.DataFrame
    icustays: pd.DataFrame
    stays: pd.DataFrame  # one row per ICU stay with latent variables (hidden truth)
    conditions: pd.DataFrame  # true phenotypes per admission (hadm_id index, PHENO_KEYS columns)
    coded: pd.DataFrame  # phenotypes as coded (after planted label noise)


def make_cohort(rng: np.random.Generator, n_patients: int) -> Cohort:
    """Draw patients, admissions, ICU stays, latent severity, outcomes and conditions."""
    n = n_patients
    subject_id = _unique_ids(rng, n, 10_000_000, 9_000_000)
    gender = np.where(rng.random(n) < 0.55, "M", "F")
    age = np.clip(rng.normal(64, 17, n), 18, 91).round().astype(np.int64)
    minors = rng.random(n) < 0.01
    age[minors] = rng.integers(15, 18, minors.sum())
    anchor_year = rng.integers(2110, 2190, n)
    year_group = np.array(YEAR_GROUPS, dtype=object)[rng.integers(0, len(YEAR_GROUPS), n)]
    race = _choice(rng, RACES, n)
    insurance = np.where(
        age >= 65,
        np.where(rng.random(n) < 0.85, "Medicare", "Other"),
        np.where(rng.random(n) < 0.25, "Medicaid", "Other"),
    ).astype(object)
    chronic = {k: rng.random(n) < p * (1 + 0.5 * (age - 64) / 17).clip(0.3, 2.0)
               for k, p in CHRONIC_PREVALENCE.items()}
    chronic["htn_comp"] |= chronic["ckd"] & (rng.random(n) < 0.5)
    chronic["dm"] &= ~chronic["dm_comp"]
    frailty = rng.normal(0, 0.5, n)

    # Admissions: 1 + Poisson(0.25), capped at 4.
    n_adm = np.minimum(1 + rng.poisson(0.25, n), 4)
    pat_of_adm = np.repeat(np.arange(n), n_adm)
    n_a = len(pat_of_adm)
    hadm_id = _unique_ids(rng, n_a, 20_000_000, 9_000_000)
    first_adm = pd.Timestamp(2100, 1, 1) + pd.to_timedelta(
        (anchor_year - 2100) * 365.25 + rng.uniform(0, 300, n), unit="D"
    )
    gaps = rng.uniform(40, 400, n_a)
    order = np.arange(n_a) - np.repeat(np.cumsum(n_adm) - n_adm, n_adm)
    gap_cum = pd.Series(np.where(order == 0, 0.0, gaps)).groupby(pat_of_adm).cumsum().to_numpy()
    admittime = (
        first_adm.to_numpy()[pat_of_adm] + pd.to_timedelta(gap_cum, unit="D").to_numpy()
    )
    admittime = pd.DatetimeIndex(admittime).floor("min")
    adm_type = _choice(rng, ADMISSION_TYPES, n_a)
    pre_icu_h = rng.uniform(1, 36, n_a)

    # ICU stays per admission: 0 (4 %), 1 (90 %), 2 (6 %).
    n_stay = rng.choice([0, 1, 2], size=n_a, p=[0.04, 0.90, 0.06])
    adm_of_stay = np.repeat(np.arange(n_a), n_stay)
    n_s = len(adm_of_stay)
    pat_of_stay = pat_of_adm[adm_of_stay]
    stay_id = _unique_ids(rng, n_s, 30_000_000, 9_000_000)
    stay_order = np.arange(n_s) - np.repeat(np.cumsum(n_stay) - n_stay, n_stay)
    last_of_adm = stay_order == (n_stay[adm_of_stay] - 1)

    severity = (
        rng.normal(0, 1, n_s) + frailty[pat_of_stay] + 0.25 * (age[pat_of_stay] - 64) / 17
    )
    los_days = np.exp(rng.normal(np.log(2.3) + 0.35 * severity, 0.65)).clip(0.25, 40)
    p_death = _sigmoid(-2.7 + 1.2 * severity)
    dies = (rng.random(n_s) < p_death) & last_of_adm
    dies_in_icu = dies & (rng.random(n_s) < 0.75)
    adult_stay = age[pat_of_stay] >= 18
    # Planted: one stay longer than max_hours (336 h) that dies in the ICU at hour ~489.6.
    single = last_of_adm & (stay_order == 0) & adult_stay
    long_stay = int(np.flatnonzero(single)[0]) if single.any() else -1
    if long_stay >= 0:
        los_days[long_stay] = LATE_DEATH_HOURS / 24
        dies[long_stay] = dies_in_icu[long_stay] = True
    # Planted: one stay without any chart or lab event (mimic3-benchmarks drops such stays).
    no_ehr = np.zeros(n_s, dtype=bool)
    candidates = np.flatnonzero(single)
    if len(candidates) > 1:
        no_ehr[candidates[1]] = True
    planted = np.flatnonzero(no_ehr | (np.arange(n_s) == long_stay))

    # Place stays in their admission: pre-ICU delay, then stays separated by 1-3 days.
    offset_h = np.zeros(n_s)
    cursor = pre_icu_h[adm_of_stay].copy()
    for k in range(2):  # at most two stays per admission
        sel = stay_order == k
        offset_h[sel] = cursor[sel]
        nxt = np.flatnonzero(sel) + 1
        nxt = nxt[nxt < n_s]
        nxt = nxt[stay_order[nxt] == k + 1]
        cursor[nxt] = offset_h[nxt - 1] + los_days[nxt - 1] * 24 + rng.uniform(24, 72, len(nxt))
    # Like MIMIC-IV, intime and outtime have seconds while charttime is cut to the minute.
    intime = (admittime[adm_of_stay] + pd.to_timedelta(offset_h, unit="h")).floor("s")
    outtime = (intime + pd.to_timedelta(los_days * 24, unit="h")).floor("s")
    los = (outtime - intime) / pd.Timedelta(days=1)
    unit = rng.integers(0, len(CAREUNITS), n_s)
    careunit = np.array(CAREUNITS, dtype=object)[unit]
    transfer = rng.random(n_s) < 0.05
    # Planted: an admission whose first stay changes care unit and whose second does not; the
    # reference filter order (transfers first, then stays per admission) keeps the second.
    pairs = np.flatnonzero((stay_order == 0) & (n_stay[adm_of_stay] == 2) & adult_stay)
    if len(pairs):
        transfer[pairs[0]], transfer[pairs[0] + 1] = True, False
    transfer[planted] = False
    other_unit = (unit + rng.integers(1, len(CAREUNITS), n_s)) % len(CAREUNITS)
    last_unit = np.where(transfer, np.array(CAREUNITS, dtype=object)[other_unit], careunit)

    # Death time: at ICU discharge for ICU deaths, else 1-10 days later on the ward.
    post_icu_days = rng.uniform(1, 10, n_s)
    deathtime_stay = np.where(
        dies_in_icu,
        outtime.to_numpy(),
        (outtime + pd.to_timedelta(post_icu_days, unit="D")).floor("min").to_numpy(),
    )
    deathtime_stay = pd.DatetimeIndex(np.where(dies, deathtime_stay, np.datetime64("NaT")))

    # Admission ends after its last stay (+ ward days) or at death.
    last_stay_of_adm = pd.Series(np.arange(n_s)).groupby(adm_of_stay).max()
    dischtime = admittime + pd.to_timedelta(pre_icu_h + rng.uniform(24, 96, n_a), unit="h")
    dischtime = pd.Series(dischtime)
    idx_last = last_stay_of_adm.to_numpy()
    adm_with_stays = last_stay_of_adm.index.to_numpy()
    ward_end = outtime[idx_last] + pd.to_timedelta(post_icu_days[idx_last], unit="D")
    ends = np.where(dies[idx_last], deathtime_stay[idx_last].to_numpy(), ward_end.to_numpy())
    dischtime.iloc[adm_with_stays] = ends
    dischtime = pd.DatetimeIndex(dischtime).floor("min")
    deathtime_adm = pd.Series(pd.NaT, index=range(n_a), dtype="datetime64[ns]")
    deathtime_adm.iloc[adm_with_stays] = deathtime_stay[idx_last].to_numpy()
    hospital_death = deathtime_adm.notna().to_numpy()

    # Conditions per admission: chronic from the patient, acute from the worst stay.
    adm_sev = pd.Series(severity).groupby(adm_of_stay).max().reindex(range(n_a)).fillna(-1.0)
    adm_sev = adm_sev.to_numpy()
    cond = {}
    for key in PHENO_KEYS:
        if key in chronic:
            cond[key] = chronic[key][pat_of_adm]
        else:
            a, b = ACUTE_LOGITS[key]
            extra = 0.03 * (age[pat_of_adm] - 64) if key == "chf" else 0.0
            cond[key] = rng.random(n_a) < _sigmoid(a + b * adm_sev + extra)
    conditions = pd.DataFrame(cond, index=pd.Index(hadm_id, name="hadm_id")).astype(np.uint8)

    groups = race_group(race)[pat_of_adm]
    miss = np.vectorize(MISS_CODE_RATE.get)(groups)
    drop = rng.random((n_a, len(PHENO_KEYS))) < miss[:, None]
    spurious = rng.random((n_a, len(PHENO_KEYS))) < 0.01
    coded_values = (conditions.to_numpy().astype(bool) & ~drop) | spurious
    coded = pd.DataFrame(coded_values.astype(np.uint8), index=conditions.index,
                         columns=phenotype_names())

    dod = pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns]")
    death_by_pat = pd.Series(deathtime_adm.to_numpy()).groupby(pat_of_adm).max()
    dod.iloc[death_by_pat.index] = death_by_pat.to_numpy()
    later_death = dod.isna().to_numpy() & (rng.random(n) < 0.08)
    last_disch = pd.Series(dischtime).groupby(pat_of_adm).max().to_numpy()
    dod[later_death] = last_disch[later_death] + pd.to_timedelta(
        rng.uniform(30, 900, later_death.sum()), unit="D"
    )

    patients = pd.DataFrame({
        "subject_id": subject_id,
        "gender": gender,
        "anchor_age": age,
        "anchor_year": anchor_year,
        "anchor_year_group": year_group,
        "dod": pd.DatetimeIndex(dod).strftime("%Y-%m-%d"),
    })
    emergency = pd.Series(adm_type).str.contains("EMER").to_numpy()
    edreg = admittime - pd.to_timedelta(rng.uniform(2, 10, n_a), unit="h")
    admissions = pd.DataFrame({
        "subject_id": subject_id[pat_of_adm],
        "hadm_id": hadm_id,
        "admittime": admittime,
        "dischtime": dischtime,
        "deathtime": pd.DatetimeIndex(deathtime_adm),
        "admission_type": adm_type,
        "admit_provider_id": np.char.add("P", rng.integers(10000, 99999, n_a).astype(str)),
        "admission_location": np.where(emergency, "EMERGENCY ROOM", "PHYSICIAN REFERRAL"),
        "discharge_location": np.where(hospital_death, "DIED", "HOME"),
        "insurance": insurance[pat_of_adm],
        "language": np.where(rng.random(n_a) < 0.9, "ENGLISH", "?"),
        "marital_status": np.array(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", None],
                                   dtype=object)[rng.integers(0, 5, n_a)],
        "race": race[pat_of_adm],
        "edregtime": pd.DatetimeIndex(
            np.where(emergency, edreg.floor("min"), np.datetime64("NaT"))),
        "edouttime": pd.DatetimeIndex(np.where(emergency, admittime, np.datetime64("NaT"))),
        "hospital_expire_flag": hospital_death.astype(np.int64),
    })
    icustays = pd.DataFrame({
        "subject_id": subject_id[pat_of_stay],
        "hadm_id": hadm_id[adm_of_stay],
        "stay_id": stay_id,
        "first_careunit": careunit,
        "last_careunit": last_unit,
        "intime": intime,
        "outtime": outtime,
        "los": np.round(los, 4),
    })
    stays = icustays[["subject_id", "hadm_id", "stay_id", "intime", "outtime"]].copy()
    stays["severity"] = severity
    stays["no_ehr"] = no_ehr
    stays["dies"] = dies
    stays["dies_in_icu"] = dies_in_icu
    stays["deathtime"] = deathtime_stay
    stays["age"] = age[pat_of_stay]
    stays["gender"] = gender[pat_of_stay]
    stays["insurance"] = insurance[pat_of_stay]
    stays["race_group"] = race_group(race)[pat_of_stay]
    stays["weight_kg"] = np.clip(rng.normal(80, 18, n)[pat_of_stay], 40, 200)
    stays["height_cm"] = np.clip(rng.normal(170, 10, n)[pat_of_stay], 140, 205)
    for key in PHENO_KEYS:
        stays[key] = conditions[key].to_numpy()[adm_of_stay]
    return Cohort(patients, admissions, icustays, stays, conditions, coded)
