"""The searcher of one experiment, from a search section (``search`` or an ``ssl`` search)."""

from __future__ import annotations

from collections.abc import Iterable

from ray.tune.search import Searcher

from raybench.study.multiplex import FixedSearcher

__all__ = ["make_searcher", "planned_configurations"]


def make_searcher(search, space: dict, seeds: Iterable[int]) -> Searcher:
    """GP / random search over ``space`` (each configuration once per seed), or the single
    fixed configuration when the search is ``fixed`` or the space is empty.

    ``search`` has ``type`` and ``n_calls`` and optionally ``n_initial_points``,
    ``acq_func`` and ``random_state`` (:class:`~raybench.study.schema.GPSearch`,
    :class:`~raybench.study.schema.RandomSearch`, :class:`~raybench.study.ssl_schema.SSLSearch`).
    """
    from raybench.search.gp import GPSearcher

    if search.type == "fixed" or not space:
        return FixedSearcher({}, list(seeds))
    if search.type == "random":
        initial = search.n_calls
    else:
        initial = getattr(search, "n_initial_points", None) or min(5, search.n_calls)
    return GPSearcher(space=space, metric="selection", mode="max", n_calls=search.n_calls,
                      seeds=list(seeds), n_initial_points=initial,
                      acq_func=getattr(search, "acq_func", "gp_hedge"),
                      random_state=getattr(search, "random_state", 0))


def planned_configurations(search, space: dict) -> int:
    """How many configurations :func:`make_searcher` will hand out."""
    return 1 if search.type == "fixed" or not space else int(search.n_calls)
