"""Tune callbacks of a study: ``trials.parquet`` written as trials finish, and a live view.

Both are picklable (Tune stores them with the experiment and brings them back on resume):
they hold plain data only and rebuild files and displays in ``setup``.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import pandas as pd
from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from raybench.study.storage import StudyStorage
from raybench.study.trial import CONTROL_KEYS, trial_key

TRIALS_FILE = "trials.parquet"


class TrialsWriter(Callback):
    """Keeps ``<study>/trials.parquet`` current: one row per finished or failed trial.

    Rows are keyed by :func:`~raybench.study.trial.trial_key` (experiment, configuration,
    seed, parameters), so a configuration run again after a resume replaces its row.
    """

    def __init__(self, storage: StudyStorage, experiments: dict[str, dict]) -> None:
        self.storage = storage
        self.experiments = experiments
        self.rows: dict[str, dict] = {}

    def setup(self, **info) -> None:
        """Start from the rows already written (a resumed study keeps them)."""
        data = self.storage.read_bytes(TRIALS_FILE)
        if data is not None:
            frame = pd.read_parquet(io.BytesIO(data))
            self.rows = {r["trial_key"]: r for r in frame.to_dict("records")}

    def _row(self, trial, status: str, error: str | None) -> dict:
        config = trial.config
        info = self.experiments[config["experiment_id"]]
        result = trial.last_result or {}
        row = {
            "trial_id": trial.trial_id, "trial_key": trial_key(config),
            "experiment_id": config["experiment_id"],
            "task": info["task"], "kind": info["kind"],
            "label_names": json.dumps(info["label_names"]), "cohort": info["cohort"],
            "method": info["method"], "modalities": info["modalities"],
            "missing_ratio": float(info["missing_ratio"]),
            "config_id": int(config["config_id"]), "seed": int(config["seed"]),
            "params": json.dumps({k: v for k, v in sorted(config.items())
                                  if k not in CONTROL_KEYS}, default=str),
            "status": status, "error": error,
            "selection_metric": result.get("selection_metric", info["selection_metric"]),
            "runtime_s": result.get("runtime_s", math.nan),
            "cpu": info["resources"]["cpu"], "gpu": info["resources"].get("gpu", 0.0),
            "n_parameters": result.get("n_parameters"),
            "inference_s_per_batch": result.get("inference_s_per_batch", math.nan),
            "predictions_file": result.get("predictions_file"),
            "epochs_run": result.get("epochs_run"),
        }
        for key, value in result.items():
            if key.startswith(("val_", "test_")) and isinstance(value, (int, float)):
                row[key] = float(value)
        return row

    def _write(self) -> None:
        frame = pd.DataFrame(list(self.rows.values()))
        frame = frame.sort_values(["experiment_id", "config_id", "seed", "trial_id"])
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.storage.write_bytes(TRIALS_FILE, buffer.getvalue())

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """Record a finished trial."""
        row = self._row(trial, "ok", None)
        self.rows[row["trial_key"]] = row
        self._write()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """Record a trial that failed after its retries."""
        message = None
        if trial.error_file and Path(trial.error_file).is_file():
            lines = Path(trial.error_file).read_text().strip().splitlines()
            message = lines[-1][:500] if lines else None
        row = self._row(trial, "failed", message or "error")
        self.rows[row["trial_key"]] = row
        self._write()


PLAIN_LINE_EVERY_S = 30.0


def finished_before(trials: pd.DataFrame | None) -> dict[str, dict]:
    """What a resumed study had already finished, per experiment, from ``trials.parquet``.

    ``{experiment_id: {"keys": [trial keys], "failed": [trial keys of failed trials],
    "best": best selection value (sign: higher is better) or None}}``.
    """
    from raybench.metrics import higher_is_better

    if trials is None or trials.empty or "trial_key" not in trials.columns:
        return {}
    out = {}
    for experiment, rows in trials.groupby("experiment_id", sort=True):
        ok = rows[rows["status"] == "ok"]
        best = None
        for _, row in ok.iterrows():
            value = row.get(f"val_{row['selection_metric']}")
            if isinstance(value, int | float) and math.isfinite(value):
                value = value if higher_is_better(str(row["selection_metric"])) else -value
                best = value if best is None else max(best, value)
        out[str(experiment)] = {"keys": sorted(rows["trial_key"].astype(str)),
                                "failed": sorted(rows.loc[rows["status"] != "ok", "trial_key"]
                                                 .astype(str)), "best": best}
    return out


class StudyProgress(Callback):
    """One rich live view: experiments and trials done, running, failed, best, ETA.

    ``resumed`` (from :func:`finished_before`) counts the trials an earlier run of the study
    finished, so a resumed study shows e.g. ``66/162`` rather than ``0/162``. Trials are
    counted once by their :func:`~raybench.study.trial.trial_key`: a finished trial that a
    resume reports again (from its result record) is not counted twice.
    """

    def __init__(self, planned: dict[str, int], selection: dict[str, str], show: bool = True,
                 resumed: dict[str, dict] | None = None):
        self.planned, self.selection, self.show = planned, selection, show
        resumed = resumed or {}
        self.done_keys: dict[str, set[str]] = {e: set(r["keys"]) for e, r in resumed.items()}
        self.failed_keys: set[str] = {k for r in resumed.values() for k in r["failed"]}
        self.resumed = sum(len(keys) for keys in self.done_keys.values())
        self.running: set[str] = set()
        self.best: dict[str, float] = {e: r["best"] for e, r in resumed.items()
                                       if r.get("best") is not None}
        self.started = time.time()
        self.finished_this_run = 0
        self._live = None
        self._console = None
        self._last_line = 0.0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_live"] = state["_console"] = None
        return state

    def setup(self, **info) -> None:
        """Start the live display (also after a resume)."""
        self.started, self.finished_this_run, self.running = time.time(), 0, set()
        if not self.show:
            return
        self._console = Console(stderr=True)
        if self._console.is_terminal:
            self._live = Live(self._render(), console=self._console,
                              refresh_per_second=2, transient=False)
            self._live.start()

    def _render(self) -> Table:
        total = sum(self.planned.values())
        done = sum(len(keys) for keys in self.done_keys.values())
        finished = sum(1 for e, n in self.planned.items()
                       if len(self.done_keys.get(e, ())) >= n)
        elapsed = time.time() - self.started
        eta = "-"
        if self.finished_this_run:
            rate = elapsed / self.finished_this_run
            eta = f"{rate * max(total - done, 0) / 60:.1f} min"
        table = Table(title="raybench study", show_header=True)
        for column in ("experiments done", "trials done", "running", "failed", "elapsed",
                       "ETA"):
            table.add_column(column, justify="right")
        table.add_row(f"{finished}/{len(self.planned)}", f"{done}/{total}",
                      str(len(self.running)), str(len(self.failed_keys)),
                      f"{elapsed / 60:.1f} min", eta)
        notes = [f"{self.resumed} trials done before this resume"] if self.resumed else []
        if self.best:
            name, value = max(self.best.items(), key=lambda kv: kv[1])
            notes.append(f"best validation so far: {name} "
                         f"{self.selection.get(name, 'selection')} = {abs(value):.4f}")
        table.caption = "; ".join(notes) or None
        return table

    def _update(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        elif self._console is not None and time.time() - self._last_line >= PLAIN_LINE_EVERY_S:
            # Not a terminal (a log file, CI): a plain progress line now and then instead.
            self._last_line = time.time()
            self._console.print(self._plain_line(), soft_wrap=True)

    def _plain_line(self) -> str:
        table = self._render()
        cells = [f"{column.header} {next(iter(column.cells))}" for column in table.columns]
        caption = f"; {table.caption}" if table.caption else ""
        return "study progress: " + ", ".join(cells) + caption

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """A trial started."""
        self.running.add(trial.trial_id)
        self._update()

    def _finish(self, trial, failed: bool) -> None:
        experiment = trial.config["experiment_id"]
        self.running.discard(trial.trial_id)
        key = trial_key(trial.config)
        keys = self.done_keys.setdefault(experiment, set())
        if key not in keys:
            keys.add(key)
            self.finished_this_run += 1
        if failed:
            self.failed_keys.add(key)
        else:
            self.failed_keys.discard(key)
        value = (trial.last_result or {}).get("selection")
        if not failed and value is not None and value > -1e9:
            self.best[experiment] = max(self.best.get(experiment, -math.inf), value)
        self._update()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """A trial finished."""
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """A trial failed for good."""
        self._finish(trial, failed=True)

    def on_experiment_end(self, trials, **info) -> None:
        """Stop the live display."""
        if self._live is not None:
            self._update()
            self._live.stop()
            self._live = None
        elif self._console is not None:
            self._last_line = 0.0
            self._update()
