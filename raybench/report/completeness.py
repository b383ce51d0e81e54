"""Is the study complete? Planned trials (from ``resolved_study.yaml``) against recorded ones.

A study plans, per experiment, ``n_calls`` configurations (one with a ``fixed`` search or an
empty search space) times its seeds. An interrupted study records fewer: the report then says
INCOMPLETE in its header and in every table that shows an affected experiment, with the
missing trial counts, so a partial study is never read as a finished one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

__all__ = ["Completeness", "planned_trials"]


def planned_trials(config: dict) -> dict[str, int] | None:
    """Trials per experiment id that a resolved study asks for; None when not recorded.

    Mirrors :func:`raybench.study.config.expand_experiments` on the resolved mapping.
    """
    from raybench.study.config import ratio_label

    try:
        tasks, cohorts = list(config["tasks"]), list(config["cohorts"])
        methods, seeds = config["methods"], list(config["seeds"])
        if isinstance(methods, list):  # the short form: names only
            methods = {str(name): {} for name in methods}
        ratios = [float(r) for r in config["robustness"]["cxr_missing_ratios"]]
        search = dict(config["search"])
        planned = {}
        for task in tasks:
            for cohort in cohorts:
                for name, method in dict(methods).items():
                    method = method or {}
                    if cohort not in (method.get("cohorts") or cohorts):
                        continue
                    allowed = [float(r) for r in method.get("cxr_missing_ratios") or ratios]
                    space = method.get("search_space")  # None: not recorded, the search's
                    fixed = search.get("type") == "fixed" or (space is not None and not space)
                    n_configs = 1 if fixed else int(search["n_calls"])
                    for ratio in ratios:
                        if ratio in allowed:
                            planned[f"{task}-{cohort}-{name}-m{ratio_label(ratio)}"] = (
                                n_configs * len(seeds))
        return planned
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@dataclass
class Completeness:
    """Recorded vs planned trials per experiment."""

    planned: dict[str, int] | None
    recorded: dict[str, int]

    @classmethod
    def of(cls, config: dict, trials: pd.DataFrame) -> Completeness:
        """From a resolved study mapping and the normalised trials table."""
        recorded = trials.drop_duplicates(["experiment_id", "config_id", "seed"]).groupby(
            "experiment_id").size()
        return cls(planned_trials(config), {str(k): int(v) for k, v in recorded.items()})

    @property
    def known(self) -> bool:
        """True when the planned trials are known (``resolved_study.yaml`` present)."""
        return self.planned is not None

    def missing(self, experiment_id: str) -> tuple[int, int] | None:
        """``(missing, planned)`` for an incomplete experiment, None when complete/unknown."""
        if self.planned is None or experiment_id not in self.planned:
            return None
        planned = self.planned[experiment_id]
        missing = planned - min(self.recorded.get(experiment_id, 0), planned)
        return (missing, planned) if missing else None

    def incomplete(self, experiment_ids: Iterable[str] | None = None) -> list[str]:
        """The incomplete experiments among ``experiment_ids`` (default: all planned)."""
        ids = list(self.planned or {}) if experiment_ids is None else list(experiment_ids)
        return [e for e in ids if self.missing(e) is not None]

    def never_started(self) -> list[str]:
        """Planned experiments without a single recorded trial."""
        return [e for e in self.planned or {} if self.recorded.get(e, 0) == 0]

    def totals(self) -> tuple[int, int]:
        """``(missing trials, planned trials)`` over the whole study (0, 0 when unknown)."""
        if self.planned is None:
            return 0, 0
        missing = sum(self.missing(e)[0] for e in self.incomplete())
        return missing, sum(self.planned.values())
