"""UTDE: unified time-series discretisation embedding + interleaved cross-attention (``utde``).

Zhang, Li, Hayat, Zhang, Yang, Gou, "Improving Medical Predictions by Irregular Multimodal
Electronic Health Records Modeling", ICML 2023, arXiv:2210.12156 (code
XZhang97666/MultimodalMIMIC).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raybench.errors import RaybenchError
from raybench.models.base import (
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    value_mask_pairs,
)
from raybench.models.carebench_common import CAREBENCH_HPARAMS
from raybench.models.cxr_encoders import build_cxr_encoder
from raybench.models.ehr_encoders import clamp_lengths, valid_step_mask
from raybench.models.registry import register_model

__all__ = ["UTDE", "UTDEEmbedding", "TimeEmbedding"]

#: Time unit of the embeddings: 48 h = 1 (the reference code normalises 48 h stays to [0, 1]).
HOURS_PER_UNIT = 48.0


class TimeEmbedding(nn.Module):
    """mTAND's learned time embedding ``[w0 t + b0, sin(W t + b)]`` of size ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, dim - 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` ``[...]`` -> ``[..., dim]``."""
        t = t.unsqueeze(-1)
        return torch.cat([self.linear(t), torch.sin(self.periodic(t))], dim=-1)


class UTDEEmbedding(nn.Module):
    """Gated mix of the imputation embedding and the mTAND embedding of the EHR steps.

    Imputation branch: the hourly grid (imputed values and masks) through a kernel-1
    ``Conv1d`` (a per-step linear map, no bias). mTAND branch (Shukla & Marlin, ICLR 2021):
    queries are the time embeddings of the steps, keys those of the steps, and for each
    value channel (and its mask channel) the softmax runs only over the steps where the
    channel was observed; ``Linear(heads x channels, dim)`` after. Gate: ``g =
    sigmoid(MLP([mtand, imputation]))`` per step and dimension, ``g * mtand + (1 - g) *
    imputation`` (the reference code's "batch_seq_feature" mix-up).
    """

    def __init__(self, feature_names: tuple[str, ...], n_features: int, dim: int,
                 embed_time: int, heads: int, dropout: float) -> None:
        super().__init__()
        if embed_time % heads:
            raise ModelConfigError(f"utde: embed_time ({embed_time}) must be divisible by "
                                   f"nhead ({heads})")
        pairs = value_mask_pairs(feature_names) if feature_names else [
            (i, None) for i in range(n_features)]
        self.register_buffer("value_idx", torch.tensor([v for v, _ in pairs], dtype=torch.long))
        self.register_buffer("mask_idx", torch.tensor([-1 if m is None else m for _, m in pairs],
                                                      dtype=torch.long))
        channels = 2 * len(pairs)  # values and their masks, as in the reference code
        self.heads, self.d_head = heads, embed_time // heads
        self.time = TimeEmbedding(embed_time)
        self.query = nn.Linear(embed_time, embed_time)
        self.key = nn.Linear(embed_time, embed_time)
        self.mtand_out = nn.Linear(heads * channels, dim)
        self.imputation = nn.Conv1d(n_features, dim, kernel_size=1, bias=False)
        self.gate = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * dim, dim), nn.ReLU(),
                                  nn.Linear(dim, dim), nn.Sigmoid())
        for layer in self.gate:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
        self.out_dim = dim

    def observations(self, ehr: torch.Tensor, valid: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Values ``[B, T, 2V]`` (value channels, then their masks) and their masks."""
        values = ehr.index_select(2, self.value_idx)
        has_mask = (self.mask_idx >= 0).to(ehr.dtype)
        observed = ehr.index_select(2, self.mask_idx.clamp(min=0)) * has_mask + (1 - has_mask)
        observed = observed * valid.unsqueeze(-1).to(ehr.dtype)
        return torch.cat([values, observed], 2), torch.cat([observed, observed], 2)

    def mtand(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
              ) -> torch.Tensor:
        """Multi-time attention at the step times over each channel's observed steps."""
        b, t, _ = values.shape
        emb = self.time(times)
        q = self.query(emb).view(b, t, self.heads, self.d_head).transpose(1, 2)
        k = self.key(emb).view(b, t, self.heads, self.d_head).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.d_head)  # [B, H, T, T]
        any_obs = mask.amax(dim=2) > 0  # keys with some observation
        scores = scores.masked_fill(~any_obs[:, None, None, :], float("-inf"))
        top = scores.amax(dim=-1, keepdim=True).clamp(min=-1e30)
        weights = torch.exp(scores - top)  # per-channel masking below keeps a true softmax
        mask, values = mask.float(), values.float()
        num = weights @ (mask * values)[:, None]  # [B, H, T, C]
        den = weights @ mask[:, None]
        out = torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num))
        out = out.transpose(1, 2).reshape(b, t, -1).to(self.mtand_out.weight.dtype)
        return self.mtand_out(out)

    def forward(self, ehr: torch.Tensor, lengths: torch.Tensor, times: torch.Tensor
                ) -> torch.Tensor:
        """Step embeddings ``[B, T, dim]``; ``times`` ``[B, T]`` in :data:`HOURS_PER_UNIT`."""
        valid = valid_step_mask(lengths, ehr.shape[1])
        values, mask = self.observations(ehr, valid)
        irregular = self.mtand(times, values, mask)
        regular = self.imputation(ehr.transpose(1, 2)).transpose(1, 2)
        g = self.gate(torch.cat([irregular, regular.to(irregular.dtype)], dim=-1))
        return g * irregular + (1 - g) * regular


class CrossLayer(nn.Module):
    """Interleaved attention layer: self-attention per modality, cross-attention both ways,
    feed-forward; pre-norm residual blocks (the reference ``TransformerCrossEncoderLayer``)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        def attn() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

        self.self_attn = nn.ModuleList([attn(), attn()])
        self.cross_attn = nn.ModuleList([attn(), attn()])
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(6))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(),
                                               nn.Dropout(dropout), nn.Linear(4 * dim, dim))
                                 for _ in range(2))
        self.dropout = nn.Dropout(dropout)

    def forward(self, xs: list[torch.Tensor], pad: torch.Tensor) -> list[torch.Tensor]:
        """``xs = [cxr, ehr]`` sequences ``[B, T, D]``; ``pad`` bool ``[B, T]`` (True = padding)."""
        out = []
        for i, x in enumerate(xs):
            h = self.norms[i](x)
            out.append(x + self.dropout(self.self_attn[i](h, h, h, key_padding_mask=pad,
                                                          need_weights=False)[0]))
        cxr, ehr = out
        h_cxr, h_ehr = self.norms[2](cxr), self.norms[3](ehr)
        cxr = cxr + self.dropout(self.cross_attn[0](h_cxr, h_ehr, h_ehr, key_padding_mask=pad,
                                                    need_weights=False)[0])
        ehr = ehr + self.dropout(self.cross_attn[1](h_ehr, h_cxr, h_cxr, key_padding_mask=pad,
                                                    need_weights=False)[0])
        return [x + self.dropout(self.ffn[i](self.norms[4 + i](x)))
                for i, x in enumerate((cxr, ehr))]


@register_model("utde")
class UTDE(MultimodalModel):
    """UTDE time-series embedding, the image placed in time, interleaved cross-attention.

    Faithful: the EHR sequence is embedded by UTDE (:class:`UTDEEmbedding`: gate between the
    imputation embedding of the hourly grid and mTAND over the observed steps, per step and
    dimension, at every valid step as reference point); the image sequence is the image
    feature at the same reference points (mTAND over a single observation returns it at
    every query); both sequences are scaled by sqrt(d), get a learned position embedding and
    dropout, and go through ``cross_layers`` interleaved layers (self-attention, cross
    attention in both directions, feed-forward, pre-norm) and a final LayerNorm; the
    last-step states of both are concatenated, passed through the residual
    ``proj2(dropout(relu(proj1(h)))) + h`` and a linear output layer. Defaults: d 256,
    ``embed_time`` 64, 4 heads, 1 cross layer, dropout 0.2.

    Deviations: times are hours before the prediction time divided by 48 (steps at their
    centres; the image at ``cxr_hours``), and positions count steps back from the last one,
    so padding and truncation cannot shift them; with one image per sample mTAND cannot
    carry the image's time, so a learned embedding of it is added to the image feature (the
    reference code's time attention would ignore it; CareBench also queries image times in
    [0, 1] against keys in hours and feeds the cross network one pooled EHR vector repeated
    500 times, never using the UTDE gate); the image feature is CareBench's ResNet-50 with a
    Linear + ReLU + dropout adapter; mTAND has ``nhead`` heads (the reference code 8) and no
    dropout on its attention weights. Without feature names (``DataSpec.feature_names`` empty)
    every channel counts as observed at every valid step. Missing images are the zero image
    with time 0 (``handles_missing_cxr`` False, as in CareBench).
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"cxr_hours"})

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        dim, heads, dropout = int(hp["hidden"]), int(hp["nhead"]), float(hp["dropout"])
        if dim % heads:
            raise ModelConfigError(f"utde: hidden ({dim}) must be divisible by nhead ({heads})")
        self.step_units = float(data.step_hours) / HOURS_PER_UNIT
        self.ehr_encoder = UTDEEmbedding(data.feature_names, data.ehr_features, dim,
                                         int(hp["embed_time"]), heads, dropout)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels)
        self.cxr_adapter = nn.Sequential(nn.Linear(self.cxr_encoder.out_dim, dim), nn.ReLU(),
                                         nn.Dropout(dropout))
        self.cxr_time = nn.Sequential(TimeEmbedding(int(hp["embed_time"])),
                                      nn.Linear(int(hp["embed_time"]), dim))
        self.max_len = int(hp["max_len"])
        self.positions = nn.ModuleList(nn.Embedding(self.max_len, dim) for _ in range(2))
        for emb in self.positions:
            nn.init.normal_(emb.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(CrossLayer(dim, heads, dropout)
                                    for _ in range(int(hp["cross_layers"])))
        self.final_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.proj1 = nn.Linear(2 * dim, 2 * dim)
        self.proj2 = nn.Linear(2 * dim, 2 * dim)
        self.out_layer = nn.Linear(2 * dim, task.n_outputs)

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench: d 256, embed_time 64, 4 heads, 1 cross layer, dropout 0.2, ResNet-50."""
        return {**CAREBENCH_HPARAMS, "embed_time": 64, "cross_layers": 1}

    @classmethod
    def search_space(cls) -> dict:
        """Not searched in CareBench: ``{}``."""
        return {}

    def _last_window(self, ehr: torch.Tensor, lengths: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``max_len`` valid steps of each sequence, left-aligned."""
        lengths = clamp_lengths(lengths, ehr.shape[1])
        if ehr.shape[1] <= self.max_len:
            return ehr, lengths
        start = (lengths - self.max_len).clamp(min=0)
        idx = start[:, None] + torch.arange(self.max_len, device=ehr.device)[None, :]
        ehr = ehr.gather(1, idx[..., None].expand(-1, -1, ehr.shape[2]))
        return ehr, lengths.clamp(max=self.max_len)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Logits from the last states of the image and EHR sequences."""
        if "cxr_hours" not in batch:
            raise RaybenchError("utde needs the batch key cxr_hours (hours from each image to "
                                "the prediction time); re-run `raybench preprocess`")
        ehr, lengths = self._last_window(batch["ehr"], batch["ehr_lengths"])
        b, t = ehr.shape[:2]
        back = (lengths[:, None] - 1 - torch.arange(t, device=ehr.device)[None, :]).clamp(min=0)
        times = (back.to(ehr.dtype) + 0.5) * self.step_units  # [B, T], before prediction
        ehr_seq = self.ehr_encoder(ehr, lengths, times)
        image = self.cxr_adapter(self.cxr_encoder(batch["cxr"]))
        image_time = batch["cxr_hours"].to(image.dtype) / HOURS_PER_UNIT
        image = image + self.cxr_time(image_time).to(image.dtype)
        cxr_seq = image[:, None, :].expand(b, t, image.shape[-1])
        scale = math.sqrt(ehr_seq.shape[-1])
        position = back.clamp(max=self.max_len - 1)
        xs = [self.dropout(scale * x + emb(position).to(x.dtype))
              for x, emb in zip((cxr_seq, ehr_seq.to(image.dtype)), self.positions, strict=True)]
        pad = ~valid_step_mask(lengths, t)
        for layer in self.layers:
            xs = layer(xs, pad)
        last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, xs[0].shape[-1])
        hidden = torch.cat([norm(x).gather(1, last)[:, 0]
                            for norm, x in zip(self.final_norms, xs, strict=True)], dim=1)
        hidden = self.proj2(self.dropout(F.relu(self.proj1(hidden)))) + hidden
        return ModelOutput(logits=self.out_layer(hidden), aux_losses={})
