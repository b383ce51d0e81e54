"""All encoders in one namespace (EHR: :mod:`.ehr_encoders`, CXR: :mod:`.cxr_encoders`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from raybench.models.cxr_encoders import (
    CXR_BACKBONES,
    CXR_HPARAMS,
    ResNetEncoder,
    TinyResNet,
    build_cxr_encoder,
    cached_weights_path,
    encode_present,
)
from raybench.models.ehr_encoders import (
    EHR_ENCODERS,
    EHR_HPARAMS,
    EHR_LSTM_HPARAMS,
    EHR_SEARCH_SPACE,
    EHR_TRANSFORMER_HPARAMS,
    LSTMEncoder,
    TransformerEncoder,
    build_ehr_encoder,
)

__all__ = [
    "build_encoder_pair",
    "CXR_BACKBONES",
    "CXR_HPARAMS",
    "EHR_ENCODERS",
    "EHR_HPARAMS",
    "EHR_LSTM_HPARAMS",
    "EHR_SEARCH_SPACE",
    "EHR_TRANSFORMER_HPARAMS",
    "LSTMEncoder",
    "ResNetEncoder",
    "TinyResNet",
    "TransformerEncoder",
    "build_cxr_encoder",
    "build_ehr_encoder",
    "cached_weights_path",
    "encode_present",
]


def build_encoder_pair(data, hp: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """The EHR encoder (``hp["ehr_encoder"]``) and the CXR encoder of a fusion model."""
    return (build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp),
            build_cxr_encoder(hp, data.cxr_channels))
