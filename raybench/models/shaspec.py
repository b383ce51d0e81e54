"""ShaSpec: shared and specific features with residual fusion (``shaspec``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raybench.models.base import (
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
)
from raybench.models.carebench_blocks import (
    CAREBENCH_HPARAMS,
    last_steps,
    masked_mean,
    run_on_rows,
)
from raybench.models.cxr_encoders import build_cxr_encoder, encode_present
from raybench.models.ehr_encoders import build_ehr_encoder, valid_step_mask
from raybench.models.registry import register_model

__all__ = ["ShaSpec", "SharedEncoder"]

EHR_DOMAIN, CXR_DOMAIN = 0, 1


class SharedEncoder(nn.Module):
    """One transformer (same weights) that encodes either modality into a shared feature.

    Modality-specific input stems bring both to ``hidden``-wide tokens: the EHR steps by a
    linear map plus learnable step positions (the last ``max_len`` valid steps), the image
    by a ResNet whose last feature map positions become tokens (1x1 linear map). A learned
    modality embedding is added, then the shared transformer, a mean over valid tokens and
    a shared output projection.
    """

    def __init__(self, ehr_features: int, hp: dict[str, Any], cxr_channels: int) -> None:
        super().__init__()
        hidden, self.max_len = int(hp["hidden"]), int(hp["max_len"])
        self.ehr_stem = nn.Linear(ehr_features, hidden)
        self.ehr_position = nn.Parameter(torch.zeros(1, self.max_len, hidden))
        self.cxr_stem = build_cxr_encoder(hp, cxr_channels)
        self.cxr_tokens = nn.Linear(self.cxr_stem.feat_dim, hidden)
        self.modality = nn.Parameter(torch.zeros(2, hidden))
        nn.init.normal_(self.ehr_position, std=0.02)
        nn.init.normal_(self.modality, std=0.02)
        layer = nn.TransformerEncoderLayer(hidden, int(hp["nhead"]), 4 * hidden,
                                           float(hp["dropout"]), activation="gelu",
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, int(hp["shared_layers"]),
                                                 enable_nested_tensor=False)
        self.out = nn.Linear(hidden, hidden)

    def ehr(self, ehr: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Shared EHR feature ``[B, hidden]``."""
        ehr, lengths = last_steps(ehr, lengths, self.max_len)
        tokens = self.ehr_stem(ehr) + self.ehr_position[:, : ehr.shape[1]] + self.modality[0]
        valid = valid_step_mask(lengths, ehr.shape[1])
        encoded = self.transformer(tokens, src_key_padding_mask=~valid)
        return self.out(masked_mean(encoded, valid))

    def cxr(self, images: torch.Tensor) -> torch.Tensor:
        """Shared CXR feature ``[B, hidden]`` (call only with images that are present)."""
        fmap = self.cxr_stem.stem(images)
        for stage in self.cxr_stem.stages:
            fmap = stage(fmap)
        tokens = self.cxr_tokens(fmap.flatten(2).transpose(1, 2)) + self.modality[1]
        return self.out(self.transformer(tokens).mean(dim=1))


@register_model("shaspec")
class ShaSpec(MultimodalModel):
    """ShaSpec: shared-specific feature modelling for missing modalities.

    Wang, Chen, Ma, Avery, Hull, Carneiro, "Multi-modal Learning with Missing Modality via
    Shared-Specific Feature Modelling", CVPR 2023, arXiv:2307.14126.

    Each modality gets a shared feature from one shared encoder (:class:`SharedEncoder`)
    and a specific feature from its own encoder (``ehr_encoder``: EHR transformer pooled
    over valid steps; ``cxr_encoder``: ResNet projected to ``hidden``). Residual fusion per
    modality: ``f_m = shared_m + W [shared_m; specific_m]`` (one ``W`` for both). A missing
    image's fused feature is the shared feature of the available modality (the EHR's). The
    classifier reads the concatenation ``[f_ehr; f_cxr]``. Losses: ``alpha`` x the L1
    distance between the two shared features (distribution alignment, samples with an
    image) and ``beta`` x the cross-entropy of a linear domain classifier telling EHR from
    CXR **specific** features (EHR features of every sample, CXR features of samples with an
    image).

    Faithful: shared encoder with tied weights across modalities, specific encoders,
    residual compositional layer, shared-feature substitution for a missing modality,
    concatenation before the decoder, the two auxiliary losses on the features the paper
    puts them on, CareBench's weights (alpha 0.1, beta 0.02). Deviations: CareBench's code
    trains its domain classifier on the pooled *shared* features (the paper and the authors'
    code use the specific ones) and averages the two fused features instead of
    concatenating them; the modalities differ in shape here, so the shared encoder has
    modality-specific input stems before its shared transformer (CareBench: a second
    ResNet-50 pooled into one token; here the ResNet's last feature-map positions are the
    tokens); absent images never enter either ResNet and give exact zero features.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        hidden, dropout = int(hp["hidden"]), float(hp["dropout"])
        if int(hp["shared_layers"]) < 1:
            raise ModelConfigError(f"shaspec needs shared_layers >= 1, got {hp['shared_layers']}")
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels, proj_dim=hidden)
        self.shared = SharedEncoder(data.ehr_features, hp, data.cxr_channels)
        self.compose = nn.Linear(2 * hidden, hidden)
        self.domain_classifier = nn.Linear(hidden, 2)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, task.n_outputs))

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench: EHR transformer 256/4/1, ResNet-50, shared transformer 4 heads x 1
        layer, dropout 0.2, alpha 0.1, beta 0.02."""
        return {**CAREBENCH_HPARAMS, "shared_layers": 1, "alpha": 0.1, "beta": 0.02}

    @classmethod
    def search_space(cls) -> dict:
        """CareBench's: alpha and beta."""
        return {"alpha": {"uniform": [0.01, 0.1]}, "beta": {"uniform": [0.005, 0.2]}}

    def _fuse(self, shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
        return shared + self.compose(torch.cat([shared, specific], dim=1))

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Classifier on ``[f_ehr; f_cxr]`` (``f_cxr`` = EHR shared feature without image)."""
        present = batch["cxr_present"].to(torch.bool)
        ehr_specific = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        ehr_shared = self.shared.ehr(batch["ehr"], batch["ehr_lengths"])
        cxr_specific = encode_present(self.cxr_encoder, batch["cxr"], present)
        cxr_shared = run_on_rows(self.shared.cxr, present, torch.zeros_like(ehr_shared),
                                 batch["cxr"])
        ehr_fused = self._fuse(ehr_shared, ehr_specific)
        cxr_fused = torch.where(present[:, None], self._fuse(cxr_shared, cxr_specific),
                                ehr_shared)
        logits = self.classifier(torch.cat([ehr_fused, cxr_fused], dim=1))
        aux = {}
        if "y" in batch:
            aux = self._losses(present, ehr_shared, cxr_shared, ehr_specific, cxr_specific)
        return ModelOutput(logits=logits, aux_losses=aux)

    def _losses(self, present, ehr_shared, cxr_shared, ehr_specific, cxr_specific):
        rows = present.to(ehr_shared.dtype)
        l1 = (ehr_shared - cxr_shared).abs().mean(dim=1)
        alignment = (l1 * rows).sum() / rows.sum().clamp(min=1.0)
        specific = torch.cat([ehr_specific, cxr_specific[present]], dim=0)
        domains = torch.cat([torch.full_like(present, EHR_DOMAIN, dtype=torch.long),
                             torch.full((int(present.sum()),), CXR_DOMAIN, dtype=torch.long,
                                        device=present.device)])
        domain = F.cross_entropy(self.domain_classifier(specific).float(), domains)
        return {"alignment": self.hparams["alpha"] * alignment,
                "domain": self.hparams["beta"] * domain}
