"""Searcher state as plain JSON data: never code, so a study directory cannot run anything.

A searcher's state is saved as JSON (numbers, strings, lists, mappings) and loaded with
``json.loads``; an optimiser is rebuilt from its settings by replaying the operations it saw
(see :class:`raybench.search.gp.GPSearcher`). Nothing is ever unpickled: a file that is not
JSON (a planted pickle, say) is refused with :class:`StateError`.

Helpers here convert what JSON cannot hold directly: numpy RNG states (624-word Mersenne
Twister keys), mappings keyed by integers (JSON keys are strings) and points of a search space.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StateError", "int_keys", "plain", "read_json_state", "rng_from_json",
           "rng_to_json", "write_json_state"]


class StateError(ValueError):
    """A saved searcher state that cannot be used (not JSON, wrong version, wrong shape)."""


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def rng_to_json(rng: np.random.RandomState) -> list:
    """A ``RandomState``'s exact state as a JSON list."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    return [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def rng_from_json(data: Any) -> np.random.RandomState:
    """The ``RandomState`` saved by :func:`rng_to_json`."""
    try:
        name, keys, pos, has_gauss, cached = data
        state = (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss),
                 float(cached))
        rng = np.random.RandomState()
        rng.set_state(state)
    except (TypeError, ValueError) as exc:
        raise StateError(f"bad RNG state ({exc})") from None
    return rng


def int_keys(mapping: Any, what: str) -> dict[int, Any]:
    """A JSON object with integer-like keys back to ``{int: value}``."""
    if not isinstance(mapping, Mapping):
        raise StateError(f"{what}: expected a mapping")
    try:
        return {int(k): v for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise StateError(f"{what}: keys must be integers") from None


def finite_or_none(value: Any, what: str) -> float | None:
    """A stored metric: a finite number or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateError(f"{what}: expected a finite number or null, got {value!r}")
    return float(value)


def write_json_state(path: str | Path, state: dict) -> None:
    """Write a JSON state (``allow_nan=False``: a NaN would not survive a reload)."""
    Path(path).write_text(json.dumps(state, allow_nan=False, sort_keys=True) + "\n")


def read_json_state(path: str | Path) -> dict:
    """Load a JSON state file; anything else (a pickle included) raises :class:`StateError`."""
    raw = Path(path).read_bytes()
    try:
        state = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StateError(f"{path}: not a JSON searcher state; raybench never unpickles "
                         "searcher state") from None
    if not isinstance(state, dict):
        raise StateError(f"{path}: expected a JSON object")
    return state
