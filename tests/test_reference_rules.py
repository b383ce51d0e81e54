"""The reference rules on the synthetic tree, where the generator plants each case."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd

from preprocessing import schemas as S
from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess
from preprocessing.synth.cohort import LATE_DEATH_HOURS
from preprocessing.variables import ITEM_HEIGHT_CM, ITEM_HEIGHT_IN


def _truth(synth_small) -> pd.DataFrame:
    return pd.read_csv(synth_small / "synthetic_truth.csv.gz")


def test_admission_height_charted_before_intime_reaches_the_first_bin(synth_small,
                                                                       prepared_small):
    chart = pd.read_csv(synth_small / "mimic-iv" / S.CHARTEVENTS.relpath,
                        parse_dates=["charttime"])
    stays = pd.read_parquet(prepared_small / "cohort" / "stays.parquet")
    height = chart[chart.itemid.isin([ITEM_HEIGHT_CM, ITEM_HEIGHT_IN])].merge(
        stays[["stay_id", "intime"]], on="stay_id")
    assert (height.charttime < height.intime).all()  # planted like MIMIC-IV admissions
    hourly = pd.read_parquet(prepared_small / "ehr" / "hourly")
    first_bin = hourly[hourly.step == 0].set_index("stay_id")["height"]
    seen = first_bin.reindex(height.stay_id.unique()).notna()
    assert seen.mean() > 0.97  # (a few planted impossible values are dropped)


def test_a_late_icu_death_past_max_hours_has_positive_decompensation(synth_small,
                                                                     prepared_small):
    truth = _truth(synth_small)
    stay = truth.loc[truth.dies_in_icu & truth.stay_id.isin(
        pd.read_parquet(prepared_small / "cohort" / "stays.parquet").stay_id), "stay_id"]
    labels = pd.read_parquet(prepared_small / "labels" / "decompensation.parquet")
    late = labels[labels.stay_id.isin(stay) & (labels.ehr_hours > 336)]
    assert late.ehr_hours.max() == int(LATE_DEATH_HOURS)
    positive = late.loc[late.label_0 == 1, "ehr_hours"]
    assert positive.tolist() == list(range(int(LATE_DEATH_HOURS) - 23, int(LATE_DEATH_HOURS) + 1))


def test_transfer_filter_comes_before_counting_stays_per_admission(synth_small, prepared_small):
    icu = pd.read_csv(synth_small / "mimic-iv" / S.ICUSTAYS.relpath)
    icu["transfer"] = icu.first_careunit != icu.last_careunit
    pairs = icu.groupby("hadm_id").filter(lambda g: len(g) == 2 and g.transfer.sum() == 1)
    kept = pairs.loc[~pairs.transfer, "stay_id"]
    stays = pd.read_parquet(prepared_small / "cohort" / "stays.parquet")
    assert kept.isin(stays.stay_id).any()
    manifest = json.loads((prepared_small / "manifest.json").read_text())
    step = next(e for e in manifest["cohort"]["exclusions"]
                if e["filter"].startswith("one ICU stay"))
    assert "after the transfer filter" in step["filter"]
    assert step["cohort_if_counted_after_transfer_filter"] == manifest["cohort"]["stays"]
    assert step["cohort_if_counted_over_all_stays"] < manifest["cohort"]["stays"]


def test_gem_only_codes_label_their_phenotype_and_unknown_codes_are_counted(synth_small,
                                                                              prepared_small):
    diagnoses = pd.read_csv(synth_small / "mimic-iv" / S.DIAGNOSES_ICD.relpath)
    phenos = pd.read_parquet(prepared_small / "cohort" / "phenotypes.parquet")
    for code, group in (("E1122", "Diabetes mellitus with complications"),
                        ("I480", "Cardiac dysrhythmias"),
                        ("E780", "Disorders of lipid metabolism")):
        hadm = diagnoses.loc[(diagnoses.icd_code == code) & (diagnoses.icd_version == 10),
                             "hadm_id"]
        labelled = phenos[phenos.hadm_id.isin(hadm)]
        assert len(labelled) > 0 and (labelled[group] == 1).all()
    coding = json.loads((prepared_small / "manifest.json").read_text())["phenotype_coding"]
    assert coding["by_version"]["10"]["unknown"] > 0
    assert {c["icd_code"] for c in coding["unknown_most_frequent"]} <= {"U071", "Z1152"}


def test_stays_without_events_are_dropped_by_default_or_kept_with_empty_masks(
        synth_small, prepared_small, tmp_path):
    truth = _truth(synth_small)
    empty = int(truth.loc[truth.no_ehr, "stay_id"].iloc[0])
    stays = pd.read_parquet(prepared_small / "cohort" / "stays.parquet")
    assert empty in set(stays.stay_id)
    manifest = json.loads((prepared_small / "manifest.json").read_text())
    required = manifest["ehr"]["events_required"]
    assert required["dropped"] and required["stays_without_events"] == 1
    assert required["samples_without_events"]["phenotyping"] == 1
    for task in ("phenotyping", "decompensation", "mortality"):
        labels = pd.read_parquet(prepared_small / "labels" / f"{task}.parquet")
        assert empty not in set(labels.stay_id)

    out = tmp_path / "keep"
    shutil.copytree(prepared_small, out)
    result = run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg", out,
                            config=PreprocessConfig(cxr_image_size=64, require_ehr_events=False),
                            show=False)
    assert result["rebuilt_stages"] == {"labels": "settings or inputs changed"}
    labels = pd.read_parquet(out / "labels" / "phenotyping.parquet")
    assert empty in set(labels.stay_id)
    features = pd.read_parquet(out / "ehr" / "features_medmod")
    masks = features.loc[features.stay_id == empty, [c for c in features if c.startswith("mask:")]]
    assert len(masks) > 0 and (masks.to_numpy() == 0).all()  # the masks say: nothing observed
    assert np.isfinite(features.loc[features.stay_id == empty].drop(columns="stay_id")).all().all()


def test_counting_every_stay_is_an_option(synth_small, prepared_small):
    from preprocessing.cohort import build_cohort
    from preprocessing.raw_io import check_inputs

    files = check_inputs(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg")
    stays, exclusions = build_cohort(
        files, PreprocessConfig(count_stays_after_transfer_filter=False))
    step = next(e for e in exclusions if e["filter"].startswith("one ICU stay"))
    assert "counted over all stays" in step["filter"]
    assert len(stays) == step["cohort_if_counted_over_all_stays"]
    reference = pd.read_parquet(prepared_small / "cohort" / "stays.parquet")
    assert set(stays.stay_id) < set(reference.stay_id)
