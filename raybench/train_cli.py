"""``raybench train``: one run of one method on one task, locally — the debug path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from raybench.data import LoaderConfig, load_prepared
from raybench.errors import RaybenchError
from raybench.models import get_model
from raybench.trainer import TrainConfig, train_and_evaluate

RUN_KEYS = {"imputation": "medmod"}


def parse_overrides(pairs: list[str]) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RaybenchError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def split_overrides(method: str, overrides: dict) -> tuple[dict, TrainConfig, dict]:
    """Route each override to the model, the trainer, the loader or the run; unknown raises."""
    model_keys = set(get_model(method).default_hparams())
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"loader"}
    loader_keys = {f.name for f in dataclasses.fields(LoaderConfig)}
    model, train, loader, run = {}, {}, {}, dict(RUN_KEYS)
    for key, value in overrides.items():
        if key in model_keys:
            model[key] = value
        elif key in train_keys:
            train[key] = tuple(value) if isinstance(value, list) else value
        elif key in loader_keys:
            loader[key] = tuple(value) if isinstance(value, list) else value
        elif key in run:
            run[key] = value
        elif key in ("ssl_eval", "ssl_modality", "probe_layer"):
            raise RaybenchError(f"{key}: {method} is supervised; {key} applies to the "
                                "self-supervised methods (convirt, vicreg, align)")
        else:
            valid = sorted(model_keys | train_keys | loader_keys | set(run))
            raise RaybenchError(f"unknown setting {key!r} for method {method!r}; "
                                f"valid: {', '.join(valid)}")
    return model, TrainConfig(**train, loader=LoaderConfig(**loader)), run


def run_train(task: str, method: str, data: Path, overrides: list[str],
              output: Path | None = None) -> dict:
    """Train, print validation and test metrics, optionally save them and the predictions."""
    model, config, run = split_overrides(method, parse_overrides(overrides))
    prepared = load_prepared(data, task, imputation=run["imputation"])
    result = train_and_evaluate(prepared, method, model, config)
    table = Table(title=f"{method} on {task} (best epoch {result.best_epoch} of "
                        f"{result.epochs_run}, selected on validation {result.selection_metric})")
    table.add_column("metric")
    table.add_column("validation", justify="right")
    table.add_column("test", justify="right")
    for key, value in result.test_metrics.items():
        if "/" not in key:
            table.add_row(key, f"{result.val_metrics.get(key, float('nan')):.4f}", f"{value:.4f}")
    Console().print(table)
    summary = {"task": task, "method": method, "val": result.val_metrics,
               "test": result.test_metrics, "best_epoch": result.best_epoch,
               "n_parameters": result.n_parameters, "train_seconds": result.train_seconds,
               "config": result.config}
    if output:
        output.mkdir(parents=True, exist_ok=True)
        (output / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        result.predictions.to_parquet(output / "predictions.parquet", index=False)
    return summary
