"""The ``ssl`` section of a study: self-supervised pretraining and its downstream evaluation.

::

    ssl:
      methods:
        convirt: {temperature: 0.1, exclude_positive: true}
        vicreg: {sim_coeff: 25.0, std_coeff: 25.0, cov_coeff: 1.0}
        align: {init_temperature: 0.07}
      pretrain_search: {type: random, n_calls: 10, space: {ssl_lr: {uniform: [0.01, 0.1]}}}
      epochs: 300
      batch_size: 256
      optimizer: lars
      probe_every: 10
      evaluations: [linear, finetune]
      modalities: [multimodal, ehr, cxr]
      downstream_search: {type: random, n_calls: 5, space: {lr: {uniform: [1.0e-4, 1.0e-1]}}}

Field rules live here; rules that need the model registry are in
:mod:`raybench.study.ssl_plan` (run by the study's cross checks). ``docs/ssl.md`` describes
every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = ["EVALUATIONS", "SSL_MODALITIES", "ProbeSection", "SSLMethodConfig", "SSLSearch",
           "SSLSection"]

EVALUATIONS = ("linear", "finetune")
SSL_MODALITIES = ("multimodal", "ehr", "cxr")
#: Keys of an ``ssl.methods`` entry that are not hyperparameters.
SSL_METHOD_KEYS = ("hparams", "search_space")
# Strict, bounded numbers as in raybench.study.schema (which imports this module, so its
# aliases cannot be imported here): a boolean, a string or a float for an integer is refused.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Seed = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]
MAX_CALLS, MAX_EPOCHS, MAX_SAMPLES = 10_000, 10_000, 10**9


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("study", "{detail}", {"detail": message})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SSLSearch(_Section):
    """A search over pretraining or downstream hyperparameters (random, gp or fixed).

    ``space`` (compact syntax) applies to every method; ``None`` keeps each method's own
    (``pretrain_search_space()`` / ``search_space()``); ``{}`` searches nothing.
    """

    type: Literal["random", "gp", "fixed"] = "random"
    n_calls: Int = Field(10, gt=0, le=MAX_CALLS,
                         description="configurations (each run per seed)")
    n_initial_points: Int | None = Field(None, gt=0, le=MAX_CALLS,
                                         description="gp: random points first")
    acq_func: Literal["gp_hedge", "EI", "PI", "LCB"] = "gp_hedge"
    random_state: Seed = 0
    space: dict[str, dict[str, list]] | None = None

    @model_validator(mode="after")
    def _initial_within_calls(self) -> SSLSearch:
        if self.n_initial_points is not None and self.n_initial_points > self.n_calls:
            raise _fail(f"n_initial_points ({self.n_initial_points}) must be <= n_calls "
                        f"({self.n_calls})")
        return self

    def initial_points(self) -> int:
        """Random configurations before the GP (all of them for a random search)."""
        if self.type == "random":
            return self.n_calls
        return self.n_initial_points or min(5, self.n_calls)


class SSLMethodConfig(_Section):
    """One SSL method: fixed hyperparameters and an optional own pretraining search space."""

    hparams: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, dict[str, list]] | None = None


def _method_entry(spec: Any) -> Any:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        return spec
    entry = {k: spec[k] for k in SSL_METHOD_KEYS if k in spec and k != "hparams"}
    nested = spec.get("hparams") or {}
    inline = {k: v for k, v in spec.items() if k not in SSL_METHOD_KEYS}
    entry["hparams"] = {**nested, **inline} if isinstance(nested, Mapping) else nested
    return entry


class ProbeSection(_Section):
    """The linear probe that scores each stored checkpoint (on cached frozen features)."""

    epochs: Int = Field(100, ge=1, le=MAX_EPOCHS,
                        description="probe training epochs (early stopping)")
    patience: Int = Field(10, ge=1, le=MAX_EPOCHS)
    lr: Float = Field(1e-3, gt=0, le=10.0)
    batch_size: Int = Field(256, ge=1, le=65_536)
    max_train_samples: Int | None = Field(10000, ge=1, le=MAX_SAMPLES,
                                          description="per task and cohort")
    max_val_samples: Int | None = Field(10000, ge=1, le=MAX_SAMPLES,
                                        description="per task and cohort")


def _names(values: tuple[str, ...], known: tuple[str, ...], what: str) -> tuple[str, ...]:
    if not values:
        raise _fail(f"needs at least one {what}")
    unknown = [v for v in values if v not in known]
    if unknown:
        raise _fail(f"unknown {what}(s) {', '.join(map(repr, unknown))}; known: "
                    f"{', '.join(known)}")
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise _fail(f"duplicate {what}: {', '.join(dupes)}")
    return values


class SSLSection(_Section):
    """Self-supervised pretraining (once per method, configuration and seed) and the
    downstream experiments ``<method>/<evaluation>/<modality>`` it expands into."""

    methods: dict[str, SSLMethodConfig]
    pretrain_task: str = Field("phenotyping", description="whose paired samples pretrain")
    tasks: tuple[str, ...] | None = Field(None, description="downstream; default: the study's")
    pretrain_search: SSLSearch = Field(default_factory=lambda: SSLSearch(type="fixed"))
    epochs: Int = Field(300, ge=1, le=MAX_EPOCHS)
    batch_size: Int = Field(256, le=65_536)
    patience: Int = Field(30, ge=1, le=MAX_EPOCHS,
                          description="early stopping on validation SSL loss")
    optimizer: Literal["lars", "adamw"] | None = None
    probe_every: Int = Field(10, ge=1, le=MAX_EPOCHS)
    evaluations: tuple[str, ...] = EVALUATIONS
    modalities: tuple[str, ...] = SSL_MODALITIES
    downstream_search: SSLSearch = Field(default_factory=lambda: SSLSearch(n_calls=5))
    probe: ProbeSection = Field(default_factory=ProbeSection)

    @field_validator("methods", mode="before")
    @classmethod
    def _method_mapping(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {name: {} for name in value}
        if isinstance(value, Mapping):
            if not value:
                raise _fail("needs at least one method")
            return {name: _method_entry(spec) for name, spec in value.items()}
        return value

    @field_validator("batch_size")
    @classmethod
    def _pairs(cls, value: int) -> int:
        if value < 2:
            raise _fail(f"got {value}: contrastive and VICReg losses need at least 2 paired "
                        "samples per batch")
        return value

    @field_validator("evaluations")
    @classmethod
    def _evaluations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _names(value, EVALUATIONS, "evaluation")

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _names(value, SSL_MODALITIES, "modality")

    @model_validator(mode="after")
    def _probe_within_epochs(self) -> SSLSection:
        if self.probe_every > self.epochs:
            raise _fail(f"probe_every ({self.probe_every}) is larger than epochs "
                        f"({self.epochs}): no checkpoint would be probed before the last epoch")
        return self
