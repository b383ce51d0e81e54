"""Phase 1 of a study with an ``ssl`` section: pretrain once, probe every checkpoint, select.

1. One Ray Tune run (``<study>/tune_pretrain``, its searchers' state in
   ``pretrain_search_state.json``) trains every (SSL method, pretraining configuration of
   ``ssl.pretrain_search``, seed) with :func:`raybench.pretrain.pretrain`
   on the paired training samples of ``ssl.pretrain_task``. Each run is an artifact
   (:mod:`raybench.study.artifacts`) keyed by (method, pretraining hyperparameters, seed,
   cohort, dataset fingerprint, schedule): a finished one is never trained again, an
   unfinished one continues from its last snapshot.
2. Every ``probe_every`` epochs the checkpoint is stored and scored by linear probes on cached
   frozen features (:class:`raybench.ssl_probe.CheckpointProber`) for every downstream
   (task, cohort, modality): validation only.
3. :func:`select_pretraining` then picks, per method and (task, cohort, modality), the
   pretraining configuration with the best mean over seeds of each seed's best checkpoint
   score, and per seed that checkpoint. ``<study>/pretraining.json`` records the runs and the
   choice; the downstream trials load the chosen checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from raybench.data import PreparedTask
from raybench.errors import RaybenchError
from raybench.metrics import higher_is_better
from raybench.study.artifacts import Artifact, PretrainSpec
from raybench.study.trial import CONTROL_KEYS

__all__ = ["PRETRAIN_TUNE_DIR", "SUMMARY_FILE", "ArtifactCheckpoints", "pretrain_plans",
           "run_pretrain_trial", "select_pretraining"]

PRETRAIN_TUNE_DIR = "tune_pretrain"
SUMMARY_FILE = "pretraining.json"


class ArtifactCheckpoints:
    """Stores each checkpoint in an artifact, probes it and keeps the resume snapshot."""

    def __init__(self, artifact: Artifact, prober) -> None:
        self.artifact, self.prober = artifact, prober
        self.probes: dict[str, dict[str, float]] = {}
        self.checkpoints: list[int] = []

    def save(self, stage: str, epoch: int, model, snapshot: dict) -> None:
        """Checkpoint, probe scores, then the snapshot that covers both."""
        self.artifact.write_checkpoint(epoch, model.pretrained_state())
        for key, score in self.prober(model).items():
            self.probes.setdefault(key, {})[str(epoch)] = float(score)
        self.checkpoints.append(int(epoch))
        self.artifact.write_snapshot({**snapshot, "probes": self.probes,
                                      "checkpoints": self.checkpoints,
                                      "probe_seconds": self.prober.seconds})

    def resume(self, stage: str) -> dict | None:
        """The last snapshot (with the probe scores so far), or None."""
        snapshot = self.artifact.read_snapshot()
        if snapshot is not None:
            self.probes = {k: dict(v) for k, v in snapshot["probes"].items()}
            self.checkpoints = [int(e) for e in snapshot["checkpoints"]]
            self.prober.seconds = float(snapshot["probe_seconds"])
        return snapshot


def pretrain_plans(study, manifest: dict) -> dict[str, dict]:
    """What each pretraining experiment (``pretrain-<method>``) needs; picklable."""
    from raybench.models import get_model
    from raybench.ssl_probe import ProbeConfig
    from raybench.study.artifacts import dataset_fingerprint
    from raybench.study.config import Experiment, to_train_config
    from raybench.study.ssl_plan import pretrain_fixed, ssl_tasks

    ssl = study.ssl
    fingerprint = dataset_fingerprint(manifest, study.data.imputation)
    probe = ProbeConfig(**ssl.probe.model_dump())
    plans = {}
    for name in ssl.methods:
        cfg = to_train_config(study, Experiment(ssl.pretrain_task, "matched", name, 0.0), 0)
        schedule = {k: getattr(cfg, k) for k in ("ssl_epochs", "ssl_batch_size",
                                                  "ssl_patience", "probe_every",
                                                  "max_train_batches", "max_val_samples")}
        schedule.update(augment=cfg.loader.augment, crop=cfg.loader.crop,
                        max_len=cfg.loader.max_len)
        plans[f"pretrain-{name}"] = {
            "method": name, "fixed": pretrain_fixed(study, name), "train_config": cfg,
            "keys": list(get_model(name).pretrain_keys()), "dataset": fingerprint,
            "cohort": {"task": ssl.pretrain_task, "samples": "paired",
                       "imputation": study.data.imputation},
            "schedule": schedule, "pretrain_task": ssl.pretrain_task,
            "tasks": list(ssl_tasks(study)), "cohorts": list(study.cohorts),
            "modalities": list(ssl.modalities), "probe": probe,
        }
    return plans


def _spec(plan: dict, hparams: dict, seed: int) -> PretrainSpec:
    return PretrainSpec(method=plan["method"], hparams={k: hparams[k] for k in plan["keys"]},
                        seed=seed, cohort=plan["cohort"], dataset=plan["dataset"],
                        schedule=plan["schedule"])


def run_pretrain_trial(config: dict, datasets: dict[str, PreparedTask], plans: dict[str, dict],
                       storage: str) -> None:
    """Tune trainable: pretrain one (method, configuration, seed), or report the finished
    artifact without training when it exists."""
    import torch
    from ray import tune

    from raybench.pretrain import pretrain
    from raybench.ssl_probe import CheckpointProber, probe_sets

    plan = plans[config["experiment_id"]]
    seed = int(config["seed"])
    params = {k: v for k, v in config.items() if k not in CONTROL_KEYS}
    hparams = {**plan["fixed"], **params}
    spec = _spec(plan, hparams, seed)
    artifact = Artifact(storage, spec.key())
    record = artifact.done()
    if record is None:
        artifact.write_json("spec.json", {**dataclasses.asdict(spec), "key": spec.key()})
        cfg = dataclasses.replace(plan["train_config"], seed=seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sets = probe_sets(datasets, plan["tasks"], plan["cohorts"], plan["probe"], seed)
        prober = CheckpointProber(sets, plan["modalities"], plan["probe"], cfg.loader, seed,
                                  device)
        checkpoints = ArtifactCheckpoints(artifact, prober)
        started = time.perf_counter()
        result = pretrain(datasets[plan["pretrain_task"]], plan["method"], hparams, cfg,
                          checkpoints)
        stage_history = [h for h in result.history if "val_ssl_loss" in h]
        best_epoch = next(iter(result.best_epochs.values()))
        losses = {h["epoch"]: h["val_ssl_loss"] for h in stage_history}
        record = {
            "key": spec.key(), "method": plan["method"], "config_id": int(config["config_id"]),
            "seed": seed, "params": params, "checkpoints": checkpoints.checkpoints,
            "probes": checkpoints.probes, "history": stage_history,
            "best_epoch": best_epoch, "best_val_ssl_loss": losses.get(best_epoch, math.nan),
            "epochs_run": len(stage_history), "pretrain_seconds": result.train_seconds,
            "probe_seconds": prober.seconds, "wall_seconds": time.perf_counter() - started,
        }
        artifact.finish(record)
    loss = record.get("best_val_ssl_loss", math.nan)
    tune.report({"selection": -loss if math.isfinite(loss) else -1e9, "artifact": record["key"],
                 "epochs_run": record["epochs_run"], "best_epoch": record["best_epoch"],
                 "pretrain_seconds": record["pretrain_seconds"],
                 "probe_seconds": record["probe_seconds"]})


def _best_checkpoint(scores: dict[str, float], sign: float) -> tuple[int, float] | None:
    """``(epoch, score)`` of the best finite score (ties: the earliest epoch)."""
    finite = [(int(e), v) for e, v in scores.items() if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return min(finite, key=lambda ev: (-sign * ev[1], ev[0]))


def _by_ssl_loss(record: dict) -> tuple[int, float] | None:
    """The stored checkpoint with the lowest validation SSL loss, as ``(epoch, -loss)``."""
    losses = {h["epoch"]: h["val_ssl_loss"] for h in record["history"]}
    scores = {str(e): -losses.get(e, math.nan) for e in record["checkpoints"]}
    return _best_checkpoint(scores, 1.0)


def _choose(configs: dict[int, dict[int, dict]], seeds: list[int], key: str, sign: float
            ) -> dict[str, Any] | None:
    complete = {c: runs for c, runs in sorted(configs.items()) if all(s in runs for s in seeds)}
    for by in ("probe", "val_ssl_loss"):
        candidates = []
        for config_id, runs in complete.items():
            if by == "probe":
                best = {s: _best_checkpoint(runs[s]["probes"].get(key, {}), sign) for s in seeds}
                direction = sign
            else:
                best, direction = {s: _by_ssl_loss(runs[s]) for s in seeds}, 1.0
            if any(b is None for b in best.values()):
                continue
            mean = float(np.mean([b[1] for b in best.values()]))
            candidates.append((-direction * mean, config_id, mean, best))
        if candidates:
            _, config_id, mean, best = min(candidates, key=lambda c: (c[0], c[1]))
            runs = complete[config_id]
            return {"config_id": config_id, "params": runs[seeds[0]]["params"], "by": by,
                    "val_score": mean,
                    "seeds": {str(s): {"artifact": runs[s]["key"], "epoch": best[s][0],
                                       "val_score": best[s][1]} for s in seeds}}
    return None


def select_pretraining(records: Iterable[dict], seeds: Iterable[int], keys: Iterable[str],
                       metric_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The chosen pretraining of every method and probe key (``task|cohort|modality``).

    A configuration is a candidate when every seed has a finished run. Normally (``by:
    probe``) its score is the mean over seeds of each seed's best checkpoint score of the
    validation linear probe; the best configuration wins (ties: lowest ``config_id``) and
    each seed keeps its own best checkpoint. When no candidate has a finite probe score for
    every seed (e.g. a validation split with one class), the choice falls back to the lowest
    validation SSL loss among the stored checkpoints (``by: val_ssl_loss``). ``metric_of``
    maps a task to its selection metric (for the direction). Returns ``{method: {key:
    {"config_id", "params", "by", "val_score", "seeds": {seed: {"artifact", "epoch",
    "val_score"}}}}}``; a key without any candidate is absent.
    """
    seeds = [int(s) for s in seeds]
    by_method: dict[str, dict[int, dict[int, dict]]] = {}
    for record in records:
        configs = by_method.setdefault(record["method"], {})
        configs.setdefault(int(record["config_id"]), {})[int(record["seed"])] = record
    chosen: dict[str, dict[str, Any]] = {}
    for method, configs in sorted(by_method.items()):
        for key in sorted(keys):
            sign = 1.0 if higher_is_better(metric_of[key.split("|")[0]]) else -1.0
            choice = _choose(configs, seeds, key, sign)
            if choice is not None:
                chosen.setdefault(method, {})[key] = choice
    return chosen


def run_summary(record: dict) -> dict:
    """A pretraining run for ``pretraining.json`` and the report (no probe tables)."""
    epochs = max(record["epochs_run"], 1)
    return {k: record[k] for k in ("key", "method", "config_id", "seed", "params",
                                   "best_epoch", "best_val_ssl_loss", "epochs_run",
                                   "checkpoints", "pretrain_seconds", "probe_seconds")} | {
        "seconds_per_epoch": record["pretrain_seconds"] / epochs}


def summary_bytes(runs: list[dict], selection: dict, failed: int) -> bytes:
    """``pretraining.json``: the finished runs, how many failed, and the selection."""
    body = {"runs": sorted((run_summary(r) for r in runs),
                           key=lambda r: (r["method"], r["config_id"], r["seed"])),
            "failed_runs": failed, "selection": selection}
    return json.dumps(body, indent=1, sort_keys=True, default=str).encode()


def downstream_choice(selection: dict, experiment) -> dict:
    """What a downstream experiment (``<method>/<evaluation>/<modality>``) loads: its probe
    key and the chosen pretraining (None when no configuration finished for every seed)."""
    from raybench.ssl_probe import probe_key

    method, _, modality = experiment.method.split("/")
    key = probe_key(experiment.task, experiment.cohort, modality)
    return {"key": key, "choice": selection.get(method, {}).get(key)}


def require_selection(choice: dict | None, method: str, key: str, seed: int) -> dict:
    """The chosen run of one downstream trial; a clear error when none finished."""
    if choice is None or str(seed) not in choice.get("seeds", {}):
        raise RaybenchError(f"{method}: no pretraining configuration finished for every seed "
                            f"(needed for {key}); see pretraining.json")
    return choice["seeds"][str(seed)]


def check_ssl_tasks(study, manifest: dict, dataset: str) -> None:
    """Refuse an ``ssl`` section naming a task that has no labels in the prepared dataset."""
    from raybench.study.ssl_plan import ssl_tasks

    prepared = set(manifest.get("tasks", {}))
    named = [("ssl.pretrain_task", study.ssl.pretrain_task)]
    named += [("ssl.tasks" if study.ssl.tasks else "tasks", t) for t in ssl_tasks(study)]
    for field, task in named:
        if task not in prepared:
            raise RaybenchError(f"{field}: task {task!r} has no labels in the prepared dataset "
                                f"{dataset} (it has: {', '.join(sorted(prepared))})")


def _finished(study, plans: dict, searcher, storage) -> tuple[list[dict], int, int, dict]:
    """Finished pretraining runs (their records), failed and missing (configuration, seed)
    pairs, and what each experiment finished (for the progress view), from the searchers."""
    from raybench.study.trial import trial_key

    records, failed, missing, done = [], 0, 0, {}
    for experiment, sub in sorted(searcher.searchers.items()):
        plan, history = plans[experiment], sub.history()
        keys, bad = [], []
        missing += max(0, plan["planned"] - len(history) * len(study.seeds))
        for entry in history:
            for seed in study.seeds:
                config = {"experiment_id": experiment, "config_id": entry["config_id"],
                          "seed": seed, **entry["params"]}
                if seed not in entry["metrics"]:
                    missing += 1
                    continue
                keys.append(trial_key(config))
                spec = _spec(plan, {**plan["fixed"], **entry["params"]}, seed)
                record = (Artifact(storage.uri, spec.key()).done()
                          if entry["metrics"][seed] is not None else None)
                if record is None:
                    failed += 1
                    bad.append(keys[-1])
                    continue
                # two configurations with equal hyperparameters share one artifact
                records.append({**record, "key": spec.key(),  # computed, not read
                                "config_id": int(entry["config_id"]),
                                "params": dict(entry["params"])})
        done[experiment] = {"keys": keys, "failed": bad, "best": None}
    return records, failed, missing, done


def run_pretraining(study, storage, datasets: dict[str, PreparedTask], manifest: dict,
                    resources: dict, show: bool = True) -> dict[str, dict[str, Any]]:
    """Phase 1 (see the module docstring); returns :func:`select_pretraining`'s choice.

    Like the main phase, the searchers' state is JSON (``pretrain_search_state.json``) and
    the Tuner is always a fresh one; finished runs answer from their artifacts. Raises
    :class:`~raybench.errors.StudyIncomplete` when the phase stopped before every run
    finished (Ctrl-C).
    """
    from ray import tune

    from raybench.errors import StudyIncomplete
    from raybench.ssl_probe import probe_key
    from raybench.study.callbacks import StudyProgress
    from raybench.study.multiplex import StudySearcher
    from raybench.study.runner import PRETRAIN_STATE, _load_state, _save_state, _warn
    from raybench.study.searchers import make_searcher, planned_configurations
    from raybench.study.ssl_plan import pretrain_space, ssl_tasks
    from raybench.tasks import get_task

    plans = pretrain_plans(study, manifest)
    searchers, planned = {}, {}
    for experiment_id, plan in plans.items():
        space = pretrain_space(study, plan["method"])
        searchers[experiment_id] = make_searcher(study.ssl.pretrain_search, space, study.seeds)
        planned[experiment_id] = plan["planned"] = (
            planned_configurations(study.ssl.pretrain_search, space) * len(study.seeds))
    searcher = StudySearcher(searchers)
    reopened = _load_state(storage, searcher, PRETRAIN_STATE)
    if reopened:
        _warn(f"{reopened} pretraining run(s) were running when the study stopped; they "
              "continue from their last checkpoint")
    searcher.on_change = lambda: _save_state(storage, searcher, PRETRAIN_STATE)
    _save_state(storage, searcher, PRETRAIN_STATE)
    resumed = _finished(study, plans, searcher, storage)[3]
    trainable = tune.with_resources(
        tune.with_parameters(run_pretrain_trial, datasets=datasets, plans=plans,
                             storage=storage.uri), resources)
    # a fresh Tuner, never Tuner.restore (no pickle is read from the study directory)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, reuse_actors=True,
            max_concurrent_trials=study.resources.max_concurrent_trials,
            trial_dirname_creator=lambda trial: f"pretrain_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=PRETRAIN_TUNE_DIR, storage_path=storage.uri, verbose=0,
            failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
            callbacks=[StudyProgress(planned, {k: "val SSL loss" for k in planned},
                                     show=show, resumed=resumed)]))
    tuner.fit()
    records, failed, missing, _ = _finished(study, plans, searcher, storage)
    if missing:
        raise StudyIncomplete(
            f"the study stopped during pretraining (interrupted): {missing} of "
            f"{sum(planned.values())} pretraining runs unfinished; the state is saved in "
            f"{storage.describe()}; run the same command to resume")
    keys = [probe_key(t, c, m) for t in ssl_tasks(study) for c in study.cohorts
            for m in study.ssl.modalities if m != "cxr" or c == "matched"]
    metric_of = {t: get_task(t).selection_metric for t in ssl_tasks(study)}
    selection = select_pretraining(records, study.seeds, keys, metric_of)
    storage.write_bytes(SUMMARY_FILE, summary_bytes(records, selection, failed))
    return selection
