"""The model contract shared by every method: specs, output type, base class, loss helpers.

Every model in :mod:`raybench.models` is a :class:`MultimodalModel`. It is built from two
frozen specs -- :class:`DataSpec` (shapes, taken from the prepared dataset) and
:class:`TaskSpec` (what to predict) -- plus a flat dict of JSON-serialisable hyperparameters,
and maps a batch dict of tensors to a :class:`ModelOutput` whose ``logits`` the trainer turns
into the task loss. See ``docs/models.md`` for the full contract.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raybench.errors import RaybenchError

__all__ = [
    "TASK_KINDS",
    "MODALITIES",
    "OPTIONAL_INPUTS",
    "SEARCH_SPACE_KINDS",
    "TRAINER_HPARAMS",
    "TRAINER_SEARCH_SPACE",
    "DataSpec",
    "TaskSpec",
    "ModelOutput",
    "ModelConfigError",
    "MultimodalModel",
    "OptimizerSpec",
    "STAGE_OBJECTIVES",
    "STAGE_SAMPLES",
    "task_loss",
    "mean_probability_logits",
    "set_requires_grad",
    "validate_search_space",
    "value_mask_pairs",
]

TASK_KINDS = frozenset({"binary", "multilabel", "multiclass"})
MODALITIES = frozenset({"ehr", "cxr"})
SEARCH_SPACE_KINDS = frozenset({"loguniform", "uniform", "choice", "randint"})
#: Batch keys a model may declare in ``MultimodalModel.inputs``; the loader adds only those.
#: ``cxr_hours``: float32 ``[B]``, hours from the chosen image's study time to the sample's
#: prediction time (>= 0), 0 where the sample has no image.
OPTIONAL_INPUTS = frozenset({"cxr_hours"})
#: What a training stage optimises: the task loss (plus ``aux_losses``) or, for a
#: self-supervised stage, the ``aux_losses`` alone (no labels are read).
STAGE_OBJECTIVES = ("task", "self")
#: Which training samples a stage uses: all of the cohort, or only those with an image.
STAGE_SAMPLES = ("all", "paired")
#: Prefix of the observation-mask channels in the prepared EHR features (``mask:<variable>``).
MASK_PREFIX = "mask:"

#: Optimiser hyperparameters carried in every model's hparams so that a sampled config can be
#: passed to ``build_model`` whole; models ignore them, the trainer reads them.
TRAINER_HPARAMS: dict[str, Any] = {"lr": 1e-4, "weight_decay": 0.0}
TRAINER_SEARCH_SPACE: dict[str, dict] = {
    "lr": {"loguniform": [1e-5, 1e-3]},
    "weight_decay": {"choice": [0.0, 1e-5, 1e-4, 1e-3]},
}


class ModelConfigError(RaybenchError, ValueError):
    """Bad model name, hyperparameter or spec (a ``ValueError`` the CLI prints as one line)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """How the trainer optimises one stage (see :mod:`raybench.optim`).

    ``name``: ``adam`` | ``adamw`` | ``lars``; ``schedule``: the learning-rate multiplier
    per epoch: ``constant``, ``multistep`` (x0.1 at each fraction ``milestones`` of the
    stage's epochs), ``cosine`` (to 0 over the stage's epochs) or ``warmup_cosine_restarts``
    (linear warm-up over ``warmup_epochs``, then cosine annealing with warm restarts every
    ``restart_epochs``). ``momentum`` and ``trust_coefficient`` are LARS's.
    """

    name: str
    lr: float
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[float, ...] = ()
    warmup_epochs: int = 0
    restart_epochs: int = 0
    momentum: float = 0.9
    trust_coefficient: float = 1e-3


@dataclass(frozen=True)
class DataSpec:
    """Input shapes, read from the prepared dataset (never from the study YAML).

    ``ehr_features`` is F of the ``[B, T, F]`` EHR tensor (mask channels included);
    ``image_size`` is H == W of the ``[B, C, H, W]`` chest X-ray tensor.
    ``feature_names`` names the F channels in order (empty when unknown, e.g. in unit tests;
    see :func:`value_mask_pairs`), ``step_hours`` is the hours one EHR step covers.
    """

    ehr_features: int
    image_size: int
    cxr_channels: int = 3
    feature_names: tuple[str, ...] = ()
    step_hours: float = 1.0

    def __post_init__(self) -> None:
        for key in ("ehr_features", "image_size", "cxr_channels"):
            if int(getattr(self, key)) < 1:
                raise ModelConfigError(f"DataSpec.{key} must be >= 1, got {getattr(self, key)}")
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        if self.feature_names and len(self.feature_names) != self.ehr_features:
            raise ModelConfigError(
                f"DataSpec.feature_names has {len(self.feature_names)} names for "
                f"ehr_features={self.ehr_features} channels")
        if not self.step_hours > 0:
            raise ModelConfigError(f"DataSpec.step_hours must be > 0, got {self.step_hours}")


def value_mask_pairs(feature_names: Iterable[str]) -> list[tuple[int, int | None]]:
    """``(value channel, its mask channel or None)`` for every non-mask EHR channel, in order.

    Prepared datasets name channels ``<variable>`` (continuous, z-scored),
    ``<variable>=<category>`` (one-hot categorical) and ``mask:<variable>`` (1 where the
    variable was observed in the step, 0 where imputed). Every one-hot channel of a variable
    pairs with that variable's single mask channel; a value without a mask gets ``None``.
    """
    names = list(feature_names)
    mask_of = {n[len(MASK_PREFIX):]: i for i, n in enumerate(names) if n.startswith(MASK_PREFIX)}
    return [(i, mask_of.get(n.split("=", 1)[0]))
            for i, n in enumerate(names) if not n.startswith(MASK_PREFIX)]


@dataclass(frozen=True)
class TaskSpec:
    """The prediction task: ``kind`` in TASK_KINDS, ``n_outputs`` logits per sample."""

    name: str
    kind: str
    n_outputs: int

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ModelConfigError(
                f"TaskSpec.kind must be one of {sorted(TASK_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "binary" and self.n_outputs != 1:
            raise ModelConfigError(f"binary task {self.name!r} needs n_outputs == 1")
        if self.kind == "multiclass" and self.n_outputs < 2:
            raise ModelConfigError(f"multiclass task {self.name!r} needs n_outputs >= 2")
        if self.n_outputs < 1:
            raise ModelConfigError(f"task {self.name!r} needs n_outputs >= 1")


@dataclass
class ModelOutput:
    """What ``forward`` returns.

    ``logits``: ``[B, n_outputs]``. ``aux_losses``: already-weighted scalar losses the trainer
    adds to the task loss (may be empty). ``extras``: anything else (unimodal logits,
    ``loss_mask`` -- a bool ``[B]`` restricting the task loss to some samples).
    """

    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class MultimodalModel(nn.Module):
    """Base class of every registered model.

    Subclasses set the class variables, implement :meth:`default_hparams`,
    :meth:`search_space` and :meth:`forward`, and call ``super().__init__(data, task,
    **hparams)`` first; the merged, validated hyperparameters are then in ``self.hparams``.
    By convention (the contract tests rely on it) the encoder of each modality lives in the
    attribute ``ehr_encoder`` / ``cxr_encoder``.

    ``inputs`` declares optional batch keys (from :data:`OPTIONAL_INPUTS`) the loader must
    add; ``batch_dependent`` marks a model whose output for a sample depends on the other
    samples of the batch. The trainer hooks (:meth:`on_epoch_start`, :meth:`after_backward`,
    :meth:`on_epoch_end`) are no-ops by default. State that a hook changes and that changes
    what the model computes must live in registered buffers (and every parameter must exist
    from ``__init__``), because the trainer selects the best epoch by copying and reloading
    ``state_dict()``.
    """

    name: ClassVar[str] = ""
    modalities: ClassVar[frozenset[str]] = frozenset()
    handles_missing_cxr: ClassVar[bool] = False
    supported_kinds: ClassVar[frozenset[str]] = TASK_KINDS
    inputs: ClassVar[frozenset[str]] = frozenset()
    batch_dependent: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        known = ", ".join(sorted(OPTIONAL_INPUTS))
        if not isinstance(cls.inputs, frozenset):
            raise ModelConfigError(f"{cls.__qualname__}.inputs must be a frozenset (of {known}), "
                                   f"got {cls.inputs!r}")
        unknown = sorted(cls.inputs - OPTIONAL_INPUTS)
        if unknown:
            raise ModelConfigError(f"{cls.__qualname__}.inputs: unknown optional input(s) "
                                   f"{', '.join(map(repr, unknown))}; known: {known}")

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__()
        if task.kind not in self.supported_kinds:
            raise ModelConfigError(
                f"model {self.name!r} does not support {task.kind!r} tasks "
                f"(supported: {sorted(self.supported_kinds)})"
            )
        self.data = data
        self.task = task
        self.hparams: dict[str, Any] = self.resolve_hparams(hparams)
        self.stage = "fusion"

    # ----------------------------------------------------------------- hyperparameters
    @classmethod
    def default_hparams(cls) -> dict:
        """Paper/anchor defaults (flat, JSON-serialisable); includes TRAINER_HPARAMS."""
        return dict(TRAINER_HPARAMS)

    @classmethod
    def search_space(cls) -> dict:
        """Compact search space: ``{key: {"loguniform"|"uniform"|"choice"|"randint": [...]}}``."""
        return dict(TRAINER_SEARCH_SPACE)

    @classmethod
    def resolve_hparams(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """``default_hparams()`` updated with ``overrides``; unknown keys raise."""
        merged = cls.default_hparams()
        unknown = sorted(set(overrides) - set(merged))
        if unknown:
            raise ModelConfigError(
                f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for model "
                f"{cls.name!r}; valid keys: {', '.join(sorted(merged))}"
            )
        merged.update(overrides)
        return merged

    @classmethod
    def pretrain_keys(cls) -> tuple[str, ...]:
        """Hyperparameters that define what the ``"self"`` stages learn (default none).

        A study trains each distinct (method, values of these keys, seed, cohort, dataset)
        once and every downstream trial loads the result (see ``docs/ssl.md``).
        """
        return ()

    # ----------------------------------------------------------------- training hooks
    def pretrain_stages(self) -> list[str]:
        """Stages to train, in order, before the normal ``"fusion"`` stage (default none)."""
        return []

    def stage_objective(self, stage: str) -> str:
        """``"task"`` (task loss + ``aux_losses``, the default) or ``"self"`` (``aux_losses``
        only: a label-free stage, early-stopped on the validation ``aux_losses``)."""
        return "task"

    def stage_samples(self, stage: str) -> str:
        """``"all"`` samples of the cohort (default) or only ``"paired"`` ones (with an image)."""
        return "all"

    def optimizer_spec(self, stage: str) -> OptimizerSpec | None:
        """How to optimise ``stage``; None (default): the trainer's Adam/AdamW with the
        ``lr`` and ``weight_decay`` hyperparameters and a constant learning rate."""
        return None

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """What a ``"self"`` stage produced, to store and reload (default: ``state_dict()``)."""
        return self.state_dict()

    def load_pretrained(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`pretrained_state` returned (the trainer then skips the
        ``"self"`` stages); a key or shape mismatch raises ``ModelConfigError``."""
        try:
            self.load_state_dict(dict(state))
        except RuntimeError as exc:
            raise ModelConfigError(f"model {self.name!r}: pretrained state does not fit: "
                                   f"{' '.join(str(exc).split())[:300]}") from None

    def set_stage(self, stage: str) -> None:
        """Switch heads/freezing for ``stage`` (one of ``pretrain_stages()`` or "fusion")."""
        valid = [*self.pretrain_stages(), "fusion"]
        if stage not in valid:
            raise ModelConfigError(f"model {self.name!r}: unknown stage {stage!r}; valid: {valid}")
        self.stage = stage

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before the first batch of ``epoch`` (1-based) of ``epochs``
        in the current stage."""

    def after_backward(self, out: ModelOutput, batch: dict[str, torch.Tensor]) -> None:
        """Called by the trainer after ``loss.backward()`` and before ``optimizer.step()``
        (gradients are in ``p.grad``; ``out`` is this step's output)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called by the trainer after the last optimiser step of ``epoch``, before the
        validation pass that scores it."""

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:  # pragma: no cover
        """Map a batch dict (see ``docs/models.md``) to a :class:`ModelOutput`."""
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers
    def _aux_head_losses(
        self,
        batch: Mapping[str, torch.Tensor],
        heads: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]],
        weight: float,
    ) -> dict[str, torch.Tensor]:
        """Weighted per-head task losses ``{key: (logits, mask)}``; empty without labels."""
        if weight <= 0 or "y" not in batch:
            return {}
        return {
            key: weight * task_loss(logits, batch["y"], self.task.kind, mask)
            for key, (logits, mask) in heads.items()
        }


def set_requires_grad(modules: Iterable[nn.Module], flag: bool) -> None:
    """Freeze (``False``) or unfreeze (``True``) every parameter of ``modules``."""
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(flag)


def task_loss(
    logits: torch.Tensor, y: torch.Tensor, kind: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE-with-logits (binary/multilabel) or cross-entropy (multiclass), mean over samples.

    ``y``: binary ``[B]`` or ``[B, 1]``, multilabel ``[B, K]`` in {0, 1}, multiclass int
    ``[B]``. ``mask`` (bool ``[B]``) restricts the mean to some samples; an all-False mask
    gives a zero that is still attached to the graph.
    """
    if kind == "multiclass":
        per_sample = F.cross_entropy(logits, y.reshape(-1).long(), reduction="none")
    else:
        target = y.to(logits.dtype).reshape(logits.shape)
        per_sample = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_sample = per_sample.mean(dim=1)
    if mask is None:
        return per_sample.mean()
    weights = mask.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp(min=1.0)


def mean_probability_logits(logits: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Logits of the average of the heads' probabilities, computed in log space.

    binary/multilabel: ``log(p / (1 - p))`` with ``p`` the mean of the sigmoids;
    multiclass: ``log`` of the mean of the softmaxes (normalised log-probabilities, which
    are valid logits for softmax/cross-entropy).
    """
    log_n = math.log(len(logits))
    if kind == "multiclass":
        stacked = torch.stack([F.log_softmax(x, dim=-1) for x in logits])
        return torch.logsumexp(stacked, dim=0) - log_n
    log_p = torch.logsumexp(torch.stack([F.logsigmoid(x) for x in logits]), dim=0) - log_n
    log_q = torch.logsumexp(torch.stack([F.logsigmoid(-x) for x in logits]), dim=0) - log_n
    return log_p - log_q


def validate_search_space(space: Mapping[str, Any], valid_keys: Iterable[str] = ()) -> None:
    """Raise ModelConfigError unless ``space`` uses the compact syntax (and only valid keys)."""
    valid = set(valid_keys)
    for key, spec in space.items():
        if valid and key not in valid:
            raise ModelConfigError(f"search space key {key!r} is not a hyperparameter")
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ModelConfigError(f"search space {key!r}: expected {{kind: [...]}}, got {spec!r}")
        ((kind, args),) = spec.items()
        if kind not in SEARCH_SPACE_KINDS:
            raise ModelConfigError(
                f"search space {key!r}: unknown kind {kind!r} (use {sorted(SEARCH_SPACE_KINDS)})"
            )
        if not isinstance(args, list) or not args:
            raise ModelConfigError(f"search space {key!r}: arguments must be a non-empty list")
        if kind in ("loguniform", "uniform", "randint"):
            ok = len(args) == 2 and all(isinstance(a, int | float) for a in args)
            ok = ok and args[0] < args[1] and (kind != "loguniform" or args[0] > 0)
            ok = ok and (kind != "randint" or all(isinstance(a, int) for a in args))
            if not ok:
                raise ModelConfigError(f"search space {key!r}: bad {kind} bounds {args!r}")
