"""The Ray Tune trainable of a study: one (configuration, seed) of one experiment.

Prepared data arrive through ``tune.with_parameters`` (put in the object store once and read
zero-copy by every trial on a node). The trial trains with validation-only selection, writes
its test predictions to ``<study>/predictions/<trial_id>.parquet`` and reports one result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time

from raybench.data import PreparedTask
from raybench.metrics import higher_is_better
from raybench.study.storage import read_bytes, write_bytes
from raybench.trainer import TrainConfig, train_and_evaluate

CONTROL_KEYS = ("experiment_id", "seed", "config_id")


def _pretrained(experiment: dict, seed: int, storage: str) -> tuple[dict, dict, dict]:
    """The chosen pretraining checkpoint of a downstream SSL trial: its state, the searched
    pretraining hyperparameters it was trained with, and where it came from."""
    from raybench.study.artifacts import Artifact
    from raybench.study.pretraining import require_selection

    pretrained = experiment["pretrained"]
    run = require_selection(pretrained["choice"], experiment["method"], pretrained["key"], seed)
    state = Artifact(storage, run["artifact"]).load_checkpoint(run["epoch"])
    origin = {"pretrain_artifact": run["artifact"], "pretrain_epoch": int(run["epoch"]),
              "pretrain_val_score": float(run["val_score"])}
    return state, dict(pretrained["choice"]["params"]), origin


def trial_key(config: dict) -> str:
    """Stable name of a trial's outputs: experiment, configuration, seed, parameter hash."""
    params = {k: v for k, v in sorted(config.items()) if k not in CONTROL_KEYS}
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return (f"{config['experiment_id']}/c{int(config['config_id']):03d}"
            f"-s{int(config['seed'])}-{digest[:10]}")


def run_trial(config: dict, datasets: dict[str, PreparedTask], experiments: dict[str, dict],
              storage: str) -> None:
    """Train and evaluate one trial, then report its metrics to Tune.

    The result is first recorded in ``<study>/results/<key>.json`` (see :func:`trial_key`).
    Tune saves its experiment state only every few seconds, so after a driver crash it may
    start again a trial that had in fact finished, or the restored searcher may suggest the
    same configuration again under a new trial id; either finds the record and reports it
    without retraining.
    """
    from ray import tune

    key = trial_key(config)
    record = read_bytes(storage, f"results/{key}.json")
    if record is not None:
        tune.report(json.loads(record))
        return
    experiment = experiments[config["experiment_id"]]
    params = {k: v for k, v in config.items() if k not in CONTROL_KEYS}
    train_config: TrainConfig = dataclasses.replace(experiment["train_config"],
                                                    seed=int(config["seed"]))
    started = time.perf_counter()
    state, pretrain_params, origin = None, {}, {}
    if "pretrained" in experiment:  # a downstream SSL experiment: load the chosen checkpoint
        state, pretrain_params, origin = _pretrained(experiment, int(config["seed"]), storage)
    result = train_and_evaluate(datasets[experiment["task"]],
                                experiment.get("model", experiment["method"]),
                                {**experiment["fixed"], **pretrain_params, **params},
                                train_config, pretrained=state)
    buffer = io.BytesIO()
    result.predictions.to_parquet(buffer, index=False)
    relpath = f"predictions/{key}.parquet"
    write_bytes(storage, relpath, buffer.getvalue())
    value = result.val_metrics.get(result.selection_metric, math.nan)
    selection = value if higher_is_better(result.selection_metric) else -value
    metrics = {f"val_{k}": v for k, v in result.val_metrics.items()}
    metrics.update({f"test_{k}": v for k, v in result.test_metrics.items()})
    metrics.update({
        "selection": selection if math.isfinite(selection) else -1e9,
        "selection_metric": result.selection_metric,
        "runtime_s": time.perf_counter() - started,
        "n_parameters": result.n_parameters,
        "inference_s_per_batch": result.inference_seconds_per_batch,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "predictions_file": relpath,
        **origin,
    })
    write_bytes(storage, f"results/{key}.json", json.dumps(metrics).encode())
    tune.report(metrics)
