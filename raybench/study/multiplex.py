"""One Ray Tune searcher over all experiments of a study, so they run concurrently.

A study is many experiments (task x cohort x method x missing ratio), each with its own
searcher (GP, random or fixed). Running one ``Tuner`` per experiment would serialise them;
:class:`StudySearcher` instead hands out suggestions from every experiment's searcher in
turn inside one ``Tuner``, so the cluster is filled with trials of all experiments.

**State.** The study's search state is plain JSON (:meth:`StudySearcher.get_state`): every
sub-searcher's state plus the round-robin cursor. The runner saves it in the study directory
(``search_state.json``) after every change through ``on_change`` and, on a resume, loads it
with :meth:`StudySearcher.load_state`, which rebuilds each searcher by replaying its
observations (:mod:`raybench.search.gp_state`) and hands the trials that were in flight out
again. Nothing is unpickled; Tune's own ``searcher-state-*`` files are JSON too and are never
read by raybench.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ray.tune.search import Searcher

from raybench.search.state import (
    StateError,
    finite_or_none,
    int_keys,
    read_json_state,
    write_json_state,
)

__all__ = ["FixedSearcher", "StudySearcher"]

STATE_VERSION = 1


class FixedSearcher(Searcher):
    """One configuration (the given parameters), run once per seed."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(self, params: dict, seeds: list[int], metric: str = "selection",
                 mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        self.params, self.seeds = dict(params), list(seeds)
        self.pending = list(self.seeds)  # seeds not yet handed out
        self.live: dict[str, int] = {}  # trial_id -> seed
        self.results: dict[int, float | None] = {}

    def suggest(self, trial_id: str) -> dict | None:
        """The next seed of the single configuration, then FINISHED."""
        if not self.pending:
            return Searcher.FINISHED
        seed = self.pending.pop(0)
        self.live[trial_id] = seed
        return {**self.params, "seed": seed, "config_id": 0}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Record the seed's metric (None when it failed)."""
        seed = self.live.pop(trial_id, None)
        if seed is None:
            seed = (result or {}).get("config", {}).get("seed")
        if seed not in self.seeds:
            return
        if seed in self.pending:
            self.pending.remove(seed)
        value = None if error or not result else result.get(self.metric)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        self.results[int(seed)] = float(value) if numeric and math.isfinite(value) else None

    def history(self) -> list[dict]:
        """One entry: the fixed configuration and its per-seed metrics."""
        values = [v for v in self.results.values() if v is not None]
        return [{"config_id": 0, "params": self.params, "metrics": dict(self.results),
                 "mean": sum(values) / len(values) if values else None}]

    @property
    def settings(self) -> dict:
        """What the searcher was built with (a resumed study checks it matches)."""
        return {"params": self.params, "seeds": self.seeds}

    def get_state(self) -> dict:
        """JSON data: settings, pending seeds, trials in flight, results."""
        return {"kind": "fixed", "settings": self.settings, "pending": list(self.pending),
                "live": dict(self.live),
                "results": {str(k): v for k, v in self.results.items()}}

    def set_state(self, state: Mapping) -> None:
        """Load :meth:`get_state` output (settings included)."""
        try:
            self.params = dict(state["settings"]["params"])
            self.seeds = [int(s) for s in state["settings"]["seeds"]]
            self.pending = [int(s) for s in state["pending"]]
            self.live = {str(t): int(s) for t, s in state["live"].items()}
            self.results = {k: finite_or_none(v, "results")
                            for k, v in int_keys(state["results"], "results").items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"fixed searcher state is malformed ({exc})") from None

    def reopen_live(self) -> int:
        """Hand the seeds of the trials in flight out again; returns how many."""
        reopened = [s for s in self.live.values() if s not in self.results]
        self.pending = sorted(set(self.pending) | set(reopened), key=self.seeds.index)
        self.live = {}
        return len(reopened)

    def save(self, checkpoint_path: str) -> None:
        """Write the state as JSON."""
        write_json_state(checkpoint_path, self.get_state())

    def restore(self, checkpoint_path: str) -> None:
        """Load a JSON state written by :meth:`save` (never a pickle)."""
        self.set_state(read_json_state(checkpoint_path))


class StudySearcher(Searcher):
    """Round-robin over the experiments' searchers; routes results back to their owner.

    ``on_change`` (optional) is called with no argument after every change of the state
    (a configuration handed out, a trial completed); the runner saves the state there.
    """

    CKPT_FILE_TMPL = "study-searcher-state-{}.json"

    def __init__(self, searchers: dict[str, Searcher], metric: str = "selection",
                 mode: str = "max", on_change: Callable[[], None] | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers = searchers
        self.order = sorted(searchers)
        self.cursor = 0
        self.finished: set[str] = set()
        self.owner: dict[str, str] = {}
        self.on_change = on_change

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """Accept Tune's metric/mode (raybench always optimises ``selection``, max)."""
        return True

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def suggest(self, trial_id: str) -> dict | None:
        """The next suggestion of the next experiment that has one; FINISHED when all are."""
        for _ in range(len(self.order)):
            experiment = self.order[self.cursor % len(self.order)]
            self.cursor += 1
            if experiment in self.finished:
                continue
            config = self.searchers[experiment].suggest(trial_id)
            if config is Searcher.FINISHED:
                self.finished.add(experiment)
                continue
            if config is None:
                continue
            self.owner[trial_id] = experiment
            self._changed()
            return {"experiment_id": experiment, **config}
        return Searcher.FINISHED if len(self.finished) == len(self.order) else None

    def _owner(self, trial_id: str, result: dict | None) -> str | None:
        if trial_id in self.owner:
            return self.owner.pop(trial_id)
        return ((result or {}).get("config") or {}).get("experiment_id")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Forward intermediate results to the owning searcher."""
        experiment = self.owner.get(trial_id)
        if experiment:
            self.searchers[experiment].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Forward the final result (or the error) to the owning searcher."""
        experiment = self._owner(trial_id, result)
        if experiment in self.searchers:
            self.searchers[experiment].on_trial_complete(trial_id, result=result, error=error)
            self._changed()

    def histories(self) -> dict[str, list[dict]]:
        """Each experiment's search history (for convergence plots)."""
        return {name: s.history() for name, s in self.searchers.items()
                if hasattr(s, "history")}

    # ------------------------------------------------------------------ state (JSON)
    def get_state(self) -> dict:
        """Every experiment's searcher state and the round-robin cursor, as JSON data."""
        return {"version": STATE_VERSION, "cursor": self.cursor,
                "searchers": {name: s.get_state() for name, s in sorted(self.searchers.items())}}

    def load_state(self, state: object, source: str = "search state") -> int:
        """Continue from a saved :meth:`get_state`; returns the number of reopened trials.

        Each experiment's searcher must have been built with the same settings as the saved
        one (else the study changed and resuming would mix results). Trials that were in
        flight are handed out again: they died with the driver that started them.
        Raises :class:`~raybench.search.state.StateError` naming what does not fit.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise StateError(f"{source}: not a raybench study search state (version "
                             f"{STATE_VERSION})")
        saved = state.get("searchers")
        if not isinstance(saved, Mapping) or set(saved) != set(self.searchers):
            raise StateError(f"{source}: its experiments differ from the study's")
        reopened = 0
        for name, searcher in self.searchers.items():
            sub = saved[name]
            if not isinstance(sub, Mapping) or sub.get("settings") != searcher.settings:
                raise StateError(f"{source}: experiment {name} was searched with other "
                                 "settings; resuming would mix results")
            searcher.set_state(dict(sub))
            reopened += searcher.reopen_live()
        cursor = state.get("cursor", 0)
        self.cursor = cursor if isinstance(cursor, int) and cursor >= 0 else 0
        self.finished, self.owner = set(), {}
        return reopened

    def save(self, checkpoint_path: str) -> None:
        """Write the state as JSON (Tune calls this with its experiment checkpoints)."""
        write_json_state(checkpoint_path, self.get_state())

    def restore(self, checkpoint_path: str) -> None:
        """Load a JSON state written by :meth:`save` (never a pickle)."""
        self.load_state(read_json_state(checkpoint_path), str(checkpoint_path))
