"""``raybench study FILE.yaml``: run a whole study on the Ray cluster (or this machine).

1. Validate the YAML (nothing starts on a bad config). Claim the study directory (a new,
   empty or raybench study directory only: :mod:`raybench.ownership`) and take its lock (one
   writer per study: :mod:`raybench.study.lock`; a lock left by a killed run is taken over
   and the Ray processes that run left behind are reported). Write ``study.yaml``,
   ``resolved_study.yaml``, ``env.txt`` and ``git.txt``.
2. Prepare data: a prepared dataset path, or synthetic data generated and preprocessed into
   ``<study>/data`` (cached, so a re-run skips it).
3. Load the prepared arrays once; ``tune.with_parameters`` puts them in the object store and
   every trial on a node reads them zero-copy.
4. One Tune ``Tuner`` runs every experiment concurrently through :class:`StudySearcher`
   (each experiment's GP / random / fixed searcher, each configuration once per seed).
   The study directory is a local (or shared) path or a remote URI such as ``s3://``
   (see :mod:`raybench.study.storage`).
5. If ``<study>/search_state.json`` exists (an interrupted run), the searchers continue from
   it: JSON data, rebuilt by replaying observations; trials that were running are handed out
   again and finished ones answer from their result records (never retrained). Tune's own
   ``tune/`` state is never restored, so nothing is unpickled from the study directory.
6. Write ``trials.parquet`` as trials finish. A run stopped before every trial finished
   (Ctrl-C) keeps its state, writes no report and exits with 130
   (:class:`StudyIncomplete`); otherwise the report is built.

A study with an ``ssl`` section first pretrains (:mod:`raybench.study.pretraining`: its own
Tune run, its searchers' state in ``pretrain_search_state.json``, the pretraining artifacts in
``<study>/artifacts``); its downstream experiments then run in the main Tune run like any
method, loading the chosen checkpoints.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from raybench.errors import RaybenchError, StudyIncomplete
from raybench.ownership import claim
from raybench.search.state import StateError
from raybench.study import processes
from raybench.study.callbacks import TRIALS_FILE, StudyProgress, TrialsWriter, finished_before
from raybench.study.lock import StudyLock
from raybench.study.multiplex import StudySearcher
from raybench.study.searchers import make_searcher, planned_configurations
from raybench.study.storage import StudyStorage
from raybench.study.trial import run_trial

#: The searchers' state (JSON), written after every change, read on a resume.
SEARCH_STATE = "search_state.json"
#: The same for the pretraining phase of a study with an ``ssl`` section.
PRETRAIN_STATE = "pretrain_search_state.json"


def _write_provenance(storage: StudyStorage, source: Path, resolved: dict) -> None:
    storage.local.mkdir(parents=True, exist_ok=True)
    storage.write_bytes("study.yaml", Path(source).read_bytes())
    storage.write_bytes("resolved_study.yaml",
                        yaml.safe_dump(resolved, sort_keys=True).encode())
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True,
                            text=True, timeout=120).stdout
    storage.write_bytes("env.txt", f"python {sys.version}\n{freeze}".encode())
    repo = Path(__file__).resolve().parents[2]
    git = []
    for args in (["rev-parse", "HEAD"], ["status", "--short"], ["diff"]):
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo,
                                 timeout=30)
            git.append(f"$ git {' '.join(args)}\n{out.stdout}")
        except (OSError, subprocess.SubprocessError):
            git.append(f"$ git {' '.join(args)}\n(unavailable)")
    storage.write_bytes("git.txt", "\n".join(git).encode())


def _check_same_study(storage: StudyStorage, resolved: dict) -> None:
    previous = storage.read_bytes("resolved_study.yaml")
    states = (SEARCH_STATE, PRETRAIN_STATE)
    if previous is not None and any(storage.read_bytes(f) is not None for f in states):
        if yaml.safe_load(previous) != yaml.safe_load(yaml.safe_dump(resolved)):
            raise RaybenchError(
                f"{storage.uri} holds a study with a different configuration; resuming it "
                "would mix results. Change `name` or `storage`, or delete that directory.")


def prepare_data(study, study_dir: Path, show: bool) -> Path:
    """The prepared dataset of a study (generated and preprocessed when synthetic)."""
    from preprocessing.pipeline import run_preprocess
    from preprocessing.synth.generator import SynthConfig, generate

    if study.data.path is not None:
        return Path(study.data.path)
    synthetic = study.data.synthetic
    raw, prepared = study_dir / "data" / "raw", study_dir / "data" / "prepared"
    if not (raw / "synthetic_manifest.json").is_file():
        generate(SynthConfig(out=raw, patients=synthetic.patients, seed=synthetic.seed,
                             image_size=synthetic.image_size))
    config = synthetic.preprocess
    run_preprocess(raw / "mimic-iv", raw / "mimic-cxr-jpg", prepared, config=config,
                   show=show)
    return prepared


def _searcher(study, experiment, space: dict, fixed: dict | None = None):
    """The searcher of ``experiment`` (:func:`raybench.study.searchers.make_searcher` over the
    search section that explores it: ``search``, or ``ssl.downstream_search``)."""
    from raybench.study.config import search_settings_for

    return make_searcher(search_settings_for(study, experiment.method), space, study.seeds)


def _init_ray(show: bool) -> None:
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Save Tune's experiment state often (default: every 10 s or more); trials that finish
    # inside the window are covered by their result records (see raybench.study.trial).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Failures are shown by the live view and recorded (with their error) in trials.parquet;
    # Tune's own tracebacks stay in the trial directories.
    for name in ("ray", "ray.tune", "ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
             log_to_driver=False, logging_level="ERROR", configure_logging=True)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _warn(message: str) -> None:
    print(f"raybench: warning: {message}", file=sys.stderr, flush=True)


def _report_previous_holder(lock: StudyLock) -> None:
    """Say that a killed run's lock was taken over, and which of its Ray processes still run."""
    previous = lock.previous
    if previous is None:
        return
    _warn(f"the previous run of this study ({previous.describe()}) ended without releasing "
          "its lock (killed?); taking over")
    leftovers = previous.leftover_processes()
    if leftovers:
        listed = ", ".join(f"{p.get('pid')} {p.get('name')}" for p in leftovers)
        pids = " ".join(str(p.get("pid")) for p in leftovers)
        _warn(f"{len(leftovers)} Ray process(es) started by that run still run on this host "
              f"({listed}); they hold CPU, memory and GPUs: stop them with `kill {pids}`")


def _ray_processes() -> list[dict]:
    """This driver's child processes (the local Ray instance), recorded in the lock so that
    a later run can report them if this driver is killed."""
    return [{"pid": p.pid, "start": p.start, "name": p.name} for p in processes.descendants()]


def _save_state(storage: StudyStorage, searcher: StudySearcher,
                name: str = SEARCH_STATE) -> None:
    storage.write_bytes(name, json.dumps(searcher.get_state(), allow_nan=False,
                                         sort_keys=True).encode())


def _load_state(storage: StudyStorage, searcher: StudySearcher, name: str = SEARCH_STATE
                ) -> int:
    """Continue the searchers from ``search_state.json`` (JSON only); returns reopened trials."""
    raw = storage.read_bytes(name)
    if raw is None:
        return 0
    where = storage.join(name)
    try:
        return searcher.load_state(json.loads(raw.decode("utf-8")), where)
    except (UnicodeDecodeError, ValueError) as exc:  # StateError is a ValueError
        reason = str(exc) if isinstance(exc, StateError) else "not valid JSON"
        raise RaybenchError(f"{where}: cannot resume the search ({reason}); move that file "
                            "away to start the search afresh") from None


def _recorded_trials(storage: StudyStorage) -> pd.DataFrame | None:
    data = storage.read_bytes(TRIALS_FILE)
    return None if data is None else pd.read_parquet(io.BytesIO(data))


def _check_complete(storage: StudyStorage, planned: dict[str, int]) -> None:
    """Raise :class:`StudyIncomplete` unless every planned trial has a row."""
    trials = _recorded_trials(storage)
    counts = {} if trials is None else trials.groupby("experiment_id")["trial_key"].nunique()
    done = sum(min(int(counts.get(e, 0)), n) for e, n in planned.items())
    total = sum(planned.values())
    if done < total:
        raise StudyIncomplete(
            f"the study stopped before it finished (interrupted): {done} of {total} trials "
            f"recorded; the state is saved in {storage.describe()}; run the same command to "
            "resume (no report was written; `raybench report` marks a partial one INCOMPLETE)")


def run_study(path: Path, overrides: list[str] = (), show: bool = True,
              report: bool = True) -> StudyStorage:
    """Run (or resume) the study described by ``path``; returns where its directory is.

    Raises :class:`RaybenchError` for a bad study file, a foreign or locked study directory,
    and :class:`StudyIncomplete` when the run stopped before every trial finished.
    """
    study, storage, resolved = _open_study(path, overrides)
    lock = StudyLock(storage.uri).acquire()
    try:
        _report_previous_holder(lock)
        _check_same_study(storage, resolved)
        _run_locked(path, study, storage, resolved, lock, show, report)
    finally:
        lock.release()
    return storage


def _open_study(path: Path, overrides) -> tuple:
    from raybench.study.config import load_study, resolved_dict

    study = load_study(Path(path), list(overrides))
    storage = StudyStorage.from_setting(study.storage)
    claim(storage.uri, "study")
    return study, storage, resolved_dict(study)


def _run_locked(path: Path, study, storage: StudyStorage, resolved: dict, lock: StudyLock,
                show: bool, report: bool) -> None:
    from ray import tune

    from raybench.data import load_prepared, load_shared, require_inputs
    from raybench.models import get_model
    from raybench.study.config import (
        expand_experiments,
        fixed_hparams_for,
        search_settings_for,
        search_space_for,
        to_train_config,
    )
    from raybench.study.ssl_plan import experiment_modalities, is_ssl_method, model_name

    _write_provenance(storage, Path(path), resolved)
    dataset = prepare_data(study, storage.local, show)
    _init_ray(show)
    lock.record(ray_processes=_ray_processes())

    experiments = expand_experiments(study)
    shared = load_shared(dataset, study.data.imputation)
    tasks = {e.task for e in experiments}
    if study.ssl is not None:
        from raybench.study.pretraining import check_ssl_tasks

        check_ssl_tasks(study, shared.manifest, str(dataset))
        tasks.add(study.ssl.pretrain_task)
    datasets = {t: load_prepared(dataset, t, study.data.imputation, shared=shared)
                for t in sorted(tasks)}
    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    pretrained = {}
    if study.ssl is not None:
        from raybench.study.pretraining import run_pretraining

        pretrained = run_pretraining(study, storage, datasets, shared.manifest, resources, show)
    info, searchers, planned = {}, {}, {}
    for e in experiments:
        model = get_model(model_name(e.method))
        require_inputs(datasets[e.task], model.inputs, e.method)  # before any trial starts
        space, fixed = search_space_for(study, e.method), fixed_hparams_for(study, e.method)
        searchers[e.experiment_id] = _searcher(study, e, space, fixed)
        planned[e.experiment_id] = (planned_configurations(search_settings_for(study, e.method),
                                                           space) * len(study.seeds))
        data = datasets[e.task]
        info[e.experiment_id] = {
            "task": e.task, "kind": data.kind, "label_names": data.label_names,
            "cohort": e.cohort, "method": e.method, "model": model.name,
            "missing_ratio": e.missing_ratio,
            "modalities": experiment_modalities(e.method, model.modalities), "fixed": fixed,
            "train_config": to_train_config(study, e, seed=0), "resources": resources,
            "selection_metric": _selection_metric(e.task),
        }
        if is_ssl_method(e.method):
            from raybench.study.pretraining import downstream_choice

            info[e.experiment_id]["pretrained"] = downstream_choice(pretrained, e)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, datasets=datasets, experiments=info,
                             storage=storage.uri),
        resources)
    searcher = StudySearcher(searchers)
    reopened = _load_state(storage, searcher)
    if reopened:
        _warn(f"{reopened} trial(s) were running when the study stopped; running them again")
    searcher.on_change = lambda: _save_state(storage, searcher)
    _save_state(storage, searcher)
    selection = {k: v["selection_metric"] for k, v in info.items()}
    resumed = finished_before(_recorded_trials(storage))
    # Always a fresh Tuner: Tuner.restore would unpickle Tune's state from the study
    # directory (tune/tuner.pkl, trial states), a code-execution risk on shared storage.
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, reuse_actors=True,
            max_concurrent_trials=study.resources.max_concurrent_trials,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name="tune", storage_path=storage.uri, verbose=0,
            failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
            callbacks=[TrialsWriter(storage, info),
                       StudyProgress(planned, selection, show=show, resumed=resumed)]))
    tuner.fit()
    _check_complete(storage, planned)
    if report:
        from raybench.report import build_report

        storage.pull()
        build_report(storage.local)
        storage.push("report")


def _selection_metric(task: str) -> str:
    from raybench.tasks import get_task

    return get_task(task).selection_metric
