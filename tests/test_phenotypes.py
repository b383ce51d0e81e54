"""Phenotype labels: exact HCUP CCS 2015 membership for ICD-9, the CMS 2018 GEM route for ICD-10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from preprocessing.phenotype_sources import icd10_groups, parse_gem_line
from preprocessing.phenotypes import coding_summary, label_admissions, load_phenotypes

SOURCE = Path(__file__).parent / "data" / "ccs_2015_benchmark_groups.yaml"


def _groups_of(codes: list[tuple[str, int]]) -> list[set[str]]:
    """Phenotypes of each (code, version), one admission per code."""
    frame = pd.DataFrame({"hadm_id": np.arange(len(codes)), "icd_code": [c for c, _ in codes],
                          "icd_version": [v for _, v in codes]})
    labels = label_admissions(frame, np.arange(len(codes)))
    names = np.array(labels.columns)
    return [set(names[row.astype(bool)]) for row in labels.to_numpy()]


@pytest.fixture(scope="module")
def source() -> dict[str, set[str]]:
    """ICD-9 code -> benchmark groups listing it, from the committed copy of the CCS file."""
    groups: dict[str, set[str]] = {}
    for name, category in yaml.safe_load(SOURCE.read_text()).items():
        assert category["use_in_benchmark"]
        for code in category["codes"]:
            groups.setdefault(str(code), set()).add(name)
    return groups


def test_every_icd9_code_of_the_25_groups_maps_to_exactly_its_groups(source):
    assert len({g for gs in source.values() for g in gs}) == 25
    codes = sorted(source)
    got = _groups_of([(c, 9) for c in codes])
    wrong = [(c, g, source[c]) for c, g in zip(codes, got, strict=True) if g != source[c]]
    assert not wrong, wrong[:5]


def test_icd9_membership_is_exact_not_by_prefix(source):
    # The parent of a listed code (e.g. 401 of 4019) is not listed, so it maps to nothing,
    # and an ICD-9 code is never read as an ICD-10 code.
    parents = sorted({c[:-1] for c in source if len(c) > 3 and c[:-1] not in source})
    assert "401" in parents
    assert all(not g for g in _groups_of([(c, 9) for c in parents]))
    assert _groups_of([("4019", 10)]) == [set()]


@pytest.mark.parametrize("code, expected", [
    ("E1122", {"Diabetes mellitus with complications"}),
    ("J9601", {"Respiratory failure; insufficiency; arrest (adult)"}),
    ("I480", {"Cardiac dysrhythmias"}),
    ("R571", {"Shock"}),
    ("E780", {"Disorders of lipid metabolism"}),  # deleted in FY2017: via its subcodes
    ("I10", {"Essential hypertension"}),
    ("I2510", {"Coronary atherosclerosis and other heart disease"}),
    ("N179", {"Acute and unspecified renal failure"}),
    ("A419", {"Septicemia (except in labor)"}),
    ("J189", {"Pneumonia (except that caused by tuberculosis or sexually transmitted disease)"}),
    ("I5033", {"Congestive heart failure; nonhypertensive"}),
    ("K922", {"Gastrointestinal hemorrhage"}),
    ("I214", {"Acute myocardial infarction"}),
    ("N184", {"Chronic kidney disease"}),
    ("J449", {"Chronic obstructive pulmonary disease and bronchiectasis"}),
    ("e11.9", {"Diabetes mellitus without complication"}),  # dots and case are normalised
    ("Z7901", set()),  # long-term anticoagulants: a real code outside the 25 groups
])
def test_icd10_codes_map_to_the_groups_a_clinician_expects(code, expected):
    assert _groups_of([(code, 10)]) == [expected]


def test_unknown_codes_map_to_nothing_and_are_counted():
    frame = pd.DataFrame({"hadm_id": [1, 1, 1, 2, 2, 3],
                          "icd_code": ["U071", "I480", "Z7901", "U071", "9999Q", "4019"],
                          "icd_version": [10, 10, 10, 10, 9, 9]})
    assert _groups_of([("U071", 10), ("9999Q", 9)]) == [set(), set()]
    summary = coding_summary(frame, np.array([1, 2]))  # admission 3 is not in the cohort
    assert summary["rows"] == 5
    assert summary["by_version"]["10"] == {"rows": 4, "mapped": 1,
                                           "known_not_in_phenotypes": 1, "unknown": 2}
    assert summary["by_version"]["9"]["unknown"] == 1
    assert summary["unknown_distinct_codes"] == 2
    assert summary["unknown_most_frequent"][0] == {"icd_version": 10, "icd_code": "U071",
                                                   "rows": 2}


def _gem(lines: str) -> list:
    return [parse_gem_line(line) for line in lines.strip().splitlines()]


def test_gem_rules_readings_combinations_and_parents():
    icd9 = {"4011": {"HTN"}, "4019": {"HTN"}, "4010": {"HTN_COMP"}, "0389": {"SEPSIS"},
            "99591": {"SEPSIS"}, "99859": {"COMPLICATION"}, "2720": {"LIPID"}}
    gem = _gem("""
        I10    4010  10000
        I10    4011  10000
        I10    4019  10000
        X100   4011  10000
        X100   4010  10000
        A419   0389  10111
        A419   99591 10112
        T8144  99859 10111
        T8144  4011  10112
        T8144  4019  10112
        T8144  4010  10112
        R297   NoDx  11000
        E7800  2720  10000
        E7801  2720  00000
        """)
    direct, parents = icd10_groups(gem, icd9)
    assert direct["I10"] == {"HTN"}  # 2 of 3 readings
    assert direct["X100"] == {"HTN", "HTN_COMP"}  # an even split keeps both
    assert direct["A419"] == {"SEPSIS"}  # one scenario: both choice lists are sepsis
    # one scenario: complication AND one of three alternatives, 2 of which are HTN
    assert direct["T8144"] == {"COMPLICATION", "HTN"}
    assert "R297" not in direct  # no map
    assert parents["E780"] == {"LIPID"} and parents["E78"] == {"LIPID"}
    assert "A41" in parents and "I1" not in parents  # parents have >= 3 characters


def test_resource_records_its_sources_and_copies_the_ccs_lists(source):
    text = (Path(__file__).parents[1] / "preprocessing" / "resources"
            / "phenotypes.yaml").read_text()
    provenance = yaml.safe_load(text)["provenance"]
    for key in ("ccs", "gem"):
        assert len(provenance[key]["sha256"]) == 64
    assert "scripts/build_phenotype_resource.py" in text
    groups = load_phenotypes()
    assert [g.name for g in groups] == sorted(g.name for g in groups)  # label order
    listed = {(code, g.name) for g in groups for code in g.icd9}
    assert listed == {(code, name) for code, names in source.items() for name in names}
    assert sum(g.type == "acute" for g in groups) == 15
