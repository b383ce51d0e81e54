"""Model registry: ``register_model``, ``get_model``, ``list_models``, ``build_model``.

Models register themselves at import time; :mod:`raybench.models` imports every model
module, so ``import raybench.models`` is enough to populate the registry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from raybench.models.base import DataSpec, ModelConfigError, MultimodalModel, TaskSpec

__all__ = ["register_model", "get_model", "list_models", "build_model"]

M = TypeVar("M", bound=type[MultimodalModel])

_REGISTRY: dict[str, type[MultimodalModel]] = {}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator registering a :class:`MultimodalModel` subclass under ``name``.

    Sets ``cls.name = name``. A name already taken raises :class:`ModelConfigError`
    (a ``ValueError``).
    """
    if not isinstance(name, str) or not name:
        raise ModelConfigError(f"model name must be a non-empty string, got {name!r}")

    def decorator(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, MultimodalModel)):
            raise TypeError(f"@register_model({name!r}) needs a MultimodalModel subclass")
        if name in _REGISTRY:
            raise ModelConfigError(
                f"model name {name!r} is already registered by "
                f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_model(name: str) -> type[MultimodalModel]:
    """The class registered as ``name``; unknown names raise, listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise ModelConfigError(f"unknown model {name!r}; known models: {known}") from None


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching the fnmatch ``pattern`` (e.g. ``"*fusion"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def build_model(name: str, data: DataSpec, task: TaskSpec, **overrides: Any) -> MultimodalModel:
    """Instantiate model ``name`` with ``default_hparams()`` updated by ``overrides``.

    An override key that is not in ``default_hparams()`` raises, naming the valid keys.
    """
    cls = get_model(name)
    cls.resolve_hparams(overrides)  # fail early, before any weights are allocated
    return cls(data, task, **overrides)
