"""Rules that turn the phenotype sources into raybench's phenotype resource.

Sources (not shipped with the package; see ``scripts/build_phenotype_resource.py``):

- HCUP CCS 2015 single-level categories as ICD-9-CM code lists, in the YAML form that
  mimic3-benchmarks uses (``hcup_ccs_2015_definitions.yaml``, MIT licence). The 25 categories
  flagged ``use_in_benchmark`` are the benchmark's phenotypes; an ICD-9 code belongs to a
  phenotype when it is listed in it (exact membership, no prefixes).
- CMS General Equivalence Mappings 2018, ICD-10-CM -> ICD-9-CM (``2018_I10gem.txt``, public
  domain): one row per (ICD-10 code, ICD-9 code, flags ``approximate, no map, combination,
  scenario, choice list``).

ICD-10 rules (documented in docs/preprocessing.md):

1. A code's GEM rows form *readings*: each row without the combination flag is a reading of
   its own; the rows of one combination scenario together form one reading, made of its
   choice lists (the ICD-10 code means one code of *each* choice list). ``no map`` rows give
   no reading. Approximate rows are used like exact ones (almost every GEM row is
   approximate).
2. A choice list implies a phenotype when at least half of its alternative ICD-9 codes are in
   that phenotype; a reading implies the union over its choice lists.
3. An ICD-10 code gets a phenotype when at least half of its readings imply it. So a code
   with several ICD-9 targets gets the phenotype most of them agree on (I10 -> 4010, 4011,
   4019 gives essential hypertension, not hypertension with complications), and both
   phenotypes on an even split (I2510 -> 41401, 4292).
4. A code that the 2018 GEM does not list but that is the parent of GEM codes (e.g. E780,
   split into E7800/E7801 in October 2016 and still in older MIMIC-IV admissions) gets the
   phenotypes that *every* one of its GEM subcodes gets.
"""

from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

MIN_PARENT_LENGTH = 3


@dataclass(frozen=True)
class GemRow:
    """One row of the ICD-10-CM -> ICD-9-CM GEM."""

    icd10: str
    icd9: str
    approximate: bool
    no_map: bool
    combination: bool
    scenario: int
    choice_list: int


def read_ccs(path: Path) -> dict[str, dict]:
    """The CCS definitions file: category name -> {use_in_benchmark, type, id, codes}."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def parse_gem_line(line: str) -> GemRow:
    """One whitespace-separated GEM line: ICD-10 code, ICD-9 code, five flag digits."""
    icd10, icd9, flags = line.split()
    return GemRow(icd10, icd9, flags[0] == "1", flags[1] == "1", flags[2] == "1",
                  int(flags[3]), int(flags[4]))


def read_gem(path: Path) -> list[GemRow]:
    """All rows of a (gzipped or plain) ICD-10-CM -> ICD-9-CM GEM file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="ascii") as handle:
        return [parse_gem_line(line) for line in handle if line.strip()]


def readings(rows: Iterable[GemRow]) -> list[list[list[str]]]:
    """Readings of one ICD-10 code: each a list of choice lists of alternative ICD-9 codes."""
    single: list[list[list[str]]] = []
    scenarios: dict[int, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.no_map:
            continue
        if row.combination:
            scenarios[row.scenario][row.choice_list].append(row.icd9)
        else:
            single.append([[row.icd9]])
    combined = [[scenarios[s][c] for c in sorted(scenarios[s])] for s in sorted(scenarios)]
    return single + combined


def _at_least_half(counts: Counter, total: int) -> set[str]:
    return {group for group, n in counts.items() if 2 * n >= total}


def icd10_code_groups(rows: Iterable[GemRow], icd9_groups: dict[str, set[str]]) -> set[str]:
    """Phenotypes of one ICD-10 code from its GEM rows (rules 1-3 of the module docstring)."""
    code_readings = readings(rows)
    votes: Counter = Counter()
    for reading in code_readings:
        implied: set[str] = set()
        for alternatives in reading:
            in_list = Counter(g for code in alternatives for g in icd9_groups.get(code, ()))
            implied |= _at_least_half(in_list, len(alternatives))
        votes.update(implied)
    return _at_least_half(votes, len(code_readings)) if code_readings else set()


def icd10_groups(gem: list[GemRow], icd9_groups: dict[str, set[str]]
                 ) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(GEM codes -> phenotypes, parent codes absent from the GEM -> phenotypes).

    Only codes with at least one phenotype are returned.
    """
    by_code: dict[str, list[GemRow]] = defaultdict(list)
    for row in gem:
        by_code[row.icd10].append(row)
    direct = {code: icd10_code_groups(rows, icd9_groups) for code, rows in by_code.items()}
    children: dict[str, list[set[str]]] = defaultdict(list)
    for code, groups in direct.items():
        for end in range(MIN_PARENT_LENGTH, len(code)):
            children[code[:end]].append(groups)
    parents = {}
    for prefix, child_groups in children.items():
        if prefix in direct:
            continue
        common = set.intersection(*child_groups)
        if common:
            parents[prefix] = common
    return ({c: g for c, g in direct.items() if g}, parents)


def known_icd10(gem: list[GemRow]) -> set[str]:
    """ICD-10 codes the resource can judge: GEM codes and their parents (>= 3 characters)."""
    known = set()
    for row in gem:
        known.add(row.icd10)
        for end in range(MIN_PARENT_LENGTH, len(row.icd10)):
            known.add(row.icd10[:end])
    return known


def benchmark_icd9(ccs: dict[str, dict]) -> dict[str, set[str]]:
    """ICD-9 code -> benchmark phenotypes (exact CCS membership)."""
    groups: dict[str, set[str]] = defaultdict(set)
    for name, category in ccs.items():
        if category["use_in_benchmark"]:
            for code in category["codes"]:
                groups[str(code)].add(name)
    return dict(groups)
