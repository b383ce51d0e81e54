"""DrFuse: disentangled shared/distinct representations fused by disease-wise attention
(``drfuse``)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raybench.models.base import (
    DataSpec,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    mean_probability_logits,
    task_loss,
)
from raybench.models.carebench_blocks import CAREBENCH_HPARAMS, encode_steps, masked_mean
from raybench.models.cxr_encoders import build_cxr_encoder, encode_present
from raybench.models.ehr_encoders import build_ehr_encoder
from raybench.models.registry import register_model

__all__ = ["DrFuse", "shared_jsd"]

LAMBDAS = ("lambda_disentangle_shared", "lambda_disentangle_ehr", "lambda_disentangle_cxr",
           "lambda_pred_ehr", "lambda_pred_cxr", "lambda_pred_shared", "lambda_attn_aux")
EHR, SHARED, CXR = 0, 1, 2  # slots of the disease-wise attention


def _mean_over(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (``[B]`` or ``[B, K]``) over the rows where ``rows`` is True."""
    weights = rows.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1))).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def shared_jsd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Jensen-Shannon term between ``sigmoid(a)`` and ``sigmoid(b)`` ``[B]``.

    As DrFuse's code: with ``p = sigmoid(a)``, ``q = sigmoid(b)``, ``m = (p + q) / 2``,
    ``0.5 * sum_d [p log(p / m) + q log(q / m)]`` (each term is >= 0), in log space.
    """
    log_p, log_q = F.logsigmoid(a.float()), F.logsigmoid(b.float())
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    terms = log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m)
    return 0.5 * terms.sum(dim=-1)


def _branch(hidden: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=4 * hidden,
                                       dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@register_model("drfuse")
class DrFuse(MultimodalModel):
    """DrFuse: shared and distinct representations per modality, disease-wise attention.

    Yao, Yin, Cheung, Liu, Qin, "DrFuse: Learning Disentangled Representation for Clinical
    Multi-Modal Fusion with Missing Modality and Modal Inconsistency", AAAI 2024,
    arXiv:2403.06197.

    EHR: an encoder layer (``ehr_encoder``) then two transformer branches (``ehr_layers``
    each) pooled over valid steps into a shared and a distinct feature. CXR: two ResNets
    (``cxr_encoder`` for the shared feature, ``cxr_distinct_encoder`` for the distinct one)
    projected to ``hidden``. Shared features go through one shared MLP; for a sample with an
    image they are fused by the logit of the mean of their sigmoids (DrFuse's
    ``logit_average``), without one the fused shared feature is the EHR one. Disease-wise
    attention: a query (mean over the available slots) and one key per class attend over
    ``[EHR distinct, fused shared, CXR distinct]`` (the CXR slot masked for a sample without
    an image); class k's logit is the k-th output of a linear head on its attended feature.
    Losses (added to the task loss of the final prediction): ``lambda_pred_{shared,ehr,cxr}``
    x task loss of a linear head on the fused shared / EHR distinct / CXR distinct feature
    (CXR: samples with an image); ``lambda_disentangle_shared`` x JSD between the sigmoids
    of the two shared features (:func:`shared_jsd`, samples with an image);
    ``lambda_disentangle_ehr`` / ``_cxr`` x ``|cos(shared, distinct)|`` of each modality (CXR:
    samples with an image); ``lambda_attn_aux`` x the mean of three margin-ranking losses
    pushing, per class, the attention of the slot whose own head has the lower loss above
    the other's (CXR vs EHR, shared vs EHR, shared vs CXR), on samples with an image only.

    Faithful: architecture, logit-average fusion, masking of the missing CXR in the query
    and the attention, the seven losses and their default weights (1). Deviations: the JSD
    is averaged over samples with an image only (the code sums it over every sample,
    zero-image ones included, and divides by the number of pairs); ranking losses are
    averaged over the paired (sample, class) entries (the code divides by the number of
    non-zero entries); for multiclass tasks the ranking compares per-sample cross-entropies
    with the class-averaged attention (as CareBench; the paper is multilabel). The two
    ResNets do not share their stem (the authors' code shares conv1/bn1; CareBench does
    not); an absent image gives exact zero CXR features and never enters a ResNet
    (CareBench encodes the zero image). Dropout 0.2 (CareBench's drfuse.yaml: 0.1).
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        hidden, k = int(hp["hidden"]), task.n_outputs
        dropout = float(hp["dropout"])
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.ehr_shared = _branch(hidden, int(hp["nhead"]), int(hp["ehr_layers"]), dropout)
        self.ehr_distinct = _branch(hidden, int(hp["nhead"]), int(hp["ehr_layers"]), dropout)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels, proj_dim=hidden)
        self.cxr_distinct_encoder = build_cxr_encoder(hp, data.cxr_channels, proj_dim=hidden)
        self.shared_project = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden))
        self.ehr_head = nn.Linear(hidden, k)
        self.cxr_head = nn.Linear(hidden, k)
        self.shared_head = nn.Linear(hidden, k)
        self.attn_proj = nn.Linear(hidden, (2 + k) * hidden)
        self.final_head = nn.Linear(hidden, k)

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench: EHR transformer 256/4/1, ResNet-50, dropout 0.2, every lambda 1."""
        return {**CAREBENCH_HPARAMS, **dict.fromkeys(LAMBDAS, 1.0)}

    @classmethod
    def search_space(cls) -> dict:
        """CareBench's: each of the seven loss weights uniform in [0.01, 2]."""
        return {key: {"uniform": [0.01, 2.0]} for key in LAMBDAS}

    def _ehr_features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        steps, valid = encode_steps(self.ehr_encoder, batch["ehr"], batch["ehr_lengths"])
        shared = self.ehr_shared(steps, src_key_padding_mask=~valid)
        distinct = self.ehr_distinct(steps, src_key_padding_mask=~valid)
        return masked_mean(shared, valid), masked_mean(distinct, valid)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Disease-wise attention over [EHR distinct, fused shared, CXR distinct]."""
        present = batch["cxr_present"].to(torch.bool)
        ehr_shared, ehr_distinct = self._ehr_features(batch)
        cxr_shared = encode_present(self.cxr_encoder, batch["cxr"], present)
        cxr_distinct = encode_present(self.cxr_distinct_encoder, batch["cxr"], present)
        ehr_shared = self.shared_project(ehr_shared)
        cxr_shared = self.shared_project(cxr_shared)
        both = mean_probability_logits([ehr_shared, cxr_shared], "binary")
        shared = torch.where(present[:, None], both, ehr_shared)

        slots = torch.stack([ehr_distinct, shared.to(ehr_distinct.dtype),
                             cxr_distinct.to(ehr_distinct.dtype)], dim=1)  # [B, 3, h]
        query, value, *keys = self.attn_proj(slots).chunk(2 + self.task.n_outputs, dim=-1)
        query = torch.where(present[:, None], query.mean(1), query[:, :CXR].mean(1))
        scores = torch.einsum("bd,bkmd->bkm", query, torch.stack(keys, dim=1))
        scores = scores / math.sqrt(query.shape[-1])
        no_image = (~present)[:, None, None] & (torch.arange(3, device=scores.device) == CXR)
        attention = scores.masked_fill(no_image, float("-inf")).softmax(dim=-1)  # [B, K, 3]
        attended = attention @ value  # [B, K, h]
        logits = torch.diagonal(self.final_head(attended), dim1=1, dim2=2)

        heads = {"ehr": self.ehr_head(ehr_distinct), "cxr": self.cxr_head(cxr_distinct),
                 "shared": self.shared_head(shared)}
        extras = {f"{name}_logits": value for name, value in heads.items()}
        extras["attention"] = attention
        aux = {}
        if "y" in batch:
            aux = self._losses(batch["y"], present, heads, attention,
                               (ehr_shared, cxr_shared, ehr_distinct, cxr_distinct))
        return ModelOutput(logits=logits, aux_losses=aux, extras=extras)

    def _losses(self, y, present, heads, attention, features) -> dict[str, torch.Tensor]:
        hp, kind = self.hparams, self.task.kind
        ehr_shared, cxr_shared, ehr_distinct, cxr_distinct = features
        losses = {
            "pred_shared": hp["lambda_pred_shared"] * task_loss(heads["shared"], y, kind),
            "pred_ehr": hp["lambda_pred_ehr"] * task_loss(heads["ehr"], y, kind),
            "pred_cxr": hp["lambda_pred_cxr"] * task_loss(heads["cxr"], y, kind, present),
            "disentangle_shared": hp["lambda_disentangle_shared"]
            * _mean_over(shared_jsd(ehr_shared, cxr_shared), present),
            "disentangle_ehr": hp["lambda_disentangle_ehr"]
            * F.cosine_similarity(ehr_shared, ehr_distinct, dim=1, eps=1e-6).abs().mean(),
            "disentangle_cxr": hp["lambda_disentangle_cxr"] * _mean_over(
                F.cosine_similarity(cxr_shared, cxr_distinct, dim=1, eps=1e-6).abs(), present),
        }
        losses["attn_rank"] = hp["lambda_attn_aux"] * self._ranking_loss(y, present, heads,
                                                                         attention)
        return losses

    def _ranking_loss(self, y, present, heads, attention) -> torch.Tensor:
        """Mean of the three margin-ranking losses on the attention (samples with an image)."""
        with torch.no_grad():
            if self.task.kind == "multiclass":
                labels = y.reshape(-1).long()
                raw = {n: F.cross_entropy(x.float(), labels, reduction="none")[:, None]
                       for n, x in heads.items()}
            else:
                target = y.float().reshape(heads["ehr"].shape)
                raw = {n: F.binary_cross_entropy_with_logits(x.float(), target, reduction="none")
                       for n, x in heads.items()}
        if self.task.kind == "multiclass":
            attention = attention.mean(dim=1, keepdim=True)
        weight = {"ehr": attention[..., EHR], "shared": attention[..., SHARED],
                  "cxr": attention[..., CXR]}
        terms = []
        for better, worse in (("cxr", "ehr"), ("shared", "ehr"), ("shared", "cxr")):
            sign = 2.0 * (raw[better] < raw[worse]).float() - 1.0
            loss = F.margin_ranking_loss(weight[better].float(), weight[worse].float(), sign,
                                         reduction="none")
            terms.append(_mean_over(loss, present))
        return torch.stack(terms).mean()
