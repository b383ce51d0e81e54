"""The base cohort: adult ICU stays after the documented exclusions, with patient-level splits.

Raw rows first: an exact duplicate row of ``icustays``, ``admissions`` or ``patients`` is
dropped and counted (``duplicates_dropped`` in the manifest); rows sharing a key (stay_id,
hadm_id, subject_id) with different values are refused (see
:func:`preprocessing.raw_io.read_keyed_table`), since either would otherwise shrink or grow
the cohort silently.

Exclusions (each counted in the manifest, in this order, which is mimic3-benchmarks' and
MedFuse's): stays whose ``outtime`` is not after ``intime``; care-unit transfers
(``first_careunit != last_careunit``); admissions with more than one ICU stay, counted
among the stays left after the transfer filter (``count_stays_after_transfer_filter: false``
counts every stay instead); age at admission < ``min_age``. Transfers and multi-stay
admissions can be switched off in the config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import schemas as S
from preprocessing.config import PreprocessConfig
from preprocessing.raw_io import REQUIRED_COLUMNS, read_keyed_table
from preprocessing.synth.cohort import race_group
from raybench.errors import RaybenchError

AGE_BINS = (0, 40, 60, 80, np.inf)
AGE_LABELS = ("18-39", "40-59", "60-79", "80+")
SPLITS = ("train", "val", "test")
# Version of the ``cohort`` stage (this module and preprocessing/phenotypes.py; the phenotype
# resource's own hash is part of the stage key). Bump it when a change alters what the stage
# writes; tests/test_stage_versions.py holds its golden hash.
STAGE_VERSION = 2


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A fixed integer hash (SplitMix64 finaliser), identical on every platform."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def assign_splits(subject_ids: np.ndarray, fractions, seed: int) -> np.ndarray:
    """Deterministic patient-level split: a subject's split depends only on its id and seed."""
    salted = np.asarray(subject_ids, dtype=np.uint64) ^ _splitmix64(np.array([seed]))[0]
    u = (_splitmix64(salted) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    edges = np.cumsum(fractions)[:-1]
    return np.array(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]


def read_cohort_tables(files: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame,
                                                         pd.DataFrame, dict[str, int]]:
    """icustays, admissions, patients (with ``dod``) and the exact duplicates dropped."""
    dropped = {}
    tables = []
    for name, schema, key, extra in (("icustays", S.ICUSTAYS, "stay_id", ()),
                                     ("admissions", S.ADMISSIONS, "hadm_id", ()),
                                     ("patients", S.PATIENTS, "subject_id", ("dod",))):
        frame, dropped[name] = read_keyed_table(files[name], schema,
                                                REQUIRED_COLUMNS[name] + extra, key)
        tables.append(frame)
    icu, adm, pat = tables
    pat["dod"] = pd.to_datetime(pat["dod"], errors="coerce")
    return icu, adm, pat, dropped


def build_cohort(files: dict[str, Path], config: PreprocessConfig,
                 duplicates: dict[str, int] | None = None) -> tuple[pd.DataFrame, list]:
    """Join icustays, admissions and patients; apply exclusions; add groups and split.

    ``duplicates``, when given, receives the exact duplicate rows dropped per table.

    Returns:
        (stays, exclusions): one row per kept stay, and (filter, stays before, stays after)
        for each exclusion step.

    Raises:
        RaybenchError: when a filter leaves no stay, naming that filter; for conflicting
        duplicate rows and unparsable values (see :func:`read_cohort_tables`).
    """
    icu, adm, pat, dropped = read_cohort_tables(files)
    if duplicates is not None:
        duplicates.update(dropped)
    stays = icu.merge(adm.drop(columns="subject_id"), on="hadm_id", how="inner")
    stays = stays.merge(pat, on="subject_id", how="inner")
    stays["age"] = stays["anchor_age"] + (stays["admittime"].dt.year - stays["anchor_year"])
    stays["los_hours"] = (stays["outtime"] - stays["intime"]) / pd.Timedelta(hours=1)

    has_dates = stays["los_hours"] > 0
    adult = stays["age"] >= config.min_age
    no_transfer = stays["first_careunit"] == stays["last_careunit"]
    if not config.exclude_transfers:
        no_transfer = pd.Series(True, index=stays.index)
    single = {rule: _single_stay(stays, basis)
              for rule, basis in (("after_transfer_filter", no_transfer),
                                  ("over_all_stays", pd.Series(True, index=stays.index)))}
    rule = "after_transfer_filter" if config.count_stays_after_transfer_filter \
        else "over_all_stays"
    steps: list[tuple[str, pd.Series | None]] = [
        ("ICU stay has an admission and a patient", None),
        ("outtime after intime", has_dates),
    ]
    if config.exclude_transfers:
        steps.append(("no care-unit transfer", no_transfer))
    if config.exclude_multi_stay_admissions:
        name = ("one ICU stay in the admission (counted after the transfer filter)"
                if rule == "after_transfer_filter" else
                "one ICU stay in the admission (counted over all stays)")
        steps.append((name, single[rule]))
    steps.append((f"adult (age >= {config.min_age})", adult))
    exclusions = []
    keep = pd.Series(True, index=stays.index)
    before = len(icu)
    for name, mask in steps:
        if mask is not None:
            keep &= mask
        after = int(keep.sum())
        exclusions.append({"filter": name, "before": before, "after": after})
        if after == 0:
            raise RaybenchError(
                f"the base cohort is empty after the filter '{name}' ({before} stays before it)"
            )
        before = after
    if config.exclude_multi_stay_admissions:
        # Both counting rules' cohort sizes, for the manifest (mimic3-benchmarks and MedFuse
        # count an admission's stays after dropping transfers).
        base = has_dates & adult & no_transfer
        step = next(e for e in exclusions if e["filter"].startswith("one ICU stay"))
        step["cohort_if_counted_after_transfer_filter"] = int(
            (base & single["after_transfer_filter"]).sum())
        step["cohort_if_counted_over_all_stays"] = int((base & single["over_all_stays"]).sum())
    stays = stays[keep].copy()

    hospital_death = stays["deathtime"].notna() & (stays["deathtime"] >= stays["admittime"]) & (
        stays["deathtime"] <= stays["dischtime"] + pd.Timedelta(hours=24))
    # MedMod also counts a date of death within the admission when deathtime is blank;
    # its time is then unknown and taken as the discharge time.
    dod_in_stay = stays["deathtime"].isna() & stays["dod"].notna() & (
        stays["dod"] >= stays["admittime"].dt.normalize()) & (
        stays["dod"] <= stays["dischtime"].dt.normalize())
    stays["death_time"] = stays["deathtime"].where(hospital_death)
    stays.loc[dod_in_stay, "death_time"] = stays.loc[dod_in_stay, "dischtime"]
    stays["died_in_hospital"] = stays["death_time"].notna()
    stays["sex"] = stays["gender"]
    stays["race_group"] = race_group(stays["race"].to_numpy())
    stays["age_group"] = pd.cut(stays["age"], AGE_BINS, labels=AGE_LABELS, right=False).astype(str)
    stays["split"] = assign_splits(stays["subject_id"].to_numpy(), config.split_fractions,
                                   config.split_seed)
    columns = ["stay_id", "subject_id", "hadm_id", "split", "intime", "outtime", "los_hours",
               "admittime", "dischtime", "death_time", "died_in_hospital", "age", "age_group",
               "sex", "race", "race_group", "insurance", "admission_type"]
    stays = stays[columns].sort_values("stay_id").reset_index(drop=True)
    return stays, exclusions


def _single_stay(stays: pd.DataFrame, counted: pd.Series) -> pd.Series:
    """True for stays whose admission has exactly one stay among the ``counted`` ones."""
    per_adm = stays.loc[counted].groupby("hadm_id")["stay_id"].size()
    return stays["hadm_id"].map(per_adm).fillna(0).eq(1) & counted
