"""MedFuse: LSTM-based fusion of modality tokens (``medfuse``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from raybench.models.base import (
    TRAINER_HPARAMS,
    TRAINER_SEARCH_SPACE,
    DataSpec,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
)
from raybench.models.cxr_encoders import CXR_HPARAMS, encode_present
from raybench.models.ehr_encoders import EHR_HPARAMS, EHR_SEARCH_SPACE
from raybench.models.encoders import build_encoder_pair
from raybench.models.registry import register_model

__all__ = ["MedFuse"]


@register_model("medfuse")
class MedFuse(MultimodalModel):
    """MedFuse: the EHR feature and the projected CXR feature as a 1-2 token sequence fused
    by an LSTM.

    Hayat, Geras, Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and
    chest X-ray images", MLHC 2022, arXiv:2207.07027.

    Faithful: LSTM EHR encoder (256 x 2, dropout 0.3 on its feature); ResNet-34 CXR
    feature (512) linearly projected to the EHR feature size; tokens ``[ehr, cxr]`` go
    through a one-layer LSTM with ``fusion_hidden`` units (512 = the CXR feature size, as in
    the paper's code) whose last hidden state feeds a linear classifier. A sample without
    an image has the one-token sequence ``[ehr]`` (packed lengths 1 vs 2), so its output
    does not depend on the image tensor. Two-stage training: ``pretrain_stages() ==
    ["ehr", "cxr"]`` train each encoder with a unimodal linear head (in stage "cxr",
    ``extras["loss_mask"]`` marks samples with an image), then stage "fusion" fine-tunes
    everything end to end (encoders not frozen, as in MedFuse (OPTIMAL)).
    Deviations: the encoders are pretrained inside the same model instead of loaded from
    checkpoints; a linear input projection precedes the EHR LSTM; ``ehr_encoder`` can be
    switched to the transformer. ``extras`` holds the unimodal heads' logits.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        self.ehr_encoder, self.cxr_encoder = build_encoder_pair(data, hp)
        dim = self.ehr_encoder.out_dim
        fusion_hidden = int(hp["fusion_hidden"])
        self.dropout = nn.Dropout(float(hp["dropout"]))
        self.cxr_proj = nn.Linear(self.cxr_encoder.out_dim, dim)
        self.fusion_lstm = nn.LSTM(dim, fusion_hidden, batch_first=True)
        self.fused_head = nn.Linear(fusion_hidden, task.n_outputs)
        self.ehr_head = nn.Linear(dim, task.n_outputs)
        self.cxr_head = nn.Linear(self.cxr_encoder.out_dim, task.n_outputs)

    @classmethod
    def default_hparams(cls) -> dict:
        """MedFuse: LSTM 256 x 2, dropout 0.3, ResNet-34, fusion LSTM 512, lr 1e-4."""
        return {**EHR_HPARAMS, **CXR_HPARAMS, "fusion_hidden": 512, **TRAINER_HPARAMS}

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, hidden, ehr_layers, dropout, fusion_hidden."""
        return {
            **TRAINER_SEARCH_SPACE,
            **EHR_SEARCH_SPACE,
            "fusion_hidden": {"choice": [256, 512]},
        }

    def pretrain_stages(self) -> list[str]:
        """Unimodal pretraining of the EHR then the CXR encoder."""
        return ["ehr", "cxr"]

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Stage "ehr"/"cxr": unimodal logits; "fusion": LSTM over the modality tokens."""
        present = batch["cxr_present"].to(torch.bool)
        if self.stage == "cxr":
            cxr_feat = encode_present(self.cxr_encoder, batch["cxr"], present)
            logits = self.cxr_head(self.dropout(cxr_feat))
            return ModelOutput(logits=logits, aux_losses={}, extras={"loss_mask": present})
        ehr_feat = self.dropout(self.ehr_encoder(batch["ehr"], batch["ehr_lengths"]))
        ehr_logits = self.ehr_head(ehr_feat)
        if self.stage == "ehr":
            return ModelOutput(logits=ehr_logits, aux_losses={})
        cxr_feat = encode_present(self.cxr_encoder, batch["cxr"], present)
        projected = self.cxr_proj(cxr_feat)
        projected = torch.where(present[:, None], projected, torch.zeros_like(projected))
        tokens = torch.stack([ehr_feat, projected], dim=1)  # [B, 2, hidden]
        lengths = 1 + present.to(torch.long)
        packed = pack_padded_sequence(tokens, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.fusion_lstm(packed)
        extras = {"ehr_logits": ehr_logits, "cxr_logits": self.cxr_head(cxr_feat)}
        return ModelOutput(logits=self.fused_head(h_n[-1]), aux_losses={}, extras=extras)
