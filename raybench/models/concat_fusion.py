"""Feature-concatenation fusion: ``joint_fusion`` (end to end) and ``early_fusion`` (frozen).

Both follow MedFuse's "joint" and "early" baselines: EHR feature ``[B, hidden]`` and the
CXR feature projected to ``hidden`` are concatenated and classified. They differ only in
training: ``joint_fusion`` trains everything together; ``early_fusion`` first pretrains each
unimodal encoder with its own head (``pretrain_stages() == ["ehr", "cxr"]``) and then, in
stage ``"fusion"``, freezes both encoders and trains only the projection and classifier.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raybench.models.base import (
    TRAINER_HPARAMS,
    TRAINER_SEARCH_SPACE,
    DataSpec,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    set_requires_grad,
)
from raybench.models.cxr_encoders import CXR_HPARAMS, encode_present
from raybench.models.ehr_encoders import EHR_HPARAMS, EHR_SEARCH_SPACE
from raybench.models.encoders import build_encoder_pair
from raybench.models.registry import register_model

__all__ = ["JointFusion", "EarlyFusion", "cosine_alignment_loss"]


def cosine_alignment_loss(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a_i, b_i)`` averaged over the samples where ``mask`` is True."""
    per_sample = 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-6)
    weights = mask.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp(min=1.0)


class _ConcatFusion(MultimodalModel):
    """EHR encoder + CXR encoder -> [ehr_feat, proj(cxr_feat) or 0] -> MLP classifier."""

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        self.ehr_encoder, self.cxr_encoder = build_encoder_pair(data, hp)
        dim = self.ehr_encoder.out_dim
        self.dropout = nn.Dropout(float(hp["dropout"]))
        self.cxr_proj = nn.Linear(self.cxr_encoder.out_dim, dim)
        self.classifier = nn.Sequential(
            nn.Linear(2 * dim, dim),
            nn.ReLU(),
            nn.Dropout(float(hp["dropout"])),
            nn.Linear(dim, task.n_outputs),
        )

    @classmethod
    def default_hparams(cls) -> dict:
        """MedFuse anchors: LSTM 256 x 2, dropout 0.3, ResNet-34, lr 1e-4, no alignment."""
        return {**EHR_HPARAMS, **CXR_HPARAMS, "align_weight": 0.0, **TRAINER_HPARAMS}

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, hidden, ehr_layers, dropout, align_weight."""
        return {**TRAINER_SEARCH_SPACE, **EHR_SEARCH_SPACE, "align_weight": {"uniform": [0, 1]}}

    def _encode(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        present = batch["cxr_present"].to(torch.bool)
        ehr_feat = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        return ehr_feat, encode_present(self.cxr_encoder, batch["cxr"], present), present

    def _fuse(
        self, ehr_feat: torch.Tensor, cxr_feat: torch.Tensor, present: torch.Tensor
    ) -> ModelOutput:
        projected = self.cxr_proj(cxr_feat)
        projected = torch.where(present[:, None], projected, torch.zeros_like(projected))
        fused = self.dropout(torch.cat([ehr_feat, projected], dim=1))
        aux = {}
        weight = float(self.hparams["align_weight"])
        if weight > 0:
            aux["align"] = weight * cosine_alignment_loss(projected, ehr_feat, present)
        return ModelOutput(logits=self.classifier(fused), aux_losses=aux)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Fused logits; an absent image contributes a zero CXR feature."""
        return self._fuse(*self._encode(batch))


@register_model("joint_fusion")
class JointFusion(_ConcatFusion):
    """End-to-end concatenation fusion (MedFuse's "joint" baseline).

    Hayat, Geras, Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and
    chest X-ray images", MLHC 2022, arXiv:2207.07027.

    Faithful: LSTM EHR feature (256) concatenated with the ResNet-34 feature projected to
    256, all trained jointly; optional cosine alignment of the two features
    (``align_weight``, MedFuse's ``--align``, default 0). Deviations: a 2-layer MLP
    classifier instead of one linear layer; an absent image gives an exact zero CXR feature
    (and is not passed through the ResNet); the alignment loss is 1 - cosine of matched
    pairs over paired samples.
    """


@register_model("early_fusion")
class EarlyFusion(_ConcatFusion):
    """Concatenation of FROZEN pretrained unimodal encoders (MedFuse's "early").

    Hayat, Geras, Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and
    chest X-ray images", MLHC 2022, arXiv:2207.07027.

    Training: ``pretrain_stages() == ["ehr", "cxr"]``: in stage "ehr" (resp. "cxr") the
    logits come from a unimodal head on the EHR (resp. CXR) feature, so the trainer
    pretrains each encoder; in stage "cxr" ``extras["loss_mask"]`` marks samples that have
    an image (train that stage on those). Stage "fusion" (set at construction) freezes both
    encoders (``requires_grad=False``, kept in eval mode so BatchNorm/dropout are fixed too)
    and trains the projection + classifier only. Missing CXR: zero CXR feature.
    Deviations from MedFuse: MLP classifier, frozen encoders also kept in eval mode, the
    encoders are pretrained inside one model rather than loaded from separate checkpoints.
    """

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        dim_cxr = self.cxr_encoder.out_dim
        self.ehr_head = nn.Linear(self.ehr_encoder.out_dim, task.n_outputs)
        self.cxr_head = nn.Linear(dim_cxr, task.n_outputs)
        self.set_stage("fusion")

    def pretrain_stages(self) -> list[str]:
        """Unimodal pretraining of the EHR then the CXR encoder."""
        return ["ehr", "cxr"]

    def set_stage(self, stage: str) -> None:
        """Stages "ehr"/"cxr": encoders trainable, unimodal head; "fusion": encoders frozen."""
        super().set_stage(stage)
        set_requires_grad([self.ehr_encoder, self.cxr_encoder], stage != "fusion")
        self.train(self.training)

    def train(self, mode: bool = True) -> EarlyFusion:
        """Like ``nn.Module.train`` but frozen encoders stay in eval mode in stage "fusion"."""
        super().train(mode)
        if self.stage == "fusion":
            self.ehr_encoder.eval()
            self.cxr_encoder.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Stage-dependent logits (see class docstring)."""
        if self.stage == "ehr":
            feat = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
            return ModelOutput(logits=self.ehr_head(self.dropout(feat)), aux_losses={})
        present = batch["cxr_present"].to(torch.bool)
        if self.stage == "cxr":
            feat = encode_present(self.cxr_encoder, batch["cxr"], present)
            logits = self.cxr_head(self.dropout(feat))
            return ModelOutput(logits=logits, aux_losses={}, extras={"loss_mask": present})
        with torch.set_grad_enabled(False):
            ehr_feat, cxr_feat, present = self._encode(batch)
        return self._fuse(ehr_feat, cxr_feat, present)
