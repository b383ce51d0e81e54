"""Self-supervised pretraining: run only the label-free (``"self"``) stages of a method.

The study runner calls :func:`pretrain` once per (method, pretraining hyperparameters, seed,
cohort, dataset) and stores the result as a pretraining artifact
(:mod:`raybench.study.artifacts`); every downstream trial then loads it with
``train_and_evaluate(..., pretrained=...)``. A :class:`StageCheckpoints` object receives a
checkpoint every ``probe_every`` epochs (the runner probes it and stores it) and returns the
last snapshot when a killed run starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from raybench.data import PreparedTask
from raybench.errors import RaybenchError
from raybench.models.base import MultimodalModel
from raybench.trainer import TrainConfig, _Run, _self_stages, _stage_epochs

__all__ = ["PretrainResult", "StageCheckpoints", "pretrain"]


class StageCheckpoints(Protocol):
    """Where a ``"self"`` stage stores its checkpoints and resumes from (see :func:`pretrain`).

    ``save`` gets the stage, the epoch, the model (in the state of that epoch) and a
    snapshot to resume from (plain tensors and numbers: loadable with
    ``torch.load(weights_only=True)``); ``resume`` returns the last saved snapshot or None.
    """

    def save(self, stage: str, epoch: int, model: MultimodalModel, snapshot: dict) -> None:
        """Store the checkpoint of ``epoch`` and the resume snapshot."""

    def resume(self, stage: str) -> dict | None:
        """The latest snapshot of ``stage``, or None to start from epoch 1."""


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the model after its ``"self"`` stages and their story."""

    model: MultimodalModel
    history: list[dict]
    best_epochs: dict[str, int]
    train_seconds: float


def pretrain(data: PreparedTask, method: str, hparams: dict | None = None,
             cfg: TrainConfig | None = None, checkpoints: StageCheckpoints | None = None
             ) -> PretrainResult:
    """Run only the label-free (``"self"``) stages of ``method`` on ``data``'s training split.

    Each ends in its best state by validation SSL loss. With ``checkpoints`` every
    ``cfg.probe_every`` epochs (and the stage's last epoch) are stored, and a stage with a
    saved snapshot continues from it. Raises RaybenchError if the method has no such stage.
    """
    cfg = cfg or TrainConfig()
    run = _Run(data, method, dict(hparams or {}), cfg)
    stages = _self_stages(run.model)
    if not stages:
        raise RaybenchError(f"{method} has no self-supervised ('self') stage to pretrain")
    if cfg.probe_every is not None and cfg.probe_every > _stage_epochs(cfg, "self"):
        raise RaybenchError(f"probe_every ({cfg.probe_every}) is larger than the pretraining "
                            f"epochs ({_stage_epochs(cfg, 'self')}): no checkpoint would be "
                            "probed before the last epoch")
    best = {stage: run.fit_stage(stage, _stage_epochs(cfg, "self"), checkpoints)[0]
            for stage in stages}
    return PretrainResult(run.model, run.history, best, run.train_seconds)
