"""``raybench study`` end to end: concurrency across experiments, failures, kill -9 resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

STUDY = """\
schema_version: 1
name: {name}
storage: {storage}
data:
  synthetic: {{patients: 300, seed: 1, image_size: 64, preprocess: {{imputations: [medmod]}}}}
tasks: [mortality]
methods:
  ehr_lstm: {{hidden: 16, ehr_layers: 1}}
  late_fusion: {{hidden: 16, ehr_layers: 1, cxr_backbone: resnet_tiny, pretrained: false}}
{extra}
search: {{type: gp, n_calls: 3, n_initial_points: 2}}
seeds: [0, 1, 2]
training: {{epochs: 1, max_train_batches: 4}}
resources: {{cpu: 1, max_failures: 1}}
"""


def _write(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, storage=tmp_path / name, extra=extra))
    return path


def _study(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS")
    return subprocess.Popen([sys.executable, "-m", "raybench.cli", "study", *args,
                             "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True, **kw)


@pytest.mark.slow
def test_study_runs_all_experiments_and_records_failures(tmp_path):
    failing = "  ehr_transformer: {hidden: 18, nhead: 4}   # fails when the model is built"
    proc = _study(str(_write(tmp_path, "full", failing)))
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-3000:]
    trials = pd.read_parquet(tmp_path / "full" / "trials.parquet")
    assert len(trials) == 3 * 3 * 3  # experiments x configurations x seeds
    failed = trials[trials.status == "failed"]
    assert set(failed.method) == {"ehr_transformer"} and len(failed) == 9
    assert failed.error.str.contains("divisible by nhead").all()
    ok = trials[trials.status == "ok"]
    seeds_per_config = ok.groupby(["experiment_id", "config_id"]).seed.apply(sorted)
    assert all(list(seeds) == [0, 1, 2] for seeds in seeds_per_config)
    assert ok.groupby(["experiment_id", "config_id"]).params.nunique().eq(1).all()
    for path in ok.predictions_file:
        assert (tmp_path / "full" / path).is_file()
    for name in ("study.yaml", "resolved_study.yaml", "env.txt", "git.txt"):
        assert (tmp_path / "full" / name).is_file()


def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    study = _write(tmp_path, "resume")
    results = tmp_path / "resume" / "results"
    proc = _study(str(study))
    deadline = time.time() + 900
    while time.time() < deadline:
        if results.is_dir() and len(list(results.rglob("*.json"))) >= 4:
            break
        if proc.poll() is not None:
            pytest.fail("the study ended before it could be killed")
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the driver and everything it started
    proc.wait(timeout=60)
    first = {str(p): p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert 4 <= len(first) < 18

    again = _study(str(study))
    out, _ = again.communicate(timeout=1200)
    assert again.returncode == 0, out[-3000:]
    trials = pd.read_parquet(tmp_path / "resume" / "trials.parquet")
    assert len(trials) == 2 * 3 * 3 and (trials.status == "ok").all()
    assert not trials.duplicated(["experiment_id", "config_id", "seed"]).any()
    after = {str(p): p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert {name: after[name] for name in first} == first  # finished trials not re-run
    assert len(after) == 18
