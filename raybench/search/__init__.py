"""Hyperparameter search for raybench studies on Ray Tune.

* :mod:`raybench.search.space` -- the compact search-space syntax to skopt dimensions
  (:func:`to_skopt`, :func:`decode`) and to Ray Tune domains (:func:`to_tune`).
* :mod:`raybench.search.gp` -- :class:`GPSearcher`, Gaussian-process Bayesian optimisation as
  a Ray Tune ``Searcher`` that runs every configuration once per seed (separate trials) and
  tells the optimiser the mean over seeds.
"""

from __future__ import annotations

from raybench.search.gp import GPSearcher
from raybench.search.space import SearchSpaceError, decode, to_skopt, to_tune, validate

__all__ = ["GPSearcher", "SearchSpaceError", "decode", "to_skopt", "to_tune", "validate"]
