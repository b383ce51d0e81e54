"""The ``ssl`` section expanded: pretraining runs, downstream experiments, their checks.

A downstream experiment's method is ``<method>/<evaluation>/<modality>`` (e.g.
``convirt/linear/multimodal``); it runs like any method of the study (searched, one trial
per seed, in ``trials.parquet`` and the report) on the study's cohorts -- ``cxr`` on the
matched cohort only, the CXR-only rule -- at the study's smallest CXR missing ratio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raybench.study.ssl_schema import SSLSearch

if TYPE_CHECKING:
    from raybench.study.schema import StudyConfig

__all__ = ["downstream_fixed", "downstream_space", "experiment_modalities", "is_ssl_method",
           "model_name", "pretrain_fixed", "pretrain_space", "ssl_experiment_methods",
           "ssl_problems", "ssl_ratio", "ssl_tasks", "supervised_problem"]

LARS_MAX_LR = 10.0


def is_ssl_method(method: str) -> bool:
    """True for a downstream experiment's method name ``<method>/<evaluation>/<modality>``."""
    return method.count("/") == 2


def model_name(method: str) -> str:
    """The registered model of a study method (``convirt/linear/ehr`` -> ``convirt``)."""
    return method.split("/", 1)[0]


def _parts(method: str) -> tuple[str, str, str]:
    name, evaluation, modality = method.split("/")
    return name, evaluation, modality


def experiment_modalities(method: str, model_modalities: frozenset[str]) -> str:
    """The ``modalities`` column: what the experiment's predictions use (``cxr+ehr``...)."""
    if is_ssl_method(method):
        modality = _parts(method)[2]
        return "cxr+ehr" if modality == "multimodal" else modality
    return "+".join(sorted(model_modalities))


def ssl_tasks(study: StudyConfig) -> tuple[str, ...]:
    """Downstream tasks of the ssl section (default: the study's)."""
    return study.ssl.tasks or study.tasks


def ssl_ratio(study: StudyConfig) -> float:
    """The CXR missing ratio of the downstream experiments: the study's smallest."""
    return float(min(study.robustness.cxr_missing_ratios))


def ssl_experiment_methods(study: StudyConfig, cohort: str) -> list[str]:
    """Downstream method names on ``cohort``, in file order (``cxr`` only on matched)."""
    ssl = study.ssl
    return [f"{m}/{e}/{mod}" for m in ssl.methods for e in ssl.evaluations
            for mod in ssl.modalities if mod != "cxr" or cohort == "matched"]


def _model(name: str):
    from raybench.models import get_model

    return get_model(name)


def pretrain_space(study: StudyConfig, name: str) -> dict[str, dict]:
    """What the pretraining search samples for SSL method ``name`` (``{}``: nothing)."""
    ssl, method = study.ssl, study.ssl.methods[name]
    if ssl.pretrain_search.type == "fixed":
        return {}
    space = method.search_space
    if space is None:
        space = ssl.pretrain_search.space
    if space is None:
        space = _model(name).pretrain_search_space()
    return {k: v for k, v in space.items() if k not in method.hparams}


def pretrain_fixed(study: StudyConfig, name: str) -> dict[str, Any]:
    """Model defaults updated with the section's fixed values, minus the searched keys."""
    ssl = study.ssl
    hparams = {**_model(name).default_hparams(), **ssl.methods[name].hparams}
    if ssl.optimizer is not None and "ssl_optimizer" not in ssl.methods[name].hparams:
        hparams["ssl_optimizer"] = ssl.optimizer
    searched = pretrain_space(study, name)
    return {k: v for k, v in hparams.items() if k not in searched}


def downstream_space(study: StudyConfig, method: str) -> dict[str, dict]:
    """What the downstream search samples for ``<method>/<evaluation>/<modality>``."""
    search = study.ssl.downstream_search
    if search.type == "fixed":
        return {}
    space = search.space if search.space is not None else _model(model_name(method)).search_space()
    fixed = study.ssl.methods[model_name(method)].hparams
    return {k: v for k, v in space.items() if k not in fixed}


def downstream_fixed(study: StudyConfig, method: str) -> dict[str, Any]:
    """Fixed hyperparameters of a downstream experiment (the selected pretraining's own are
    merged in by the trial); disjoint from :func:`downstream_space`."""
    name, evaluation, modality = _parts(method)
    hparams = {**pretrain_fixed(study, name), "ssl_eval": evaluation, "ssl_modality": modality}
    searched = downstream_space(study, method)
    return {k: v for k, v in hparams.items() if k not in searched}


def supervised_problem(name: str, hparams: dict) -> str | None:
    """A clear message when a supervised method is given SSL settings, else None."""
    ssl_keys = sorted(k for k in hparams if k in ("ssl_eval", "ssl_modality", "probe_layer"))
    if ssl_keys and not _model(name).pretrain_keys():
        return (f"methods.{name}.{ssl_keys[0]}: {name} is supervised; {ssl_keys[0]} applies "
                "to the self-supervised methods under `ssl.methods` (convirt, vicreg, align)")
    if _model(name).pretrain_keys():
        return (f"methods.{name}: {name} is self-supervised; list it under `ssl.methods` so "
                "that it is pretrained once and evaluated downstream")
    return None


def _search_problems(where: str, search: SSLSearch, valid: dict) -> list[str]:
    from raybench.models import ModelConfigError, validate_search_space

    if search.space is None:
        return []
    try:
        validate_search_space(search.space, valid)
    except ModelConfigError as exc:
        return [f"{where}.space: {exc}"]
    return []


def _upper(spec: dict) -> float:
    ((kind, args),) = spec.items()
    values = args if kind == "choice" else args[1:]
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return max(numbers) if numbers else 0.0


def _method_problems(study: StudyConfig, name: str) -> list[str]:
    from raybench.models import ModelConfigError, validate_search_space
    from raybench.study.checks import _type_problem

    cls, where = _model(name), f"ssl.methods.{name}"
    if not cls.pretrain_keys():
        return [f"{where}: {name} is not a self-supervised method (it has no label-free "
                "pretraining stage)"]
    defaults, method, problems = cls.default_hparams(), study.ssl.methods[name], []
    for key, value in method.hparams.items():
        if key not in defaults:
            problems.append(f"{where}.{key}: not a hyperparameter of {name}; valid: "
                            f"{', '.join(sorted(defaults))}")
        elif (problem := _type_problem(key, value, defaults[key])) is not None:
            problems.append(f"{where}.{problem}")
        elif key in ("ssl_eval", "ssl_modality"):
            problems.append(f"{where}.{key}: set by ssl.evaluations / ssl.modalities")
    if method.search_space is not None:
        try:
            validate_search_space(method.search_space, defaults)
        except ModelConfigError as exc:
            problems.append(f"{where}.search_space: {exc}")
    if problems:
        return problems
    fixed, space = pretrain_fixed(study, name), pretrain_space(study, name)
    lr = max(float(fixed.get("ssl_lr", 0.0)), _upper(space["ssl_lr"]) if "ssl_lr" in space else 0)
    if fixed.get("ssl_optimizer") == "lars" and lr > LARS_MAX_LR:
        problems.append(f"{where}: optimizer lars with ssl_lr up to {lr:g}: LARS scales each "
                        f"layer's step by its trust ratio, so its lr is at most {LARS_MAX_LR:g} "
                        "(MedMod: 0.6); lower ssl_lr or use optimizer adamw")
    return problems


def ssl_problems(study: StudyConfig) -> list[str]:
    """Registry-dependent problems of the ``ssl`` section, as ``field.path: explanation``."""
    from raybench.models import list_models
    from raybench.tasks import list_tasks

    ssl = study.ssl
    problems = []
    unknown = [m for m in ssl.methods if m not in list_models()]
    if unknown:
        return [f"ssl.methods: unknown method(s) {', '.join(map(repr, unknown))}; known "
                f"methods: {', '.join(list_models())}"]
    for task in [ssl.pretrain_task, *(ssl.tasks or ())]:
        if task not in list_tasks():
            problems.append(f"ssl: unknown task {task!r}; known tasks: {', '.join(list_tasks())}")
    for name in ssl.methods:
        problems.extend(_method_problems(study, name))
    if not problems:
        name = next(iter(ssl.methods))
        downstream = {**_model(name).default_hparams()}
        problems += _search_problems("ssl.pretrain_search", ssl.pretrain_search, downstream)
        problems += _search_problems("ssl.downstream_search", ssl.downstream_search, downstream)
    if "cxr" in ssl.modalities and "matched" not in study.cohorts:
        problems.append("ssl.modalities: cxr runs on the matched cohort only (the CXR-only "
                        "rule) and the study's cohorts have no matched; add it or drop cxr")
    evaluated = [s for s in ("val", "test") if s in study.robustness.missing_splits]
    if "cxr" in ssl.modalities and ssl_ratio(study) > 0 and evaluated:
        problems.append(f"ssl.modalities: cxr would be evaluated with {ssl_ratio(study):g} of "
                        f"the images removed from {'/'.join(evaluated)} (the study's smallest "
                        "missing ratio); drop cxr or add missing ratio 0.0")
    return problems
