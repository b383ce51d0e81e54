"""``raybench study FILE.yaml``: run a whole study on the Ray cluster (or this machine).

1. Validate the YAML (nothing starts on a bad config); create the study directory with
   ``study.yaml``, ``resolved_study.yaml``, ``env.txt`` and ``git.txt``.
2. Prepare data: a prepared dataset path, or synthetic data generated and preprocessed into
   ``<study>/data`` (cached, so a re-run skips it).
3. Load the prepared arrays once; ``tune.with_parameters`` puts them in the object store and
   every trial on a node reads them zero-copy.
4. One Tune ``Tuner`` runs every experiment concurrently through :class:`StudySearcher`
   (each experiment's GP / random / fixed searcher, each configuration once per seed).
   The study directory is a local (or shared) path or a remote URI such as ``s3://``
   (see :mod:`raybench.study.storage`).
5. If ``<study>/tune`` holds an interrupted run, it is restored instead: finished trials are
   kept, unfinished ones re-run, the searchers continue from their saved state.
6. Write ``trials.parquet`` as trials finish, then the report.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from raybench.errors import RaybenchError
from raybench.study.callbacks import StudyProgress, TrialsWriter
from raybench.study.multiplex import FixedSearcher, StudySearcher
from raybench.study.storage import StudyStorage
from raybench.study.trial import run_trial


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
    from ray import tune

    previous = storage.read_bytes("resolved_study.yaml")
    if previous is not None and tune.Tuner.can_restore(storage.join("tune")):
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


def _searcher(study, experiment, space: dict, fixed: dict):
    from raybench.search.gp import GPSearcher

    search = study.search
    if search.type == "fixed" or not space:
        return FixedSearcher({}, list(study.seeds))
    initial = search.n_calls if search.type == "random" else search.n_initial_points
    return GPSearcher(space=space, metric="selection", mode="max", n_calls=search.n_calls,
                      seeds=list(study.seeds), n_initial_points=initial,
                      acq_func=getattr(search, "acq_func", "gp_hedge"),
                      random_state=getattr(search, "random_state", 0))


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


def run_study(path: Path, overrides: list[str] = (), show: bool = True,
              report: bool = True) -> StudyStorage:
    """Run (or resume) the study described by ``path``; returns where its directory is."""
    from ray import tune

    from raybench.data import load_prepared, load_shared, require_inputs
    from raybench.models import get_model
    from raybench.study.config import (
        expand_experiments,
        fixed_hparams_for,
        load_study,
        resolved_dict,
        search_space_for,
        to_train_config,
    )

    study = load_study(Path(path), list(overrides))
    resolved = resolved_dict(study)
    storage = StudyStorage.from_setting(study.storage)
    _check_same_study(storage, resolved)
    _write_provenance(storage, Path(path), resolved)
    dataset = prepare_data(study, storage.local, show)
    _init_ray(show)

    experiments = expand_experiments(study)
    shared = load_shared(dataset, study.data.imputation)
    tasks = sorted({e.task for e in experiments})
    datasets = {t: load_prepared(dataset, t, study.data.imputation, shared=shared) for t in tasks}
    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    info, searchers, planned = {}, {}, {}
    for e in experiments:
        model = get_model(e.method)
        require_inputs(datasets[e.task], model.inputs, e.method)  # before any trial starts
        space, fixed = search_space_for(study, e.method), fixed_hparams_for(study, e.method)
        searchers[e.experiment_id] = _searcher(study, e, space, fixed)
        n_configs = 1 if (study.search.type == "fixed" or not space) else study.search.n_calls
        planned[e.experiment_id] = n_configs * len(study.seeds)
        data = datasets[e.task]
        info[e.experiment_id] = {
            "task": e.task, "kind": data.kind, "label_names": data.label_names,
            "cohort": e.cohort, "method": e.method, "missing_ratio": e.missing_ratio,
            "modalities": "+".join(sorted(model.modalities)), "fixed": fixed,
            "train_config": to_train_config(study, e, seed=0), "resources": resources,
            "selection_metric": _selection_metric(e.task),
        }
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, datasets=datasets, experiments=info,
                             storage=storage.uri),
        resources)
    tune_dir = storage.join("tune")
    if tune.Tuner.can_restore(tune_dir):
        tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_errored=False)
    else:
        selection = {k: v["selection_metric"] for k, v in info.items()}
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=StudySearcher(searchers), num_samples=-1, reuse_actors=True,
                max_concurrent_trials=study.resources.max_concurrent_trials,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=tune.RunConfig(
                name="tune", storage_path=storage.uri, verbose=0,
                failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
                callbacks=[TrialsWriter(storage, info), StudyProgress(planned, selection,
                                                                         show=show)]))
    tuner.fit()
    if report:
        from raybench.report import build_report

        storage.pull()
        build_report(storage.local)
        storage.push("report")
    return storage


def _selection_metric(task: str) -> str:
    from raybench.tasks import get_task

    return get_task(task).selection_metric
