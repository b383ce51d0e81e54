"""Study rules that need the task and model registries (run by ``StudyConfig``'s validator).

Each problem is one string ``field.path: explanation``: unknown tasks or methods (listing
the known ones), hyperparameter overrides that the model does not have or of the wrong type,
malformed or contradictory search spaces, a method that does not support a task's kind, and
a CXR-only method asked to predict samples without an image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raybench.study.schema import METHOD_KEYS

if TYPE_CHECKING:
    from raybench.study.schema import MethodConfig, StudyConfig

__all__ = ["cross_check", "method_search_space"]


def method_search_space(name: str, method: MethodConfig) -> dict[str, dict]:
    """The space a search would explore: override or the model's, minus fixed overrides."""
    from raybench.models import get_model

    space = method.search_space
    if space is None:
        space = get_model(name).search_space()
    return {k: v for k, v in space.items() if k not in method.hparams}


def _type_problem(key: str, value: Any, default: Any) -> str | None:
    if default is None or value is None:
        return None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and numeric,
          float: numeric, str: isinstance(value, str)}.get(type(default), True)
    if ok:
        return None
    return (f"{key}: expected {type(default).__name__} like the default {default!r}, "
            f"got {value!r}")


def _method_problems(study: StudyConfig, name: str, method: MethodConfig) -> list[str]:
    from raybench.models import ModelConfigError, get_model, validate_search_space
    from raybench.models.cxr_encoders import CXR_BACKBONES
    from raybench.models.ehr_encoders import EHR_ENCODERS
    from raybench.study.ssl_plan import supervised_problem
    from raybench.tasks import get_task

    if (problem := supervised_problem(name, method.hparams)) is not None:
        return [problem]
    cls, where, problems = get_model(name), f"methods.{name}", []
    defaults = cls.default_hparams()
    valid = {"cxr_backbone": CXR_BACKBONES, "ehr_encoder": EHR_ENCODERS}
    for key, value in method.hparams.items():
        if key not in defaults:
            problems.append(f"{where}.{key}: not a hyperparameter of {name}; valid: "
                            f"{', '.join(sorted(defaults))} (or {', '.join(METHOD_KEYS)})")
        elif (problem := _type_problem(key, value, defaults[key])) is not None:
            problems.append(f"{where}.{problem}")
        elif key in valid and value not in valid[key]:
            problems.append(f"{where}.{key}: {value!r} is not one of {', '.join(valid[key])}")
    if method.search_space is not None:
        try:
            validate_search_space(method.search_space, defaults)
        except ModelConfigError as exc:
            problems.append(f"{where}.search_space: {exc}")
        both = sorted(set(method.search_space) & set(method.hparams))
        if both:
            problems.append(f"{where}: {', '.join(both)} both fixed and in search_space; "
                            "keep each hyperparameter in one place")
    # `search_space: {}` written on the method means "not searched" (one configuration x
    # seeds); a space emptied only by fixed hyperparameters is more likely a mistake.
    if (not problems and study.search.type != "fixed" and method.search_space is None
            and not method_search_space(name, method)):
        problems.append(f"{where}: every searched hyperparameter is fixed, nothing is left "
                        f"for the {study.search.type} search; free a hyperparameter, or "
                        "write `search_space: {}` to run it unsearched (one configuration "
                        "x seeds)")
    for key, allowed in (("cohorts", study.cohorts),
                         ("cxr_missing_ratios", study.robustness.cxr_missing_ratios)):
        extra = [v for v in getattr(method, key) or () if v not in allowed]
        if extra:
            problems.append(f"{where}.{key}: {', '.join(map(str, extra))} not among the "
                            f"study's {key} {list(allowed)}")
    for task in study.tasks:
        kind = get_task(task).kind
        if kind not in cls.supported_kinds:
            problems.append(f"{where}: {name} does not support {kind} tasks like {task!r} "
                            f"(supported: {', '.join(sorted(cls.supported_kinds))})")
    if set(cls.modalities) == {"cxr"}:
        problems.extend(_cxr_only_problems(study, name, method))
    return problems


def _cxr_only_problems(study: StudyConfig, name: str, method: MethodConfig) -> list[str]:
    where, problems = f"methods.{name}", []
    if "base" in (method.cohorts or study.cohorts):
        problems.append(
            f"{where}: {name} uses only the chest X-ray, so on the base cohort it would "
            "'predict' the samples without an image from a blank image; run it on the "
            f"matched cohort only ({name}: {{cohorts: [matched]}})")
    evaluated = [s for s in ("val", "test") if s in study.robustness.missing_splits]
    ratios = [r for r in method.cxr_missing_ratios or study.robustness.cxr_missing_ratios if r]
    if ratios and evaluated:
        problems.append(
            f"{where}: {name} uses only the chest X-ray, and missing ratios "
            f"{', '.join(map(str, ratios))} drop images from {'/'.join(evaluated)}, which it "
            f"cannot predict; restrict it ({name}: {{cxr_missing_ratios: [0.0]}}) or drop "
            "images from train only (robustness.missing_splits: [train])")
    return problems


def cross_check(study: StudyConfig) -> list[str]:
    """Problems that need the task/model registries, each as ``field.path: explanation``."""
    from raybench.models import list_models
    from raybench.tasks import list_tasks

    problems = []
    unknown = [t for t in study.tasks if t not in list_tasks()]
    if unknown:
        problems.append(f"tasks: unknown task(s) {', '.join(map(repr, unknown))}; known "
                        f"tasks: {', '.join(list_tasks())}")
    bad = [m for m in study.methods if m not in list_models()]
    if bad:
        problems.append(f"methods: unknown method(s) {', '.join(map(repr, bad))}; known "
                        f"methods: {', '.join(list_models())}")
    if problems:
        return problems
    for name, method in study.methods.items():
        problems.extend(_method_problems(study, name, method))
    synthetic, crop = study.data.synthetic, study.training.crop
    if study.ssl is not None:
        from raybench.study.ssl_plan import ssl_problems

        problems.extend(ssl_problems(study))
    if synthetic and crop and crop > synthetic.preprocess.cxr_image_size:
        problems.append(f"training.crop: {crop} is larger than the prepared images "
                        f"(data.synthetic.preprocess.cxr_image_size "
                        f"{synthetic.preprocess.cxr_image_size})")
    return problems
