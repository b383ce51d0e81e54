"""``raybench study`` end to end: concurrency across experiments, failures, kill -9 resume."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
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
search: {{type: gp, n_calls: {n_calls}, n_initial_points: {n_initial}}}
seeds: {seeds}
training: {{epochs: 1, max_train_batches: 4}}
resources: {{cpu: 1, max_failures: 1}}
"""


def _write(tmp_path: Path, name: str, extra: str = "", seeds: str = "[0, 1, 2]",
           n_calls: int = 3, n_initial: int = 2) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, storage=tmp_path / name, extra=extra, seeds=seeds,
                                 n_calls=n_calls, n_initial=n_initial))
    return path


def _study(*args: str, report: bool = False, **kw) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS")
    return subprocess.Popen([sys.executable, "-m", "raybench.cli", "study", *args,
                             *([] if report else ["--no-report"])], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, **kw)


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


class _Planted:
    """Unpickling this runs code: it creates the file named by ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _wait_for_results(proc: subprocess.Popen, results: Path, at_least: int) -> None:
    deadline = time.time() + 900
    while time.time() < deadline:
        if results.is_dir() and len(list(results.rglob("*.json"))) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail("the study ended before it could be stopped:\n"
                        + proc.communicate()[0][-3000:])
        time.sleep(0.5)
    pytest.fail("no results in time")


def _wait_for_ray(proc: subprocess.Popen, lock_file: Path) -> dict:
    """The lock of ``proc`` once it records the Ray processes it started."""
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            lock = json.loads(lock_file.read_text())
        except (OSError, ValueError):
            lock = {}
        if lock.get("pid") == proc.pid and lock.get("ray_processes"):
            return lock
        if proc.poll() is not None:
            pytest.fail("the study ended before it started Ray:\n"
                        + proc.communicate()[0][-3000:])
        time.sleep(0.2)
    pytest.fail("Ray not started in time")


def test_interrupted_and_killed_study_resumes_with_nothing_lost(tmp_path):
    """Ctrl-C, then kill -9 of the driver alone, then a resume that finishes the study.

    Ctrl-C: exit 130, state saved, no report. kill -9: the next run takes the dead driver's
    lock over and reports the Ray processes it left behind. Planted pickles in ``tune/`` are
    never loaded. Nothing is trained twice, nothing is lost, the live view counts the trials
    finished before the resume.
    """
    study = _write(tmp_path, "resume", seeds="[0, 1]", n_calls=2, n_initial=1)
    total = 2 * 2 * 2  # experiments x configurations x seeds
    root = tmp_path / "resume"
    results = root / "results"
    first = _study(str(study), report=True)
    _wait_for_results(first, results, 2)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 130, out[-3000:]
    assert "raybench: the study stopped before it finished (interrupted)" in out
    assert not (root / "report").exists()
    assert (root / "search_state.json").is_file()
    assert len(pd.read_parquet(root / "trials.parquet")) < total

    sentinel = tmp_path / "code-ran"
    evil = pickle.dumps(_Planted(sentinel))
    for name in ("tuner.pkl", "searcher-state-2000-01-01_00-00-00.pkl",
                 "search_gen_state-2000-01-01_00-00-00.json"):
        (root / "tune" / name).write_bytes(evil)

    second = _study(str(study))
    lock = _wait_for_ray(second, root / ".raybench-lock.json")
    os.kill(second.pid, signal.SIGKILL)  # kill -9 of the driver alone: its Ray processes stay
    second.wait(timeout=60)
    try:
        finished = {str(p): p.stat().st_mtime_ns for p in results.rglob("*.json")}
        assert 2 <= len(finished) < total
        third = _study(str(study))
        out, _ = third.communicate(timeout=1200)
        assert third.returncode == 0, out[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):  # what the killed driver left behind
            os.killpg(second.pid, signal.SIGKILL)
    assert (f"the previous run of this study (host {lock['host']}, PID {second.pid}, since "
            f"{lock['since']}) ended without releasing its lock (killed?); taking over") in out
    assert "Ray process(es) started by that run still run on this host" in out
    assert re.search(rf"trials done {total}/{total}.*\d+ trials done before this resume", out)
    assert not sentinel.exists()  # no pickle from the study directory was loaded
    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == total and (trials.status == "ok").all()
    assert not trials.duplicated(["experiment_id", "config_id", "seed"]).any()
    after = {str(p): p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert {name: after[name] for name in finished} == finished  # finished trials not re-run
    assert len(after) == total
    assert not (root / ".raybench-lock.json").exists()  # released at the end


def test_progress_counts_the_trials_finished_before_a_resume():
    from types import SimpleNamespace

    from raybench.study.callbacks import StudyProgress, finished_before
    from raybench.study.trial import trial_key

    configs = [{"experiment_id": "e", "config_id": c, "seed": s, "lr": 0.1 * c}
               for c in range(22) for s in range(3)]  # 66 trials done before the resume
    frame = pd.DataFrame([{"trial_key": trial_key(c), "experiment_id": "e", "status": "ok",
                           "selection_metric": "auprc", "val_auprc": 0.5} for c in configs])
    progress = StudyProgress({"e": 162}, {"e": "auprc"}, show=False,
                             resumed=finished_before(frame))
    assert "trials done 66/162" in progress._plain_line()
    assert "66 trials done before this resume" in progress._plain_line()
    again = SimpleNamespace(trial_id="t1", config=configs[0], last_result={"selection": 0.6})
    progress.on_trial_complete(0, [], again)  # a finished trial answered from its record
    assert "trials done 66/162" in progress._plain_line()
    new = {"experiment_id": "e", "config_id": 22, "seed": 0, "lr": 2.2}
    progress.on_trial_complete(0, [], SimpleNamespace(trial_id="t2", config=new,
                                                      last_result={"selection": 0.7}))
    assert "trials done 67/162" in progress._plain_line()
