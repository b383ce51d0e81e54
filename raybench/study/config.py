"""Study configuration: load and validate a study YAML, expand it into experiments.

::

    study = load_study(Path("studies/demo.yaml"), ["search.n_calls=5"])
    for experiment in expand_experiments(study):          # task x cohort x method x ratio
        space = search_space_for(study, experiment.method)  # what the searcher samples
        fixed = fixed_hparams_for(study, experiment.method) # the rest of the hparams
        config = to_train_config(study, experiment, seed=study.seeds[0])

Every problem is a :class:`RaybenchError` naming the file, the field path and what was
expected, raised before anything starts. The schema itself is :mod:`raybench.study.schema`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from raybench.errors import RaybenchError
from raybench.study.checks import method_search_space
from raybench.study.schema import (
    COHORTS,
    GROUP_ATTRIBUTES,
    METHOD_KEYS,
    SCHEMA_VERSION,
    SEARCH_TYPES,
    SPLITS,
    STORAGE_SCHEMES,
    DataSection,
    FairnessSection,
    FixedSearch,
    GPSearch,
    MethodConfig,
    RandomSearch,
    ReportSection,
    ResourcesSection,
    RobustnessSection,
    StudyConfig,
    SyntheticData,
    TrainingSection,
)
from raybench.study.ssl_plan import (
    downstream_fixed,
    downstream_space,
    is_ssl_method,
    ssl_experiment_methods,
    ssl_ratio,
    ssl_tasks,
)

if TYPE_CHECKING:
    from raybench.trainer import TrainConfig

__all__ = [
    "COHORTS", "GROUP_ATTRIBUTES", "METHOD_KEYS", "SCHEMA_VERSION", "SEARCH_TYPES", "SPLITS",
    "STORAGE_SCHEMES", "DataSection", "Experiment", "FairnessSection", "FixedSearch",
    "GPSearch", "MethodConfig", "RandomSearch", "ReportSection", "ResourcesSection",
    "RobustnessSection", "StudyConfig", "SyntheticData", "TrainingSection",
    "apply_overrides", "expand_experiments", "fixed_hparams_for", "load_study",
    "method_cohorts", "method_missing_ratios", "resolved_dict", "search_settings_for",
    "search_space_for", "smoke_test", "to_train_config", "validate_study",
]


# ----------------------------------------------------------------------------- experiments
def ratio_label(ratio: float) -> str:
    """``0.4`` -> ``"0.4"``, ``0.0`` -> ``"0"``: positional, never an exponent, exact."""
    text = format(Decimal(repr(float(ratio))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One cell of the study grid; searched and repeated over seeds by the runner.

    ``experiment_id`` is derived: ``<task>-<cohort>-<method>-m<ratio>``, e.g.
    ``mortality-base-medfuse-m0.4`` -- readable, stable across runs, unique in a study.
    """

    task: str
    cohort: str
    method: str
    missing_ratio: float
    experiment_id: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing_ratio", float(self.missing_ratio))
        object.__setattr__(self, "experiment_id", f"{self.task}-{self.cohort}-{self.method}"
                                                  f"-m{ratio_label(self.missing_ratio)}")


def method_cohorts(study: StudyConfig, method: str) -> tuple[str, ...]:
    """The cohorts ``method`` runs on: its own restriction, else the study's."""
    return study.methods[method].cohorts or study.cohorts


def method_missing_ratios(study: StudyConfig, method: str) -> tuple[float, ...]:
    """The missing-CXR ratios ``method`` runs at: its own restriction, else the study's."""
    return study.methods[method].cxr_missing_ratios or study.robustness.cxr_missing_ratios


def expand_experiments(study: StudyConfig) -> list[Experiment]:
    """task x cohort x method x missing ratio, in file order, then the ``ssl`` section's
    downstream experiments (task x cohort x ``<method>/<evaluation>/<modality>``).

    Nothing is skipped: the only cells left out are those a method's own ``cohorts`` /
    ``cxr_missing_ratios`` exclude, written in the study file, and ``cxr`` SSL evaluations
    on the base cohort (the CXR-only rule, docs/ssl.md); impossible combinations were
    refused at validation.
    """
    experiments = [
        Experiment(task, cohort, method, ratio)
        for task in study.tasks
        for cohort in study.cohorts
        for method in study.methods
        if cohort in method_cohorts(study, method)
        for ratio in study.robustness.cxr_missing_ratios
        if ratio in method_missing_ratios(study, method)
    ]
    if study.ssl is not None:
        experiments += [Experiment(task, cohort, method, ssl_ratio(study))
                        for task in ssl_tasks(study) for cohort in study.cohorts
                        for method in ssl_experiment_methods(study, cohort)]
    return experiments


def search_settings_for(study: StudyConfig, method: str):
    """The search section that explores ``method``: the study's, or ``ssl.downstream_search``
    for a downstream SSL experiment (both have ``type`` and ``n_calls``)."""
    return study.ssl.downstream_search if is_ssl_method(method) else study.search


def search_space_for(study: StudyConfig, method: str) -> dict[str, dict]:
    """What the searcher samples for ``method`` (compact syntax; ``{}``: not searched).

    ``{}`` for a fixed search and for a method written with ``search_space: {}``; the runner
    then runs one configuration per seed.

    The method's ``search_space`` override, else the model's ``search_space()``, without
    the hyperparameters the study fixes.
    """
    if is_ssl_method(method):
        return downstream_space(study, method)
    if study.search.type == "fixed":
        return {}
    return method_search_space(method, study.methods[method])


def fixed_hparams_for(study: StudyConfig, method: str) -> dict[str, Any]:
    """Hyperparameters not searched: model defaults updated with the study's overrides.

    Disjoint from :func:`search_space_for`; their union is every hyperparameter, so a trial
    builds the model with ``{**fixed_hparams_for(...), **sampled}``.
    """
    from raybench.models import get_model

    if is_ssl_method(method):
        return downstream_fixed(study, method)
    hparams = {**get_model(method).default_hparams(), **study.methods[method].hparams}
    searched = search_space_for(study, method)
    return {k: v for k, v in hparams.items() if k not in searched}


def to_train_config(study: StudyConfig, experiment: Experiment, seed: int) -> TrainConfig:
    """The trainer settings of one run of ``experiment`` with ``seed``."""
    from raybench.data import LoaderConfig
    from raybench.tasks import get_task
    from raybench.trainer import TrainConfig

    t = study.training
    hourly = get_task(experiment.task).hourly

    def pick(general: int | None, for_hourly: int | None) -> int | None:
        return for_hourly if hourly and for_hourly is not None else general

    ssl = {}
    if study.ssl is not None:
        ssl = {"ssl_epochs": study.ssl.epochs, "ssl_patience": study.ssl.patience,
               "ssl_batch_size": study.ssl.batch_size, "probe_every": study.ssl.probe_every}
    return TrainConfig(
        **ssl,
        epochs=t.epochs, patience=t.patience, pretrain_epochs=t.pretrain_epochs,
        optimizer=t.optimizer, seed=int(seed), amp=t.amp,
        max_train_batches=pick(t.max_train_batches, t.hourly_max_train_batches),
        max_val_samples=pick(t.max_val_samples, t.hourly_max_val_samples),
        cohort=experiment.cohort, cxr_missing_ratio=experiment.missing_ratio,
        cxr_missing_splits=tuple(study.robustness.missing_splits),
        # MedMod's linear evaluation fits the probe on precomputed features: no augmentation
        loader=LoaderConfig(batch_size=t.batch_size, crop=t.crop,
                            augment=t.augment and "/linear/" not in experiment.method),
    )


# ----------------------------------------------------------------------------- resolved form
def resolved_dict(study: StudyConfig) -> dict[str, Any]:
    """The study with every default filled in, JSON/YAML-serialisable (``resolved_study.yaml``).

    Each method lists all its fixed hyperparameters (model defaults included) and the
    effective search space, so the file pins the exact grid; loading it back gives the same
    experiments, spaces and fixed hyperparameters.
    """
    out = study.model_dump(mode="json")
    for name, method in study.methods.items():
        space = method_search_space(name, method)
        fixed = fixed_hparams_for(study.model_copy(update={"search": GPSearch()}), name)
        out["methods"][name] = {
            "hparams": dict(sorted(fixed.items())), "search_space": space,
            "cohorts": list(method_cohorts(study, name)),
            "cxr_missing_ratios": list(method_missing_ratios(study, name)),
        }
    return out


def smoke_test(study: StudyConfig) -> StudyConfig:
    """A seconds-to-minutes version of ``study``: its first method on its first task, one
    cohort and ratio, 2 configurations x 2 seeds, 1 epoch of 4 batches, small synthetic data."""
    raw = study.model_dump(mode="python")
    method = next(iter(study.methods), None)  # none: an ssl-only study
    raw.update(
        name=f"{study.name}-smoke", storage=f"{study.storage.rstrip('/')}-smoke",
        tasks=study.tasks[:1], seeds=study.seeds[:2],
        cohorts=(method_cohorts(study, method) if method else study.cohorts)[:1],
        methods={method: {"hparams": study.methods[method].hparams,
                          "search_space": study.methods[method].search_space}
                 } if method else {},
    )
    raw["robustness"]["cxr_missing_ratios"] = (
        method_missing_ratios(study, method) if method else study.robustness.cxr_missing_ratios
    )[:1]
    if study.search.type == "gp":
        raw["search"].update(n_calls=2, n_initial_points=1)
    elif study.search.type == "random":
        raw["search"].update(n_calls=2)
    raw["training"].update(epochs=1, patience=1, pretrain_epochs=1, max_train_batches=4,
                           hourly_max_train_batches=4, max_val_samples=64,
                           hourly_max_val_samples=64)
    if study.ssl is not None:
        ssl = raw["ssl"]
        name = next(iter(study.ssl.methods))
        ssl.update(methods={name: ssl["methods"][name]}, tasks=list(raw["tasks"]),
                   evaluations=list(study.ssl.evaluations[:1]),
                   modalities=[m for m in study.ssl.modalities if m != "cxr"][:1] or ["ehr"],
                   epochs=2, probe_every=1, batch_size=min(study.ssl.batch_size, 16))
        ssl["pretrain_search"].update(type="fixed")
        ssl["downstream_search"].update(n_calls=1, n_initial_points=None)
        ssl["probe"].update(epochs=5)
    synthetic = study.data.synthetic
    if synthetic is not None:
        size = min(64, synthetic.preprocess.cxr_image_size)
        raw["data"]["synthetic"].update(
            patients=min(synthetic.patients, 200), image_size=min(synthetic.image_size, 64),
            preprocess=synthetic.preprocess.model_copy(update={
                "cxr_image_size": size, "imputations": (study.data.imputation,)}))
        if study.training.crop and study.training.crop > size:
            raw["training"]["crop"] = None
    return validate_study(raw, f"smoke test of {study.name}")


# ----------------------------------------------------------------------------- loading
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`: merged keys may be overridden, that is its purpose
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (safe subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RaybenchError(f"{where}: invalid YAML: {' '.join(str(problem).split())}"
                            ) from None


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """A copy of ``raw`` with ``a.b.c=value`` overrides applied (values parsed as YAML).

    Missing mappings are created; list items are addressed by index (``seeds.0=7``); a
    ``methods`` list becomes a mapping when a method is addressed (``methods.medfuse.hidden=64``).
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise RaybenchError(f"--set expects field.path=value, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise RaybenchError(f"--set {item}: the value is not valid YAML") from None
        if parts[0] == "methods" and len(parts) > 1 and isinstance(raw.get("methods"), list):
            raw["methods"] = {name: {} for name in raw["methods"]}
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                index: Any = int(part)
            elif isinstance(node, dict):
                index = part
                if not last and node.get(part) is None:
                    node[part] = {}
            else:
                where = ".".join(parts[:depth]) or "(top level)"
                raise RaybenchError(f"--set {item}: {where} is a {type(node).__name__}, "
                                    f"it has no field {part!r}")
            if last:
                node[index] = value
            else:
                node = node[index]
    return raw


def _field_path(loc: tuple) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif i > 0 and loc[i - 1] == "search" and part in SEARCH_TYPES:
            continue  # the tag pydantic adds for the tagged union, not a field
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def _valid_fields(loc: tuple) -> list[str] | None:
    """Field names of the model at ``loc`` (for "unknown field" messages), if it is one."""
    search_models = {"gp": GPSearch, "random": RandomSearch, "fixed": FixedSearch}
    model: type[BaseModel] | None = StudyConfig
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "search" and model is None:
            model = search_models.get(part)  # the tagged union's tag
        elif model is StudyConfig and part == "search":
            model = None
        elif model is StudyConfig and part == "methods":
            return None  # hyperparameters: reported by the cross checks
        elif model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            nested = [a for a in (getattr(annotation, "__args__", None) or (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
            model = nested[0] if nested else None
        else:
            return None
    return sorted(model.model_fields) if model is not None else None


def _error_text(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message.replace("a valid tuple", "a list").replace("a valid dictionary",
                                                                  "a mapping")
    if error["type"] == "extra_forbidden":
        valid = _valid_fields(loc[:-1])
        message = "unknown field" + (f"; expected one of: {', '.join(valid)}" if valid else "")
    if error["type"].endswith(("_type", "_parsing")) and "input" in error:
        shown = repr(error["input"])
        message += f", got {shown if len(shown) <= 40 else shown[:37] + '...'}"
    path = _field_path(loc)
    return " ".join(f"{path}: {message}".split()) if path else " ".join(message.split())


def validate_study(raw: Any, source: str) -> StudyConfig:
    """Validate a study mapping; a problem raises RaybenchError ``<source>: <field>: <why>``."""
    if not isinstance(raw, Mapping):
        raise RaybenchError(f"{source}: expected a mapping of study settings, got "
                            f"{type(raw).__name__}")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_error_text(e) for e in exc.errors())
        raise RaybenchError(f"{source}: {problems}") from None
    except RaybenchError as exc:  # a registry raising while validating
        raise RaybenchError(f"{source}: {exc}") from None


def load_study(path: Path, overrides: Iterable[str] = ()) -> StudyConfig:
    """Read, override (``["search.n_calls=5", ...]``) and validate a study YAML.

    ``name`` defaults to the file's stem and ``storage`` to ``results/<name>``.
    """
    path, overrides = Path(path), list(overrides)
    if not path.is_file():
        raise RaybenchError(f"study file {path} does not exist")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise RaybenchError(f"{path}: expected a mapping of study settings, got "
                            f"{type(raw).__name__}")
    raw.setdefault("name", path.stem)
    source = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    return validate_study(apply_overrides(raw, overrides), source)
