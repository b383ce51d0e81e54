"""One Ray Tune searcher over all experiments of a study, so they run concurrently.

A study is many experiments (task x cohort x method x missing ratio), each with its own
searcher (GP, random or fixed). Running one ``Tuner`` per experiment would serialise them;
:class:`StudySearcher` instead hands out suggestions from every experiment's searcher in
turn inside one ``Tuner``, so the cluster is filled with trials of all experiments, and
its state (all sub-searchers) is saved and restored with the Tune experiment for resume.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ray.tune.search import Searcher


class FixedSearcher(Searcher):
    """One configuration (the given parameters), run once per seed."""

    def __init__(self, params: dict, seeds: list[int], metric: str = "selection",
                 mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        self.params, self.seeds = dict(params), list(seeds)
        self.handed, self.done = 0, 0
        self.results: dict[int, float | None] = {}

    def suggest(self, trial_id: str) -> dict | None:
        """The next seed of the single configuration, then FINISHED."""
        if self.handed >= len(self.seeds):
            return Searcher.FINISHED
        seed = self.seeds[self.handed]
        self.handed += 1
        return {**self.params, "seed": seed, "config_id": 0}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Record the seed's metric (None when it failed)."""
        self.done += 1
        seed = (result or {}).get("config", {}).get("seed", self.done)
        self.results[seed] = None if error or not result else result.get(self.metric)

    def history(self) -> list[dict]:
        """One entry: the fixed configuration and its per-seed metrics."""
        values = [v for v in self.results.values() if v is not None]
        return [{"config_id": 0, "params": self.params, "metrics": dict(self.results),
                 "mean": sum(values) / len(values) if values else None}]

    def save(self, checkpoint_path: str) -> None:
        """Pickle the state."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        """Load the state written by :meth:`save`."""
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))


class StudySearcher(Searcher):
    """Round-robin over the experiments' searchers; routes results back to their owner."""

    def __init__(self, searchers: dict[str, Searcher], metric: str = "selection",
                 mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers = searchers
        self.order = sorted(searchers)
        self.cursor = 0
        self.finished: set[str] = set()
        self.owner: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """Accept Tune's metric/mode (raybench always optimises ``selection``, max)."""
        return True

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

    def histories(self) -> dict[str, list[dict]]:
        """Each experiment's search history (for convergence plots)."""
        return {name: s.history() for name, s in self.searchers.items()
                if hasattr(s, "history")}

    def save(self, checkpoint_path: str) -> None:
        """Pickle every sub-searcher with the routing state."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        """Load the state written by :meth:`save`."""
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))
