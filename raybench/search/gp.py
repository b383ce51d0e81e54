"""Gaussian-process Bayesian optimisation for Ray Tune, with seeds run as separate trials.

Ray Tune dropped its ``SkOptSearch``; :class:`GPSearcher` wraps ``skopt.Optimizer`` (GP
surrogate, ``gp_hedge`` acquisition by default) as a :class:`ray.tune.search.Searcher`.

**Seeds.** Every configuration the optimiser proposes is trained once per seed, each seed a
separate Tune trial whose config is ``{**fixed, **params, "seed": s, "config_id": k}``.
``suggest`` hands out the not-yet-started seeds of the open configurations first and asks the
optimiser for a new configuration only when there are none. The optimiser is told the **mean**
of the metric over the seeds (negated for ``mode="max"``; skopt minimises) once *all* seeds of
the configuration have completed.

**Failures.** A seed trial that errors, or ends without a finite value of ``metric``, counts as
done without a value; the mean is over the seeds that reported one. When every seed of a
configuration failed, the optimiser is told a pessimistic value: the worst objective told so
far. If nothing has been told yet, that tell is deferred until the first successful
configuration is told (it then receives the worst value at that time), so the GP still learns
to avoid the region. ``history()`` marks such configurations ``"failed"``.

**Configurations in flight.** Several configurations may be open at once (e.g. 4 concurrent
trials with 3 seeds). The first ``n_initial_points`` are random draws. Later, a configuration
proposed while others still wait for their result comes from a throw-away optimiser told the
real observations plus the open points with made-up values (as in skopt's ``ask(n_points)``),
so it does not propose the same point again. ``lie_strategy``: ``"kb"`` (default, *kriging
believer*: the GP posterior mean at each open point, GP hyperparameters kept -- one cheap
fit; ``cl_mean`` before the first GP fit) or skopt's constant liars ``"cl_min"``,
``"cl_mean"``, ``"cl_max"``. Constant liars bias the search when there are few observations
(``cl_min`` makes an exploratory open point look as good as the best and draws proposals next
to it): on a 1-D quadratic with 2 open configurations, the median best distance to the optimum
after 10 calls was ~0.01 with ``kb``, 0.02-0.15 with the liars, 0.002 sequentially. With
nothing open, the optimiser is asked directly. After ``n_calls`` configurations ``suggest``
returns ``Searcher.FINISHED``; later tells skip the GP refit (``fit=False``).

**Concurrency.** ``max_concurrent`` (or Tune's ``max_concurrent_trials``, which reaches the
searcher through ``set_max_concurrency``) caps the running trials; the searcher enforces it
itself, so Tune's ``ConcurrencyLimiter`` passes every completion through, including those of
trials it did not see (resumed experiments).

**Resume.** The state is plain JSON data (:meth:`get_state`; ``save``/``restore`` write and
read it as ``searcher-state-*.json``): the settings, the configurations with their per-seed
results, the trials in flight, the counters, the RNG state and the log of every ``ask`` and
``tell`` the skopt optimiser saw. :meth:`set_state` rebuilds the optimiser from the settings and
replays that log, so it ends in exactly the state it had (GP fits and acquisition RNG included)
and proposes exactly what the uninterrupted searcher would; nothing is ever unpickled (see
:mod:`raybench.search.state`). :meth:`reopen_live` hands the seeds of trials that were in
flight when the driver stopped out again. A completed trial is mapped back to its configuration
by trial id or, when the id is unknown (a trial restarted with a new id), by the ``config_id``
and ``seed`` that its config carries (``result["config"]``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from raybench.search.gp_state import GPStateMixin, SeedConfig
from raybench.search.space import RESERVED_KEYS, decode, to_skopt, validate
from raybench.search.state import plain

__all__ = ["GPSearcher"]

logger = logging.getLogger(__name__)

_LIES = {"cl_min": min, "cl_mean": lambda ys: float(np.mean(ys)), "cl_max": max, "kb": None}


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _frozen_gp(estimator: Any, model: Any) -> Any:
    """``estimator`` fixed to ``model``'s fitted kernel (kriging believer: no re-optimisation).

    skopt zeroes the fitted ``WhiteKernel`` (its level is kept in ``noise_``): restored, fixed.
    Returns ``estimator`` unchanged if the kernel is not of the ``k + White`` form.
    """
    from sklearn.base import clone
    from sklearn.gaussian_process.kernels import Sum, WhiteKernel

    kernel = getattr(model, "kernel_", None)
    noise = getattr(model, "noise_", None)
    if not (isinstance(kernel, Sum) and isinstance(kernel.k2, WhiteKernel) and noise):
        return estimator
    kernel = clone(kernel).set_params(k2__noise_level=noise, k2__noise_level_bounds="fixed")
    return clone(estimator).set_params(kernel=kernel, optimizer=None)


class GPSearcher(GPStateMixin, Searcher):
    """Bayesian optimisation over a compact raybench search space, one Tune trial per seed.

    Args:
        space: compact search space, ``{key: {"loguniform"|"uniform"|"choice"|"randint": [...]}}``.
        metric: result key to optimise (may come later from ``TuneConfig`` / the Tuner).
        mode: ``"max"`` or ``"min"``.
        n_calls: number of configurations to evaluate (each on every seed).
        seeds: seeds each configuration is trained with (one trial each).
        n_initial_points: random configurations before the GP takes over.
        acq_func: skopt acquisition function (``"gp_hedge"``, ``"EI"``, ``"LCB"``, ``"PI"``).
        random_state: seed of the optimiser (and of the random initial points).
        fixed: constant parameters merged into every trial config.
        max_concurrent: cap on running trials (``None``: Tune decides).
        lie_strategy: value assumed for open configurations: ``"kb"`` (kriging believer),
            ``"cl_min"``, ``"cl_mean"`` or ``"cl_max"`` (see module doc).
    """

    def __init__(
        self,
        space: Mapping[str, Any],
        metric: str | None = None,
        mode: str | None = None,
        n_calls: int = 20,
        seeds: Iterable[int] = (0, 1, 2),
        n_initial_points: int = 5,
        acq_func: str = "gp_hedge",
        random_state: int | None = 0,
        fixed: Mapping[str, Any] | None = None,
        max_concurrent: int | None = None,
        lie_strategy: str = "kb",
    ) -> None:
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        super().__init__(metric=metric, mode=mode)
        specs = validate(space)
        seeds = list(seeds)
        if not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds
        ):
            raise ValueError(f"seeds must be a non-empty list of distinct ints, got {seeds!r}")
        if int(n_calls) < 1 or int(n_initial_points) < 1:
            raise ValueError(f"n_calls and n_initial_points must be >= 1, got "
                             f"{n_calls} and {n_initial_points}")
        if lie_strategy not in _LIES:
            raise ValueError(f"lie_strategy must be one of {sorted(_LIES)}, got {lie_strategy!r}")
        fixed = dict(fixed or {})
        clash = (set(fixed) & set(specs)) | (set(fixed) & RESERVED_KEYS)
        if clash:
            raise ValueError(f"fixed keys {sorted(clash)} clash with the search space or "
                             f"the reserved keys {sorted(RESERVED_KEYS)}")
        if max_concurrent is not None and int(max_concurrent) < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self._space = plain({key: space[key] for key in specs})
        self._fixed = fixed
        self._seeds = seeds
        self._n_calls = int(n_calls)
        self._n_initial_points = int(n_initial_points)
        self._acq_func = acq_func
        self._random_state = None if random_state is None else int(random_state)
        self._lie_strategy = lie_strategy
        self._max_concurrent = None if max_concurrent is None else int(max_concurrent)
        self._opt = self._new_optimizer()
        self._rng = np.random.RandomState(None if random_state is None else [random_state, 1])
        self._configs: dict[int, SeedConfig] = {}
        self._live: dict[str, tuple[int, int]] = {}  # trial_id -> (config_id, seed)
        self._deferred: list[int] = []  # all-failed configs waiting for a worst value
        self._n_told = 0
        self._opt_log: list[dict] = []  # every ask/tell of self._opt, replayed on restore

    def _new_optimizer(self):
        from skopt import Optimizer

        return Optimizer(to_skopt(self._space), base_estimator="GP", acq_func=self._acq_func,
                         n_initial_points=self._n_initial_points,
                         random_state=self._random_state)

    # ------------------------------------------------------------------ Ray Tune API
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Take ``metric``/``mode`` from Tune where the searcher has none; ``False`` if they
        conflict. Constant ``param_space`` entries are merged into trial configs by Tune."""
        if (metric and self._metric and metric != self._metric) or (
            mode and self._mode and mode != self._mode
        ):
            return False
        if mode not in (None, "max", "min"):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Enforce Tune's ``max_concurrent_trials`` here (see module doc); returns True."""
        self._max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        """Config of the next seed trial, ``None`` at the concurrency cap, or ``FINISHED``."""
        if not self._metric or self._mode not in ("max", "min"):
            raise RuntimeError("GPSearcher needs metric and mode: pass them to GPSearcher(...) "
                               "(TuneConfig's reach it only with a non-empty param_space)")
        if self._max_concurrent is not None and len(self._live) >= self._max_concurrent:
            return None
        cfg = next((c for c in self._configs.values() if c.unassigned), None)
        if cfg is None:
            if len(self._configs) >= self._n_calls:
                return Searcher.FINISHED
            cfg = self._new_config()
        seed = cfg.unassigned.pop(0)
        self._live[trial_id] = (cfg.config_id, seed)
        return {**self._fixed, **cfg.params, "seed": seed, "config_id": cfg.config_id}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate results are not used: only the final result of a trial counts."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Record one seed's final metric; tell the optimiser once all seeds are in."""
        key = self._live.pop(trial_id, None) or self._key_from_result(result)
        if key is None:
            logger.warning("GPSearcher: trial %s is unknown and its result carries no "
                           "config_id/seed; ignored", trial_id)
            return
        for other in [t for t, k in self._live.items() if k == key]:
            del self._live[other]  # a restarted copy of the same seed trial
        config_id, seed = key
        cfg = self._configs.get(config_id)
        if cfg is None or seed not in cfg.seeds:
            logger.warning("GPSearcher: trial %s has unknown config_id %s / seed %s; ignored",
                           trial_id, config_id, seed)
            return
        if cfg.status != "running" or cfg.metrics.get(seed) is not None:
            logger.debug("GPSearcher: duplicate completion of config %s seed %s", *key)
            return
        if seed in cfg.unassigned:  # completed without being handed out by this state
            cfg.unassigned.remove(seed)
        value = None if error or result is None else _finite(result.get(self._metric))
        cfg.metrics[seed] = value
        if len(cfg.metrics) == len(cfg.seeds):
            self._finalise(cfg)

    # ------------------------------------------------------------------ introspection
    @property
    def optimizer(self):
        """The wrapped ``skopt.Optimizer`` (``Xi``/``yi``: the points and values told)."""
        return self._opt

    @property
    def n_calls(self) -> int:
        """Number of configurations the study evaluates (each on every seed)."""
        return self._n_calls

    @property
    def n_told(self) -> int:
        """Number of configurations whose value the optimiser has been told."""
        return self._n_told

    @property
    def finished(self) -> bool:
        """True once all ``n_calls`` configurations have a final status."""
        return len(self._configs) >= self._n_calls and all(
            c.status != "running" for c in self._configs.values()
        )

    def history(self) -> list[dict[str, Any]]:
        """One dict per configuration, in proposal order, for convergence plots.

        Keys: ``config_id``, ``params``, ``metrics`` (``{seed: value or None}`` for completed
        seeds; ``None`` = failed), ``mean`` (over seeds with a value; ``None`` if none or still
        running), ``status`` (``running``/``done``/``failed``) and ``objective`` (the value told
        to the minimising optimiser, ``None`` if not told).
        """
        return [
            {"config_id": c.config_id, "params": dict(c.params),
             "metrics": {s: c.metrics[s] for s in c.seeds if s in c.metrics},
             "mean": c.mean, "status": c.status, "objective": c.objective}
            for c in sorted(self._configs.values(), key=lambda c: c.config_id)
        ]

    def best(self) -> dict[str, Any] | None:
        """The :meth:`history` entry with the best mean (by ``mode``), ``None`` if none."""
        done = [h for h in self.history() if h["status"] == "done"]
        if not done:
            return None
        sign = -1.0 if self._mode == "max" else 1.0
        return min(done, key=lambda h: sign * h["mean"])

    # ------------------------------------------------------------------ internals
    def _new_config(self) -> SeedConfig:
        """Ask the optimiser for configuration ``len(self._configs)`` (see module doc)."""
        config_id = len(self._configs)
        opt = self._opt
        open_points = [c.x for c in self._configs.values() if c.status == "running"]
        if config_id < self._n_initial_points or not opt.yi:
            x = opt.space.rvs(n_samples=1, random_state=self._rng)[0]
        elif not open_points:
            x = opt.ask()
            self._opt_log.append({"op": "ask", "x": plain(x)})
        else:
            x = self._liar(open_points).ask()
        x = plain(list(x))
        cfg = SeedConfig(config_id=config_id, x=x, params=decode(self._space, x),
                      seeds=list(self._seeds), unassigned=list(self._seeds))
        self._configs[config_id] = cfg
        return cfg

    def _liar(self, open_points: list[list]) -> Any:
        """A throw-away optimiser told the real points plus ``open_points`` with the lies.

        Like ``opt.copy()`` followed by ``tell(open_points, lies)`` (what skopt's
        ``ask(n_points, strategy)`` does) but with one GP fit instead of two.
        """
        from skopt import Optimizer

        opt = self._opt
        estimator = opt.base_estimator_
        if self._lie_strategy == "kb" and opt.models:
            model = opt.models[-1]
            lies = [float(v) for v in model.predict(opt.space.transform(open_points))]
            estimator = _frozen_gp(estimator, model)
        else:
            lie_of = _LIES[self._lie_strategy] or _LIES["cl_mean"]
            lies = [float(lie_of(opt.yi))] * len(open_points)
        liar = Optimizer(opt.space.dimensions, base_estimator=estimator, acq_func=opt.acq_func,
                         acq_optimizer=opt.acq_optimizer, acq_func_kwargs=opt.acq_func_kwargs,
                         acq_optimizer_kwargs=opt.acq_optimizer_kwargs,
                         n_initial_points=self._n_initial_points,
                         random_state=int(self._rng.randint(0, np.iinfo(np.int32).max)))
        if hasattr(opt, "gains_"):  # gp_hedge's running gains of each acquisition function
            liar.gains_ = np.copy(opt.gains_)
        liar.tell(list(opt.Xi) + open_points, list(opt.yi) + lies)
        return liar

    def _key_from_result(self, result: dict | None) -> tuple[int, int] | None:
        """``(config_id, seed)`` from a result's config (nested or flattened by Tune)."""
        if not result:
            return None
        config = result.get("config")
        if isinstance(config, Mapping):
            cid, seed = config.get("config_id"), config.get("seed")
        else:
            cid, seed = result.get("config/config_id"), result.get("config/seed")
        try:
            return int(cid), int(seed)
        except (TypeError, ValueError):
            return None

    def _tell(self, cfgs: list[SeedConfig], values: list[float]) -> None:
        if not cfgs:
            return
        for cfg, y in zip(cfgs, values, strict=True):
            cfg.objective = float(y)
        # Once all n_calls configurations are proposed no ask follows: skip the GP refit.
        fit = len(self._configs) < self._n_calls
        points, ys = [list(c.x) for c in cfgs], [float(v) for v in values]
        self._opt.tell(points, ys, fit=fit)
        self._opt_log.append({"op": "tell", "x": plain(points), "y": ys, "fit": fit})
        self._n_told += len(cfgs)

    def _finalise(self, cfg: SeedConfig) -> None:
        values = [v for v in cfg.metrics.values() if v is not None]
        if values:
            cfg.mean = float(np.mean(values))
            cfg.status = "done"
            self._tell([cfg], [-cfg.mean if self._mode == "max" else cfg.mean])
            if self._deferred:
                worst = max(self._opt.yi)
                deferred = [self._configs[i] for i in self._deferred]
                self._deferred = []
                self._tell(deferred, [worst] * len(deferred))
        else:
            cfg.status = "failed"
            if self._opt.yi:
                self._tell([cfg], [max(self._opt.yi)])
            else:
                self._deferred.append(cfg.config_id)
        logger.debug("GPSearcher: config %s %s (mean %s)", cfg.config_id, cfg.status, cfg.mean)
