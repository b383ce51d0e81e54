"""The GP searcher's configurations and its JSON state: save, load by replay, reopen.

:class:`GPStateMixin` gives :class:`raybench.search.gp.GPSearcher` its ``save``/``restore``
(JSON files, never pickles), ``get_state``/``set_state`` (JSON data) and ``reopen_live``. The
optimiser is not stored: ``set_state`` builds a fresh one from the saved settings and replays
the logged ``ask``/``tell`` calls, which leaves it in exactly the state it had (the GP fits
and the optimiser's RNG are deterministic given the same calls), so the restored searcher
proposes exactly what the uninterrupted one would.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raybench.search.state import (
    StateError,
    finite_or_none,
    int_keys,
    plain,
    read_json_state,
    rng_from_json,
    rng_to_json,
    write_json_state,
)

__all__ = ["STATE_VERSION", "GPStateMixin", "SeedConfig"]

logger = logging.getLogger("raybench.search.gp")

STATE_VERSION = 2


@dataclass
class SeedConfig:
    """One proposed configuration and the fate of its seed trials."""

    config_id: int
    x: list
    params: dict[str, Any]
    seeds: list[int]
    unassigned: list[int]
    metrics: dict[int, float | None] = field(default_factory=dict)
    status: str = "running"  # running | done | failed
    mean: float | None = None
    objective: float | None = None  # the value told to skopt (minimised), None until told

    def to_json(self) -> dict:
        """Plain JSON data (seed keys as strings)."""
        return {"config_id": self.config_id, "x": plain(self.x), "params": plain(self.params),
                "seeds": list(self.seeds), "unassigned": list(self.unassigned),
                "metrics": {str(k): v for k, v in self.metrics.items()},
                "status": self.status, "mean": self.mean, "objective": self.objective}

    @classmethod
    def from_json(cls, data: Mapping) -> SeedConfig:
        """Parse and check :meth:`to_json` output."""
        where = f"config {data['config_id']}"
        metrics = {seed: finite_or_none(v, f"{where} metrics")
                   for seed, v in int_keys(data["metrics"], f"{where} metrics").items()}
        status = str(data["status"])
        if status not in ("running", "done", "failed"):
            raise StateError(f"{where}: unknown status {status!r}")
        return cls(config_id=int(data["config_id"]), x=list(data["x"]),
                   params=dict(data["params"]), seeds=[int(s) for s in data["seeds"]],
                   unassigned=[int(s) for s in data["unassigned"]], metrics=metrics,
                   status=status, mean=finite_or_none(data["mean"], f"{where} mean"),
                   objective=finite_or_none(data["objective"], f"{where} objective"))


class GPStateMixin:
    """JSON state of a ``GPSearcher`` (needs its ``_``-prefixed attributes; see gp.py)."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"  # Tune's file name: JSON, never a pickle

    def save(self, checkpoint_path: str) -> None:
        """Write the complete searcher state to ``checkpoint_path`` as JSON."""
        write_json_state(checkpoint_path, self.get_state())

    def restore(self, checkpoint_path: str) -> None:
        """Load a JSON state written by :meth:`save` (it replaces every setting and result).

        Raises :class:`~raybench.search.state.StateError` for anything that is not such a
        JSON state; nothing is unpickled.
        """
        self.set_state(read_json_state(checkpoint_path))

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments, as JSON data (a resumed study checks they match)."""
        return {"space": self._space, "metric": self._metric, "mode": self._mode,
                "n_calls": self._n_calls, "seeds": list(self._seeds),
                "n_initial_points": self._n_initial_points, "acq_func": self._acq_func,
                "random_state": self._random_state, "fixed": plain(self._fixed),
                "max_concurrent": self._max_concurrent, "lie_strategy": self._lie_strategy}

    def get_state(self) -> dict:
        """The whole state as JSON data: settings, configurations, trials in flight,
        counters, RNG state and the optimiser's log of asks and tells."""
        return {"version": STATE_VERSION, "kind": "gp", "settings": self.settings,
                "configs": [c.to_json() for c in
                            sorted(self._configs.values(), key=lambda c: c.config_id)],
                "live": {t: [cid, seed] for t, (cid, seed) in sorted(self._live.items())},
                "deferred": list(self._deferred), "n_told": self._n_told,
                "rng": rng_to_json(self._rng), "optimizer_log": plain(self._opt_log)}

    def set_state(self, state: dict) -> None:
        """Become the searcher saved by :meth:`get_state`: same settings, results, in-flight
        trials and RNG, with the optimiser rebuilt by replaying its log of asks and tells.

        Raises :class:`~raybench.search.state.StateError` when ``state`` is not such a state.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            found = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise StateError(f"GPSearcher state version {found!r} != {STATE_VERSION}")
        try:
            fresh = type(self)(**dict(state["settings"]))
            fresh._configs = {c.config_id: c for c in map(SeedConfig.from_json, state["configs"])}
            fresh._live = {str(t): (int(v[0]), int(v[1])) for t, v in state["live"].items()}
            fresh._deferred = [int(i) for i in state["deferred"]]
            fresh._n_told = int(state["n_told"])
            fresh._rng = rng_from_json(state["rng"])
            fresh._replay(list(state["optimizer_log"]))
        except StateError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise StateError(f"GPSearcher state is malformed ({type(exc).__name__}: {exc})"
                             ) from None
        self.__dict__.update(fresh.__dict__)

    def reopen_live(self) -> int:
        """Hand out again the seeds of the trials in flight (they died with an earlier
        driver); returns how many. Call after :meth:`set_state` when those trials will not
        report."""
        reopened = 0
        for cid, seed in self._live.values():
            cfg = self._configs.get(cid)
            if (cfg is not None and cfg.status == "running" and seed not in cfg.metrics
                    and seed not in cfg.unassigned):
                cfg.unassigned.append(seed)
                cfg.unassigned.sort(key=cfg.seeds.index)
                reopened += 1
        self._live = {}
        return reopened

    def _replay(self, log: list) -> None:
        """Bring the fresh optimiser to the saved state: repeat every logged ask and tell."""
        for i, entry in enumerate(log):
            if entry.get("op") == "tell":
                self._opt.tell([list(x) for x in entry["x"]], [float(y) for y in entry["y"]],
                               fit=bool(entry["fit"]))
            elif entry.get("op") == "ask":
                x = plain(list(self._opt.ask()))
                if x != list(entry["x"]):
                    logger.warning("GPSearcher: replayed ask %d proposed %s, saved %s "
                                   "(another scikit-optimize/scikit-learn version?); later "
                                   "proposals may differ from an uninterrupted run", i, x,
                                   entry["x"])
            else:
                raise StateError(f"optimizer_log[{i}]: unknown operation {entry.get('op')!r}")
        self._opt_log = [dict(e) for e in log]
