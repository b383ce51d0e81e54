"""Late fusion: ``late_fusion`` -- average of unimodal probabilities."""

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
    mean_probability_logits,
)
from raybench.models.cxr_encoders import CXR_HPARAMS, encode_present
from raybench.models.ehr_encoders import EHR_HPARAMS, EHR_SEARCH_SPACE
from raybench.models.encoders import build_encoder_pair
from raybench.models.registry import register_model

__all__ = ["LateFusion"]


@register_model("late_fusion")
class LateFusion(MultimodalModel):
    """Mean of the EHR head's and the CXR head's probabilities (MedFuse's "late" baseline).

    Hayat, Geras, Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and
    chest X-ray images", MLHC 2022, arXiv:2207.07027.

    The contract returns logits, so the output is the logit of the averaged probability:
    ``log(p / (1 - p))`` with ``p = (sigmoid(a) + sigmoid(b)) / 2`` for binary/multilabel,
    ``log((softmax(a) + softmax(b)) / 2)`` for multiclass (computed in log space). Samples
    without an image use the EHR head alone (its logit; its log-softmax for multiclass).
    Deviation: MedFuse averages two separately trained unimodal models; here both heads
    are trained jointly, each with its own task loss in ``aux_losses`` (``ehr_head``, and
    ``cxr_head`` over samples with an image), weighted by ``aux_weight`` and computed only
    when the batch carries ``y``. ``extras`` holds both heads' logits.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        self.ehr_encoder, self.cxr_encoder = build_encoder_pair(data, hp)
        self.dropout = nn.Dropout(float(hp["dropout"]))
        self.ehr_head = nn.Linear(self.ehr_encoder.out_dim, task.n_outputs)
        self.cxr_head = nn.Linear(self.cxr_encoder.out_dim, task.n_outputs)

    @classmethod
    def default_hparams(cls) -> dict:
        """MedFuse anchors + ``aux_weight`` 1.0 for each unimodal head's loss."""
        return {**EHR_HPARAMS, **CXR_HPARAMS, "aux_weight": 1.0, **TRAINER_HPARAMS}

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, hidden, ehr_layers, dropout, aux_weight."""
        return {**TRAINER_SEARCH_SPACE, **EHR_SEARCH_SPACE, "aux_weight": {"uniform": [0, 1]}}

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Averaged-probability logits (EHR-only where the image is absent)."""
        present = batch["cxr_present"].to(torch.bool)
        ehr_feat = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        cxr_feat = encode_present(self.cxr_encoder, batch["cxr"], present)
        ehr_logits = self.ehr_head(self.dropout(ehr_feat))
        cxr_logits = self.cxr_head(self.dropout(cxr_feat))
        averaged = mean_probability_logits([ehr_logits, cxr_logits], self.task.kind)
        ehr_only = F.log_softmax(ehr_logits, -1) if self.task.kind == "multiclass" else ehr_logits
        logits = torch.where(present[:, None], averaged, ehr_only)
        aux = self._aux_head_losses(
            batch,
            {"ehr_head": (ehr_logits, None), "cxr_head": (cxr_logits, present)},
            float(self.hparams["aux_weight"]),
        )
        extras = {"ehr_logits": ehr_logits, "cxr_logits": cxr_logits}
        return ModelOutput(logits=logits, aux_losses=aux, extras=extras)
