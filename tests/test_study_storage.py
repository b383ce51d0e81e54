"""Study directories behind a URI: the same pyarrow filesystem code serves s3://, gs://, ...;
here ``file://`` URIs stand in for object storage (no network in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raybench.errors import RaybenchError
from raybench.study.storage import StudyStorage, read_bytes, write_bytes

STUDY = """\
schema_version: 1
name: remote
storage: {storage}
data:
  synthetic: {{patients: 200, seed: 3, image_size: 64, preprocess: {{imputations: [medmod]}}}}
tasks: [mortality]
methods:
  ehr_lstm: {{hidden: 16, ehr_layers: 1}}
search: {{type: fixed}}
seeds: [0, 1]
training: {{epochs: 1, max_train_batches: 3}}
resources: {{cpu: 1}}
fairness: {{enabled: false}}
"""


def test_local_path_is_its_own_copy(tmp_path):
    storage = StudyStorage.from_setting(str(tmp_path / "study"))
    assert not storage.remote and storage.local == tmp_path / "study"
    storage.write_bytes("a/b.txt", b"x")
    assert (tmp_path / "study" / "a" / "b.txt").read_bytes() == b"x"
    assert storage.read_bytes("a/b.txt") == b"x" and storage.read_bytes("nope") is None


def test_uri_gets_a_local_copy_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYBENCH_CACHE", str(tmp_path / "cache"))
    storage = StudyStorage.from_setting("s3://bucket/studies/robustness/")
    assert storage.remote and storage.uri == "s3://bucket/studies/robustness"
    assert storage.local == tmp_path / "cache" / "studies" / "s3" / "bucket" / "studies" / \
        "robustness"
    assert storage.join("tune") == "s3://bucket/studies/robustness/tune"
    with pytest.raises(RaybenchError, match="names no bucket"):
        StudyStorage.from_setting("s3://")


def test_write_pull_push_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYBENCH_CACHE", str(tmp_path / "cache"))
    remote = tmp_path / "bucket" / "study"
    storage = StudyStorage.from_setting(f"file://{remote}")
    storage.write_bytes("resolved_study.yaml", b"name: x\n")
    assert (remote / "resolved_study.yaml").read_bytes() == b"name: x\n"
    assert (storage.local / "resolved_study.yaml").read_bytes() == b"name: x\n"
    write_bytes(storage.uri, "predictions/e/c000-s0.parquet", b"p")  # as a trial would
    assert read_bytes(storage.uri, "predictions/e/c000-s0.parquet") == b"p"
    storage.pull()
    assert (storage.local / "predictions" / "e" / "c000-s0.parquet").read_bytes() == b"p"
    (storage.local / "report").mkdir()
    (storage.local / "report" / "report.md").write_text("# r\n")
    storage.push("report")
    assert (remote / "report" / "report.md").read_text() == "# r\n"
    assert not list(remote.rglob("*.tmp"))


def test_study_on_a_uri_writes_everything_there_and_resumes(tmp_path):
    remote = tmp_path / "bucket" / "remote"
    path = tmp_path / "remote.yaml"
    path.write_text(STUDY.format(storage=f"file://{remote}"))
    env = {**os.environ, "RAYBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "raybench.cli", "study", str(path)]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    local = tmp_path / "cache" / "studies" / "file" / Path(*remote.parts[1:])
    assert f"study directory: file://{remote} (local copy: {local})" in first.stdout

    trials = pd.read_parquet(remote / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "ok").all()
    for rel in trials.predictions_file:
        assert (remote / rel).is_file()
    for name in ("study.yaml", "resolved_study.yaml", "env.txt", "git.txt",
                 "report/report.md", "tune"):
        assert (remote / name).exists(), name
    assert (local / "data" / "prepared").is_dir() and not (remote / "data").exists()
    results = {p: p.stat().st_mtime_ns for p in (remote / "results").rglob("*.json")}
    assert len(results) == 2

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (remote / "results").rglob("*.json")} == results
    assert len(pd.read_parquet(remote / "trials.parquet")) == 2

    (remote / "report" / "report.md").unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "raybench.cli", "report", f"file://{remote}",
                              "--bootstrap", "20", "--permutations", "20"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert (remote / "report" / "report.md").read_text().startswith("# Results report: remote")
