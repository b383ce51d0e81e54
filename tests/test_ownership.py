"""Nothing of the user's is overwritten or deleted: directory markers, the report's output
list, and a full disk during ``raybench synth`` reported as one line."""

from __future__ import annotations

import json
import os

import pytest

from raybench.cli import main
from raybench.errors import RaybenchError
from raybench.ownership import claim, marker_name, safe_relpath
from raybench.report.output import OUTPUT_LIST, write_outputs

STUDY = """\
schema_version: 1
name: guarded
storage: {storage}
data: {{synthetic: {{patients: 50, image_size: 64}}}}
tasks: [mortality]
methods: [ehr_lstm]
search: {{type: fixed}}
seeds: [0]
"""


def test_claim_accepts_new_empty_and_own_directories_only(tmp_path):
    assert claim(tmp_path / "new", "study") is True
    assert (tmp_path / "new" / marker_name("study")).is_file()
    assert claim(tmp_path / "new", "study") is False  # ours: accepted again
    with pytest.raises(RaybenchError, match="is not a prepared dataset directory"):
        claim(tmp_path / "new", "prepared")  # ours, but another kind
    (tmp_path / "empty").mkdir()
    assert claim(tmp_path / "empty", "prepared") is True
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("x")
    with pytest.raises(RaybenchError, match=r"user exists, is not empty \(thesis.tex\) and was "
                                            "not created by raybench"):
        claim(tmp_path / "user", "study")
    assert sorted(os.listdir(tmp_path / "user")) == ["thesis.tex"]
    uri = f"file://{tmp_path / 'bucket' / 'study'}"  # object storage goes the same way
    assert claim(uri, "study") is True and claim(uri, "study") is False


def test_study_refuses_a_directory_it_did_not_create(tmp_path, capsys):
    target = tmp_path / "my-project"
    (target / "report").mkdir(parents=True)
    files = {"study.yaml": "my own notes", "env.txt": "my env", "report/summary.md": "mine"}
    for name, text in files.items():
        (target / name).write_text(text)
    study = tmp_path / "guarded.yaml"
    study.write_text(STUDY.format(storage=target))
    assert main(["study", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "was not created by raybench" in err and str(target) in err
    assert {n: (target / n).read_text() for n in files} == files
    assert sorted(p.name for p in target.iterdir()) == ["env.txt", "report", "study.yaml"]


def test_report_deletes_only_files_of_its_own_output_list(tmp_path):
    out = tmp_path / "report"
    write_outputs(out, {"report.md": b"# 1\n", "robustness_a_base.png": b"png"})
    (out / "robustness_mine.png").write_bytes(b"a user's figure, named like ours")
    write_outputs(out, {"report.md": b"# 2\n"})  # the figure is no longer produced
    assert not (out / "robustness_a_base.png").exists()
    assert (out / "robustness_mine.png").read_bytes() == b"a user's figure, named like ours"
    assert json.loads((out / OUTPUT_LIST).read_text())["files"] == ["report.md"]
    # The list lies in the study directory and may be edited: names leaving it are ignored.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / OUTPUT_LIST).write_text(json.dumps({"files": ["../victim.txt", str(victim),
                                                         "report.md"]}))
    write_outputs(out, {"other.md": b"x"})
    assert victim.read_text() == "keep" and not (out / "report.md").exists()
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    with pytest.raises(RaybenchError, match="holds files raybench's report did not write"):
        write_outputs(mine, {"report.md": b"x"})
    assert sorted(os.listdir(mine)) == ["notes.md"]


def test_safe_relpath_refuses_paths_leaving_the_directory():
    assert safe_relpath("predictions/e-1/c000-s0-ab.parquet") == \
        "predictions/e-1/c000-s0-ab.parquet"
    for bad in ("/etc/passwd", "../x", "a/../../x", "a/./b", "", "C:/x", "a\\b", None, 3):
        assert safe_relpath(bad) is None


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_during_synth_is_one_line_naming_disk_and_path(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--patients", "12", "--image-size", "32"]
    assert main(args) == 0
    capsys.readouterr()
    # Writes to /dev/full fail with ENOSPC from the kernel: a real full-disk error.
    table = out / "mimic-iv" / "icu" / "chartevents.csv.gz"
    (table.parent / (table.name + ".tmp")).symlink_to("/dev/full")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("raybench: error: no space left on the disk mounted at ")
    assert f"while writing {table}" in err and "MiB free now" in err
