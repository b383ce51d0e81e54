"""All encoders in one namespace (EHR: :mod:`.ehr_encoders`, CXR: :mod:`.cxr_encoders`)."""

from __future__ import annotations

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
