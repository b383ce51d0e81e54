"""Raw-table faults planted in a synthetic MIMIC tree: duplicated rows, an unparsable
timestamp, an empty or valueless chartevents, no EHR value at all."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from preprocessing.cohort import build_cohort
from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess
from preprocessing.raw_io import check_inputs
from preprocessing.synth.generator import SynthConfig, generate
from raybench.cli import main
from raybench.errors import RaybenchError


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_tree")
    generate(SynthConfig(out=out, patients=60, seed=5, image_size=32))
    return out


def _copy(tree, tmp_path):
    shutil.copytree(tree / "mimic-iv", tmp_path / "mimic-iv")
    shutil.copytree(tree / "mimic-cxr-jpg", tmp_path / "mimic-cxr-jpg",
                    ignore=shutil.ignore_patterns("files"))  # images unused by these tests
    return tmp_path / "mimic-iv", tmp_path / "mimic-cxr-jpg"


def _edit(path, change) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame).to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})


def _cohort(iv, cxr):
    duplicates: dict[str, int] = {}
    stays, exclusions = build_cohort(check_inputs(iv, cxr), PreprocessConfig(), duplicates)
    return stays, exclusions, duplicates


def test_exact_duplicates_are_dropped_and_counted(tiny_tree, tmp_path):
    iv, cxr = _copy(tiny_tree, tmp_path)
    clean, clean_exclusions, none = _cohort(iv, cxr)
    assert none == {"icustays": 0, "admissions": 0, "patients": 0}
    _edit(iv / "icu" / "icustays.csv.gz", lambda f: pd.concat([f, f.head(10)]))
    _edit(iv / "hosp" / "patients.csv.gz", lambda f: pd.concat([f, f.tail(4)]))
    stays, exclusions, duplicates = _cohort(iv, cxr)
    assert duplicates == {"icustays": 10, "admissions": 0, "patients": 4}
    pd.testing.assert_frame_equal(stays, clean)  # neither shrunk nor grown
    assert exclusions == clean_exclusions
    assert all(step["after"] <= step["before"] for step in exclusions)


def test_conflicting_duplicates_are_refused_naming_table_key_and_count(tiny_tree, tmp_path):
    iv, cxr = _copy(tiny_tree, tmp_path)

    def conflict(frame):
        copies = frame.head(3).copy()
        copies["last_careunit"] = "Somewhere else"  # same stay_id, different values
        return pd.concat([frame, copies])

    _edit(iv / "icu" / "icustays.csv.gz", conflict)
    with pytest.raises(RaybenchError) as error:
        _cohort(iv, cxr)
    message = str(error.value)
    assert str(iv / "icu" / "icustays.csv.gz") in message and "\n" not in message
    assert "3 stay_id value(s) appear on several rows with different values" in message
    assert "(first at line 2)" in message


def test_unparsable_timestamp_is_one_line_naming_file_column_and_line(tiny_tree, tmp_path,
                                                                      capsys):
    iv, cxr = _copy(tiny_tree, tmp_path)

    def garble(frame):
        frame.loc[frame.index[6], "intime"] = "2150-13-45 25:61:00"
        return frame

    _edit(iv / "icu" / "icustays.csv.gz", garble)
    code = main(["preprocess", "--mimic-iv", str(iv), "--mimic-cxr", str(cxr),
                 "--out", str(tmp_path / "prepared")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(  # the one line after the progress display
        f"raybench: error: {iv / 'icu' / 'icustays.csv.gz'}: column intime, line 8 (data row "
        "7): cannot parse '2150-13-45 25:61:00' as a date-time")


def test_empty_chartevents_warns_and_no_ehr_value_at_all_is_an_error(tiny_tree, tmp_path,
                                                                    capsys):
    iv, _ = _copy(tiny_tree, tmp_path)
    cxr = tiny_tree / "mimic-cxr-jpg"
    chart = iv / "icu" / "chartevents.csv.gz"
    _edit(chart, lambda f: f.iloc[0:0])  # the header only
    config = PreprocessConfig(cxr_image_size=32, imputations=("medmod",))
    manifest = run_preprocess(iv, cxr, tmp_path / "prepared", config=config, show=False)
    warning = f"{chart}: no row for the cohort's stays with an item of the EHR variables"
    assert any(w.startswith(warning) for w in manifest["warnings"])
    written = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert written["warnings"] == manifest["warnings"]
    assert warning in " ".join(capsys.readouterr().err.split())

    _copy(tiny_tree, tmp_path / "second")
    iv2 = tmp_path / "second" / "mimic-iv"

    def blank(frame):
        frame["valuenum"] = ""
        frame["value"] = ""
        return frame

    _edit(iv2 / "icu" / "chartevents.csv.gz", blank)
    manifest = run_preprocess(iv2, cxr, tmp_path / "prepared2", config=config, show=False)
    assert any("have an empty valuenum" in w for w in manifest["warnings"])

    _edit(iv2 / "hosp" / "labevents.csv.gz", blank)
    code = main(["preprocess", "--mimic-iv", str(iv2), "--mimic-cxr", str(cxr),
                 "--out", str(tmp_path / "prepared3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(
        "raybench: error: no EHR variable has any value inside a cohort stay")
