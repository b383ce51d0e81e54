"""Studies: the study YAML schema, its validation and its expansion into experiments.

Only :mod:`raybench.study.config` is imported here (pydantic and PyYAML; the model and task
registries are imported when a study is validated), so ``import raybench.study`` stays light.
"""

from __future__ import annotations

from raybench.study.config import (
    Experiment,
    StudyConfig,
    apply_overrides,
    expand_experiments,
    fixed_hparams_for,
    load_study,
    method_cohorts,
    method_missing_ratios,
    resolved_dict,
    search_space_for,
    smoke_test,
    to_train_config,
    validate_study,
)

__all__ = [
    "Experiment",
    "StudyConfig",
    "apply_overrides",
    "expand_experiments",
    "fixed_hparams_for",
    "load_study",
    "method_cohorts",
    "method_missing_ratios",
    "resolved_dict",
    "search_space_for",
    "smoke_test",
    "to_train_config",
    "validate_study",
]
