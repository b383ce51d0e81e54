"""MMTM: multimodal transfer modules between the EHR LSTM and the CXR ResNet (``mmtm``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from raybench.models.base import (
    TRAINER_HPARAMS,
    TRAINER_SEARCH_SPACE,
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    mean_probability_logits,
)
from raybench.models.cxr_encoders import CXR_HPARAMS, build_cxr_encoder
from raybench.models.ehr_encoders import (
    EHR_SEARCH_SPACE,
    LSTMEncoder,
    clamp_lengths,
    valid_step_mask,
)
from raybench.models.registry import register_model

__all__ = ["MMTM", "MMTMBlock"]


class MMTMBlock(nn.Module):
    """Squeeze-excitation across modalities (Joze et al. 2020, Sec. 3).

    Squeeze: global average of the image map ``[B, C, H, W]`` over H, W and of the EHR
    sequence ``[B, T, D]`` over its valid steps; joint ``Linear(C + D, 2 (C + D) / ratio)``
    + ReLU; excitation per modality ``sigmoid(Linear(.))`` multiplying the channels (the
    gate of the authors' and MedFuse's released code).
    """

    def __init__(self, dim_img: int, dim_ehr: int, ratio: int = 4) -> None:
        super().__init__()
        dim = dim_img + dim_ehr
        dim_out = max(1, int(2 * dim / ratio))
        self.fc_squeeze = nn.Linear(dim, dim_out)
        self.fc_img = nn.Linear(dim_out, dim_img)
        self.fc_ehr = nn.Linear(dim_out, dim_ehr)

    def forward(
        self, fmap: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recalibrated ``(fmap, steps)``; ``mask`` is the bool ``[B, T]`` of valid steps."""
        weights = mask.unsqueeze(-1).to(steps.dtype)
        ehr_squeeze = (steps * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        squeeze = torch.cat([fmap.mean(dim=(2, 3)), ehr_squeeze], dim=1)
        excitation = torch.relu(self.fc_squeeze(squeeze))
        img_gate = torch.sigmoid(self.fc_img(excitation))
        ehr_gate = torch.sigmoid(self.fc_ehr(excitation))
        return fmap * img_gate[:, :, None, None], steps * ehr_gate[:, None, :]


@register_model("mmtm")
class MMTM(MultimodalModel):
    """MMTM fusion of the EHR LSTM and the CXR ResNet, as adapted by MedFuse's code.

    Joze, Shaban, Iuzzolino, Koishida, "MMTM: Multimodal Transfer Module for CNN Fusion",
    CVPR 2020, arXiv:1911.08670; EHR/CXR adaptation and baseline configuration from Hayat,
    Geras, Shamout, "MedFuse", MLHC 2022, arXiv:2207.07027.

    The EHR branch has ``ehr_layers`` LSTM layers: the first (``ehr_encoder``) yields
    per-step outputs that MMTM blocks recalibrate together with the ResNet feature map at
    position ``layer_after`` (MedFuse's indexing: 0 = after the stem, k = after layer k,
    -1 = at all five positions; default 4 as in MedFuse); the remaining ``ehr_layers - 1``
    layers (``ehr_post``) read the recalibrated sequence. Each branch has a linear head; the
    prediction is the average of the two branches' probabilities (returned as its logit,
    like ``late_fusion``), which is what MedFuse evaluates. Faithful: squeeze ratio 4,
    sigmoid gates, MedFuse's placement and LSTM split. Deviations: MedFuse trains with three
    optimiser steps per batch (EHR head, CXR head, joint head); here one step on the task
    loss of the averaged prediction plus per-branch losses in ``aux_losses``
    (``aux_weight``, default 1); MedFuse's extra joint classifier is omitted; the EHR
    squeeze averages only valid steps (MedFuse averages over the padded length); a linear
    input projection precedes the first LSTM. Missing images are the zero tensor
    (``handles_missing_cxr`` False), as in the anchors.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = False

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        hidden, layers = int(hp["hidden"]), int(hp["ehr_layers"])
        layer_after = int(hp["layer_after"])
        if layers < 2:
            raise ModelConfigError(f"mmtm needs ehr_layers >= 2 (got {layers})")
        if layer_after not in (-1, 0, 1, 2, 3, 4):
            raise ModelConfigError(f"mmtm layer_after must be in -1..4, got {layer_after}")
        dropout = float(hp["dropout"])
        self.ehr_encoder = LSTMEncoder(data.ehr_features, hidden, layers=1, dropout=0.0)
        self.ehr_post = nn.LSTM(
            hidden,
            hidden,
            num_layers=layers - 1,
            dropout=dropout if layers > 2 else 0.0,
            batch_first=True,
        )
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels)
        channels = self.cxr_encoder.position_channels
        where = range(5) if layer_after == -1 else [layer_after]
        ratio = int(hp["mmtm_ratio"])
        self.mmtm = nn.ModuleDict({str(k): MMTMBlock(channels[k], hidden, ratio) for k in where})
        self.dropout = nn.Dropout(dropout)
        self.ehr_head = nn.Linear(hidden, task.n_outputs)
        self.cxr_head = nn.Linear(self.cxr_encoder.out_dim, task.n_outputs)

    @classmethod
    def default_hparams(cls) -> dict:
        """MedFuse's MMTM: LSTM 256 x 2, ResNet-34, layer_after 4, ratio 4, lr 1e-4."""
        return {
            "hidden": 256,
            "ehr_layers": 2,
            "dropout": 0.3,
            **CXR_HPARAMS,
            "layer_after": 4,
            "mmtm_ratio": 4,
            "aux_weight": 1.0,
            **TRAINER_HPARAMS,
        }

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, hidden, ehr_layers, dropout, layer_after, mmtm_ratio, aux_weight."""
        return {
            **TRAINER_SEARCH_SPACE,
            **EHR_SEARCH_SPACE,
            "ehr_layers": {"choice": [2, 3]},
            "layer_after": {"choice": [-1, 2, 3, 4]},
            "mmtm_ratio": {"choice": [2, 4, 8]},
            "aux_weight": {"uniform": [0, 1]},
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Averaged-probability logits of the EHR and CXR branches."""
        ehr = batch["ehr"]
        lengths = clamp_lengths(batch["ehr_lengths"], ehr.shape[1])
        steps, _ = self.ehr_encoder.forward_steps(ehr, lengths)
        mask = valid_step_mask(lengths, ehr.shape[1])
        fmap = self.cxr_encoder.stem(batch["cxr"])
        if "0" in self.mmtm:
            fmap, steps = self.mmtm["0"](fmap, steps, mask)
        for k, stage in enumerate(self.cxr_encoder.stages, start=1):
            fmap = stage(fmap)
            if str(k) in self.mmtm:
                fmap, steps = self.mmtm[str(k)](fmap, steps, mask)
        packed = pack_padded_sequence(steps, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.ehr_post(packed)
        ehr_logits = self.ehr_head(self.dropout(h_n[-1]))
        cxr_logits = self.cxr_head(self.dropout(self.cxr_encoder.pool_features(fmap)))
        logits = mean_probability_logits([ehr_logits, cxr_logits], self.task.kind)
        aux = self._aux_head_losses(
            batch,
            {"ehr_head": (ehr_logits, None), "cxr_head": (cxr_logits, None)},
            float(self.hparams["aux_weight"]),
        )
        extras = {"ehr_logits": ehr_logits, "cxr_logits": cxr_logits}
        return ModelOutput(logits=logits, aux_losses=aux, extras=extras)
