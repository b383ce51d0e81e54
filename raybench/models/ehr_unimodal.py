"""Unimodal EHR baselines: ``ehr_lstm`` and ``ehr_transformer``."""

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
from raybench.models.ehr_encoders import (
    EHR_LSTM_HPARAMS,
    EHR_SEARCH_SPACE,
    EHR_TRANSFORMER_HPARAMS,
    build_ehr_encoder,
)
from raybench.models.registry import register_model

__all__ = ["EHRLSTM", "EHRTransformer"]


class _UnimodalEHR(MultimodalModel):
    """EHR encoder -> dropout -> linear head. Ignores ``cxr`` entirely."""

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr"})
    handles_missing_cxr: ClassVar[bool] = False
    encoder_kind: ClassVar[str] = "lstm"

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        self.ehr_encoder = build_ehr_encoder(self.encoder_kind, data.ehr_features, self.hparams)
        self.dropout = nn.Dropout(float(self.hparams["dropout"]))
        self.head = nn.Linear(self.ehr_encoder.out_dim, task.n_outputs)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Logits from the EHR feature."""
        feat = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        return ModelOutput(logits=self.head(self.dropout(feat)), aux_losses={})


@register_model("ehr_lstm")
class EHRLSTM(_UnimodalEHR):
    """LSTM over the ICU time series; the unimodal EHR baseline of MedFuse.

    Hayat, Geras, Shamout, "MedFuse: Multi-modal fusion with clinical time-series data and
    chest X-ray images", MLHC 2022, arXiv:2207.07027; the LSTM benchmark model comes from
    Harutyunyan et al., "Multitask learning and benchmarking with clinical time series
    data", Scientific Data 2019, arXiv:1703.07771.

    Faithful: stacked LSTM (2 layers, 256 units), feature = hidden state at the last valid
    step, dropout 0.3 on the feature, linear head. Deviation: a linear input projection to
    ``hidden`` precedes the LSTM (MedFuse feeds the 76 raw features directly).
    """

    encoder_kind = "lstm"

    @classmethod
    def default_hparams(cls) -> dict:
        """hidden 256, 2 layers, dropout 0.3, lr 1e-4 (MedFuse)."""
        return {**EHR_LSTM_HPARAMS, **TRAINER_HPARAMS}

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, hidden, ehr_layers, dropout."""
        return {**TRAINER_SEARCH_SPACE, **EHR_SEARCH_SPACE}


@register_model("ehr_transformer")
class EHRTransformer(_UnimodalEHR):
    """Transformer encoder over the ICU time series with masked mean pooling.

    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762, used as the
    transformer EHR baseline of multimodal clinical benchmarks (MedFuse/MedMod anchors).

    Faithful: post-norm encoder layers, feed-forward 4 x d_model, key padding mask. Choices
    of ours: learnable positional embeddings (``max_len`` 512; longer sequences keep their
    last ``max_len`` steps), masked mean pooling instead of a [CLS] token.
    """

    encoder_kind = "transformer"

    @classmethod
    def default_hparams(cls) -> dict:
        """d_model (``hidden``) 256, 2 layers, 4 heads, dropout 0.3, max_len 512, lr 1e-4."""
        return {**EHR_TRANSFORMER_HPARAMS, **TRAINER_HPARAMS}

    @classmethod
    def search_space(cls) -> dict:
        """lr, weight_decay, hidden (divisible by every nhead), ehr_layers, nhead, dropout."""
        return {
            **TRAINER_SEARCH_SPACE,
            **EHR_SEARCH_SPACE,
            "hidden": {"choice": [128, 256]},
            "nhead": {"choice": [2, 4, 8]},
        }
