"""Translate raybench's compact search-space syntax to scikit-optimize and Ray Tune.

Models declare search spaces as ``{key: {kind: [args]}}`` (see
:func:`raybench.models.base.validate_search_space` and ``docs/models.md``)::

    {"lr": {"loguniform": [1e-5, 1e-3]}, "dropout": {"uniform": [0.0, 0.5]},
     "hidden": {"choice": [128, 256]}, "layers": {"randint": [1, 4]}}

========== ============================================== ===============================
kind       scikit-optimize                                Ray Tune
========== ============================================== ===============================
loguniform ``Real(lo, hi, prior="log-uniform")``          ``tune.loguniform(lo, hi)``
uniform    ``Real(lo, hi)``                               ``tune.uniform(lo, hi)``
choice     ``Categorical(values)``                        ``tune.choice(values)``
randint    ``Integer(lo, hi - 1)`` (high is *exclusive*)  ``tune.randint(lo, hi)``
========== ============================================== ===============================

``randint`` follows the raybench (and Ray Tune) convention: low inclusive, high exclusive, so
``{"randint": [1, 4]}`` draws from {1, 2, 3}; skopt's ``Integer`` bounds are both inclusive.

Dimensions are returned in sorted key order (stable whatever the dict order) and named after
their keys. :func:`decode` turns a point from skopt (numpy scalars) back into a dict of plain
Python values (``float``/``int``/``str``/``bool``/``None``) that JSON can serialise; ``choice``
values come back as the very objects listed in the spec. A ``choice`` whose values mix types
(e.g. ``[None, "relu", 2]``) is encoded as a ``Categorical`` over ``repr`` labels because skopt
would otherwise coerce them all to one numpy type; :func:`decode` maps labels back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from raybench.errors import RaybenchError

__all__ = [
    "KINDS",
    "RESERVED_KEYS",
    "SearchSpaceError",
    "validate",
    "to_skopt",
    "to_tune",
    "decode",
]

KINDS = ("loguniform", "uniform", "choice", "randint")
#: Keys the GP searcher adds to every configuration; a search space may not use them.
RESERVED_KEYS = frozenset({"seed", "config_id"})


class SearchSpaceError(RaybenchError, ValueError):
    """A malformed compact search space (a ``ValueError`` naming the offending key)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_bounds(key: str, kind: str, args: Any) -> tuple[Any, Any]:
    ok = isinstance(args, Sequence) and not isinstance(args, str) and len(args) == 2
    ok = ok and all(_is_number(a) and math.isfinite(a) for a in args)
    if ok:
        lo, hi = args
        ok = lo < hi and (kind != "loguniform" or lo > 0)
        ok = ok and (kind != "randint" or all(isinstance(a, int) for a in args))
    if not ok:
        hint = {
            "loguniform": "two numbers 0 < low < high",
            "uniform": "two numbers low < high",
            "randint": "two ints low < high (high exclusive)",
        }[kind]
        raise SearchSpaceError(f"search space {key!r}: bad {kind} bounds {args!r} (need {hint})")
    return args[0], args[1]


def _check_choice(key: str, args: Any) -> list:
    if isinstance(args, str) or not isinstance(args, Sequence) or len(args) == 0:
        raise SearchSpaceError(f"search space {key!r}: choice needs a non-empty list, got {args!r}")
    seen: set[tuple[type, Any]] = set()
    for value in args:
        if value is not None and not isinstance(value, str | int | float | bool):
            raise SearchSpaceError(
                f"search space {key!r}: choice values must be str/int/float/bool/None, "
                f"got {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise SearchSpaceError(f"search space {key!r}: choice value {value!r} is not finite")
        marker = (bool if isinstance(value, bool) else type(value), value)
        if marker in seen or (_is_number(value) and any(
            _is_number(v) and v == value for _, v in seen
        )):
            raise SearchSpaceError(f"search space {key!r}: duplicate choice value {value!r}")
        seen.add(marker)
    return list(args)


def validate(space: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Check ``space`` and return ``{key: (kind, args)}`` in sorted key order.

    Raises :class:`SearchSpaceError` (a ``ValueError``) naming the key for an unknown kind, a
    malformed spec, bad bounds, bad or duplicate choice values, or a reserved key.
    """
    if not isinstance(space, Mapping):
        raise SearchSpaceError(f"search space must be a dict, got {type(space).__name__}")
    if not space:
        raise SearchSpaceError("search space is empty")
    out: dict[str, tuple[str, Any]] = {}
    for key in sorted(space, key=str):
        spec = space[key]
        if not isinstance(key, str):
            raise SearchSpaceError(f"search space key {key!r} is not a string")
        if key in RESERVED_KEYS:
            raise SearchSpaceError(
                f"search space key {key!r} is reserved ({sorted(RESERVED_KEYS)})"
            )
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise SearchSpaceError(
                f"search space {key!r}: expected {{kind: [...]}} with one kind, got {spec!r}"
            )
        ((kind, args),) = spec.items()
        if kind not in KINDS:
            raise SearchSpaceError(
                f"search space {key!r}: unknown kind {kind!r} (use one of {list(KINDS)})"
            )
        out[key] = (kind, _check_choice(key, args) if kind == "choice" else
                    _check_bounds(key, kind, args))
    return out


def _homogeneous(values: list) -> bool:
    """True when skopt keeps the values' types (all str, all bool or all non-bool numbers)."""
    return (
        all(isinstance(v, str) for v in values)
        or all(isinstance(v, bool) for v in values)
        or all(_is_number(v) for v in values)
    )


def _categories(values: list) -> list:
    return list(values) if _homogeneous(values) else [repr(v) for v in values]


def to_skopt(space: Mapping[str, Any]) -> list:
    """``skopt.space`` dimensions for ``space``, sorted by key, each named after its key."""
    from skopt.space import Categorical, Integer, Real

    dims = []
    for key, (kind, args) in validate(space).items():
        if kind == "loguniform":
            dims.append(Real(float(args[0]), float(args[1]), prior="log-uniform", name=key))
        elif kind == "uniform":
            dims.append(Real(float(args[0]), float(args[1]), prior="uniform", name=key))
        elif kind == "randint":
            dims.append(Integer(int(args[0]), int(args[1]) - 1, name=key))
        else:
            dims.append(Categorical(_categories(args), name=key))
    return dims


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """Ray Tune search-space domains for ``space`` (used by the ``random`` search mode)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, (kind, args) in validate(space).items():
        if kind == "loguniform":
            out[key] = tune.loguniform(float(args[0]), float(args[1]))
        elif kind == "uniform":
            out[key] = tune.uniform(float(args[0]), float(args[1]))
        elif kind == "randint":
            out[key] = tune.randint(int(args[0]), int(args[1]))
        else:
            out[key] = tune.choice(list(args))
    return out


def _plain(value: Any) -> Any:
    """A numpy scalar as the equivalent Python scalar; Python values unchanged."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def decode(space: Mapping[str, Any], point: Sequence[Any]) -> dict[str, Any]:
    """Map a skopt point (ordered like :func:`to_skopt`) to ``{key: plain Python value}``."""
    specs = validate(space)
    if len(point) != len(specs):
        raise SearchSpaceError(f"point has {len(point)} values, search space has {len(specs)}")
    out: dict[str, Any] = {}
    for (key, (kind, args)), value in zip(specs.items(), point, strict=True):
        value = _plain(value)
        if kind in ("loguniform", "uniform"):
            out[key] = float(value)
        elif kind == "randint":
            out[key] = int(round(value))
        else:
            cats = _categories(args)
            matches = [o for c, o in zip(cats, args, strict=True) if c == value]
            if not matches:
                raise SearchSpaceError(f"search space {key!r}: {value!r} is not one of {args!r}")
            out[key] = matches[0]  # categories are unique, so there is exactly one
    return out
