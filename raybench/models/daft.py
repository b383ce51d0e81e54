"""DAFT: dynamic affine feature-map transform of the CXR ResNet by the EHR (``daft``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from raybench.models.base import (
    TRAINER_HPARAMS,
    TRAINER_SEARCH_SPACE,
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
)
from raybench.models.cxr_encoders import CXR_HPARAMS
from raybench.models.ehr_encoders import EHR_HPARAMS, EHR_SEARCH_SPACE
from raybench.models.encoders import build_encoder_pair
from raybench.models.registry import register_model

__all__ = ["DAFT", "DAFTBlock"]

_ACTIVATIONS = {"linear": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class DAFTBlock(nn.Module):
    """Per-channel scale and shift of a feature map conditioned on an auxiliary vector.

    As in Pölsterl et al. (2021): squeeze = [global-average-pooled map, aux];
    ``Linear(C + D, (C + D) // bottleneck_factor, bias=False)`` -> ReLU ->
    ``Linear(., 2C, bias=False)`` -> (scale, shift); ``out = act(scale) * map + shift``.
    """

    def __init__(
        self, channels: int, aux_dim: int, bottleneck_factor: int = 7, activation: str = "linear"
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ModelConfigError(
                f"daft_activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        bottleneck = max(1, (channels + aux_dim) // int(bottleneck_factor))
        self.channels = channels
        self.aux = nn.Sequential(
            nn.Linear(channels + aux_dim, bottleneck, bias=False),
            nn.ReLU(),
            nn.Linear(bottleneck, 2 * channels, bias=False),
        )
        self.scale_activation = _ACTIVATIONS[activation]()

    def forward(self, fmap: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """Transformed map, same shape as ``fmap`` ``[B, C, H, W]``."""
        squeeze = torch.cat([fmap.mean(dim=(2, 3)), aux], dim=1)
        scale, shift = self.aux(squeeze).split(self.channels, dim=1)
        scale = self.scale_activation(scale)
        return scale[:, :, None, None] * fmap + shift[:, :, None, None]


@register_model("daft")
class DAFT(MultimodalModel):
    """DAFT: the EHR feature conditions a per-channel affine transform of ResNet features.

    Pölsterl, Wolf, Navab, Wachinger, "Combining 3D Image and Tabular Data via the Dynamic
    Affine Feature Map Transform", MICCAI 2021, arXiv:2107.05990.

    Faithful: the DAFT block (pooled image features concatenated with the non-image vector,
    bottleneck MLP with reduction factor 7, no biases, scale and shift, linear scale
    activation); the prediction is a linear head on the pooled image features after the
    transformed network. Deviations: the tabular input is the EHR encoder's feature
    (LSTM 256 x 2 by default) rather than raw tabular variables; the block acts between
    ResNet stages, at position ``layer_after`` (MedFuse's indexing: 0 = after the stem,
    k = after layer k; default 4) instead of inside the last residual block; 2D ResNet-34
    instead of a 3D ResNet. Note that MedFuse's own DAFT baseline runs the other way round
    (CXR feature maps condition the EHR LSTM sequence, prediction from the EHR branch); we
    follow the original paper's direction (non-image data conditions image features).
    Missing images are the zero tensor (``handles_missing_cxr`` False), as in the anchors.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = False

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        self.layer_after = int(hp["layer_after"])
        if self.layer_after not in (0, 1, 2, 3, 4):
            raise ModelConfigError(f"daft layer_after must be in 0..4, got {self.layer_after}")
        self.ehr_encoder, self.cxr_encoder = build_encoder_pair(data, hp)
        self.daft = DAFTBlock(
            self.cxr_encoder.position_channels[self.layer_after],
            self.ehr_encoder.out_dim,
            bottleneck_factor=int(hp["daft_bottleneck_factor"]),
            activation=str(hp["daft_activation"]),
        )
        self.dropout = nn.Dropout(float(hp["dropout"]))
        self.head = nn.Linear(self.cxr_encoder.out_dim, task.n_outputs)

    @classmethod
    def default_hparams(cls) -> dict:
        """Anchors + DAFT: layer_after 4, linear activation, bottleneck factor 7."""
        return {
            **EHR_HPARAMS,
            **CXR_HPARAMS,
            "layer_after": 4,
            "daft_activation": "linear",
            "daft_bottleneck_factor": 7,
            **TRAINER_HPARAMS,
        }

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, hidden, ehr_layers, dropout, layer_after, daft_activation."""
        return {
            **TRAINER_SEARCH_SPACE,
            **EHR_SEARCH_SPACE,
            "layer_after": {"choice": [2, 3, 4]},
            "daft_activation": {"choice": ["linear", "tanh", "sigmoid"]},
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Logits from the pooled, EHR-modulated image features."""
        ehr_feat = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        fmap = self.cxr_encoder.stem(batch["cxr"])
        if self.layer_after == 0:
            fmap = self.daft(fmap, ehr_feat)
        for k, stage in enumerate(self.cxr_encoder.stages, start=1):
            fmap = stage(fmap)
            if k == self.layer_after:
                fmap = self.daft(fmap, ehr_feat)
        logits = self.head(self.dropout(self.cxr_encoder.pool_features(fmap)))
        return ModelOutput(logits=logits, aux_losses={})
