"""Unimodal chest X-ray baseline: ``cxr_resnet``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from raybench.models.base import (
    TRAINER_HPARAMS,
    TRAINER_SEARCH_SPACE,
    DataSpec,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
)
from raybench.models.cxr_encoders import CXR_HPARAMS, build_cxr_encoder
from raybench.models.registry import register_model

__all__ = ["CXRResNet"]


@register_model("cxr_resnet")
class CXRResNet(MultimodalModel):
    """ResNet image classifier; the unimodal CXR baseline of MedFuse.

    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
    arXiv:1512.03385; as used by Hayat, Geras, Shamout, "MedFuse", MLHC 2022,
    arXiv:2207.07027 (ImageNet-initialised ResNet-34, fc replaced by a linear head).

    Faithful: torchvision ResNet-34 without fc, global average pooling, linear head.
    Deviations: dropout (0.3) before the head; ImageNet weights only if already cached
    locally (see :mod:`raybench.models.cxr_encoders`). An absent image is the zero tensor
    and is classified like any other image (``handles_missing_cxr`` is False).
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"cxr"})
    handles_missing_cxr: ClassVar[bool] = False

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        self.cxr_encoder = build_cxr_encoder(self.hparams, data.cxr_channels)
        self.dropout = nn.Dropout(float(self.hparams["dropout"]))
        self.head = nn.Linear(self.cxr_encoder.out_dim, task.n_outputs)

    @classmethod
    def default_hparams(cls) -> dict:
        """resnet34, ImageNet init if cached, dropout 0.3, lr 1e-4."""
        return {**CXR_HPARAMS, "dropout": 0.3, **TRAINER_HPARAMS}

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, dropout."""
        return {**TRAINER_SEARCH_SPACE, "dropout": {"uniform": [0.0, 0.5]}}

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Logits from the image feature."""
        feat = self.cxr_encoder(batch["cxr"])
        return ModelOutput(logits=self.head(self.dropout(feat)), aux_losses={})
