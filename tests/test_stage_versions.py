"""Stage versions: golden output digests, and rebuilding exactly what changed."""

from __future__ import annotations

import json
import shutil

import pytest
from stage_golden import GOLDEN, STAGES, current

from preprocessing import pipeline
from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess

CONFIG = PreprocessConfig(cxr_image_size=64)


def test_stage_outputs_match_their_golden_digest_unless_the_version_was_bumped(
        synth_small, prepared_small):
    golden = json.loads(GOLDEN.read_text())
    now = current(synth_small, prepared_small)
    if now["inputs"] != golden["inputs"]:
        pytest.fail("the synthetic test tree changed (generator edit?): refresh the golden "
                    "file with `.venv/bin/python tests/stage_golden.py` and check that no "
                    "stage's code changed in the same commit")
    problems = []
    for name in STAGES:
        was, got = golden["stages"][name], now["stages"][name]
        if got["digest"] != was["digest"] and got["version"] == was["version"]:
            problems.append(f"stage {name}: its output changed but STAGE_VERSION is still "
                            f"{got['version']}; bump it in the stage's module")
        elif got != was:
            problems.append(f"stage {name}: version {was['version']} -> {got['version']}; "
                            "refresh tests/data/stage_golden.json (tests/stage_golden.py)")
    assert not problems, "\n".join(problems)


def _copy(prepared_small, tmp_path):
    out = tmp_path / "prepared"
    shutil.copytree(prepared_small, out)
    return out


def _rerun(synth_small, out, config=CONFIG):
    return run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg", out,
                          config=config, show=False)


def test_a_version_bump_rebuilds_that_stage_and_what_its_output_feeds(
        synth_small, prepared_small, tmp_path, monkeypatch):
    out = _copy(prepared_small, tmp_path)
    monkeypatch.setitem(pipeline.STAGE_VERSIONS, "samples", 99)
    result = _rerun(synth_small, out)
    assert result["rebuilt_stages"] == {"samples": "stage version changed (v2 -> v99)"}
    # Same output bytes: the stages reading it (cxr, labels) keep their keys and are skipped.
    assert set(result["cached_stages"]) == {"cohort", "cxr", "ehr", "labels"}
    assert result["stages"]["samples"]["version"] == 99


def test_a_setting_rebuilds_only_the_stages_that_use_it(synth_small, prepared_small, tmp_path):
    out = _copy(prepared_small, tmp_path)
    result = _rerun(synth_small, out, CONFIG.model_copy(update={"max_hours": 100}))
    assert result["rebuilt_stages"] == {"labels": "settings or inputs changed"}
    assert set(result["cached_stages"]) == {"cohort", "samples", "cxr", "ehr"}


def test_markers_written_before_stage_versions_count_as_version_1(
        synth_small, prepared_small, tmp_path):
    out = _copy(prepared_small, tmp_path)
    for name in STAGES:  # as the previous release wrote them: no version, no output digests
        path = out / name / "_SUCCESS.json"
        marker = json.loads(path.read_text())
        marker.pop("version"), marker.pop("outputs")
        marker["key"] = "0" * 16
        path.write_text(json.dumps(marker))
    result = _rerun(synth_small, out)
    assert result["rebuilt_stages"] == {name: "stage version changed (v1 -> v2)"
                                        for name in ("cohort", "samples", "ehr", "labels")}
    # The image index came out byte-identical and the images have the asked size: the
    # decoded images are kept (the expensive stage), and marked with the new key.
    assert result["cached_stages"] == ["cxr"]
    assert json.loads((out / "cxr" / "_SUCCESS.json").read_text())["version"] == 1
    again = _rerun(synth_small, out)
    assert set(again["cached_stages"]) == set(STAGES) and not again["rebuilt_stages"]
