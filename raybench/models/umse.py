"""UMSE + MAA: unified multimodal set embedding and bottleneck attention (``umse``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from raybench.models.base import (
    TRAINER_HPARAMS,
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    value_mask_pairs,
)
from raybench.models.carebench_blocks import PatchEmbedding
from raybench.models.ehr_encoders import valid_step_mask
from raybench.models.registry import register_model

__all__ = ["UMSE", "SetEmbedding"]

HOURS_PER_DAY = 24.0


def _scalar_embedding(dim: int) -> nn.Sequential:
    """UMSE's embedding of one number: Linear(1, dim) -> LayerNorm -> ReLU."""
    return nn.Sequential(nn.Linear(1, dim), nn.LayerNorm(dim), nn.ReLU())


class SetEmbedding(nn.Module):
    """The EHR as a set of observations ``value + time + feature`` embeddings (UMSE, TIE).

    One element per *observed* value: a continuous channel at a step where its ``mask:``
    channel is 1, a one-hot channel (``variable=category``) where it is observed and hot.
    Imputed values produce no element. ``feature_names`` empty (unknown) treats every
    channel as a continuous variable observed at every valid step. The feature table has one
    extra row (index ``n_features``) for the image type.
    """

    def __init__(self, n_channels: int, feature_names: tuple[str, ...], dim: int,
                 time_embedding: nn.Module) -> None:
        super().__init__()
        if feature_names:
            pairs = value_mask_pairs(feature_names)
            one_hot = [("=" in feature_names[v]) for v, _ in pairs]
        else:
            pairs, one_hot = [(c, None) for c in range(n_channels)], [False] * n_channels
        self.register_buffer("value_idx", torch.tensor([v for v, _ in pairs]), persistent=False)
        self.register_buffer("mask_idx", torch.tensor([-1 if m is None else m for _, m in pairs]),
                             persistent=False)
        self.register_buffer("one_hot", torch.tensor(one_hot), persistent=False)
        self.n_features = len(pairs)
        self.value = _scalar_embedding(dim)
        self.feature = nn.Embedding(self.n_features + 1, dim)
        self.time = time_embedding
        self.out_dim = dim

    def observed(self, ehr: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, T, V]``: which value channels give a set element at which step."""
        values = ehr[..., self.value_idx]
        keep = valid_step_mask(lengths, ehr.shape[1])[..., None].expand_as(values)
        has_mask = self.mask_idx >= 0
        masks = ehr[..., self.mask_idx.clamp(min=0)] > 0.5
        keep = keep & (masks | ~has_mask)
        return keep & ((values > 0.5) | ~self.one_hot)

    def forward(self, ehr: torch.Tensor, lengths: torch.Tensor, step_hours: float,
                max_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Element embeddings ``[B, N, dim]`` and their validity ``[B, N]`` (the most recent
        ``max_elements`` per sample, in time order)."""
        batch, steps = ehr.shape[:2]
        lengths = lengths.to(torch.long).clamp(min=1, max=steps)
        flat = self.observed(ehr, lengths).reshape(batch, -1)  # step-major
        from_end = flat.flip(1).to(torch.int64).cumsum(1).flip(1)
        flat = flat & (from_end <= max_elements)
        width = int(flat.sum(1).max()) if flat.numel() else 0
        rows, cols = flat.nonzero(as_tuple=True)
        slot = (flat.to(torch.int64).cumsum(1) - 1)[rows, cols]
        step, channel = cols // self.n_features, cols % self.n_features
        values = ehr.new_zeros(batch, width)
        values[rows, slot] = ehr[rows, step, self.value_idx[channel]]
        days = ehr.new_zeros(batch, width)
        days[rows, slot] = ((lengths[rows] - step).to(ehr.dtype) - 0.5) * step_hours / HOURS_PER_DAY
        feature = torch.zeros(batch, width, dtype=torch.long, device=ehr.device)
        feature[rows, slot] = channel
        valid = torch.zeros(batch, width, dtype=torch.bool, device=ehr.device)
        valid[rows, slot] = True
        embedded = (self.value(values[..., None]) + self.time(days[..., None])
                    + self.feature(feature))
        return embedded, valid


class _ImageTokens(nn.Module):
    """Patch embedding with learnable positions (MONAI's PatchEmbeddingBlock, as in UMSE)."""

    def __init__(self, channels: int, dim: int, patch: int, image_size: int, dropout: float):
        super().__init__()
        self.patches = PatchEmbedding(channels, dim, patch, image_size, "umse_patch")
        self.position = nn.Parameter(torch.zeros(1, self.patches.n_tokens, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, n_patches, dim]``."""
        return self.dropout(self.patches(images) + self.position)


def _layer(dim: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True)


@register_model("umse")
class UMSE(MultimodalModel):
    """UMSE with modality-aware attention and skip bottleneck (MBT-style fusion).

    Lee et al., "Learning Missing Modal Electronic Health Records with Unified Multi-modal
    Data Embedding and Modality-Aware Attention", 2023, arXiv:2305.02504; bottlenecks from
    Nagrani et al., "Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021,
    arXiv:2107.00135.

    Unified multimodal set embedding: each observed EHR value is one token, the sum of a
    value embedding, a time embedding and a feature embedding (:class:`SetEmbedding`; no
    imputation, no carry-forward); each image patch is one token, the sum of its patch
    embedding (``umse_patch`` px, learnable positions), the *same* time embedding applied to
    the image's time (``cxr_hours``, hours from the image to the prediction time) and the
    image-type feature embedding. Times are days before the prediction (EHR step: its bin
    centre). Modality-aware attention: each modality has its own transformer layers over
    ``[bottlenecks, CLS, tokens]`` (padding masked); after each of the ``mbt_layers``
    layers the bottleneck tokens become the mean of the two modalities' bottleneck outputs
    for a sample with an image and the EHR's alone for a sample without one (skip
    bottleneck; the image stream is not computed for it). A shared classifier
    (LayerNorm -> Linear -> ReLU -> dropout -> Linear) reads each modality's CLS token and
    the logits are averaged over the sample's available modalities (UMSE's code). With one
    layer (CareBench's default) the exchanged bottleneck is never read by a later layer, so
    the modalities meet only in that averaged read-out; ``mbt_layers`` >= 2 gives bottleneck
    fusion.

    Faithful: the set embedding (value/time/feature sums, shared time embedding across
    modalities), patch tokens with time and type embeddings, per-modality layers with
    shared bottlenecks and the skip for missing modalities, CLS read-out averaged over
    available modalities; CareBench's settings (d 256, 1 layer, 1 bottleneck token,
    patches of 32 px, at most 500 EHR elements, dropout 0.2, 8 heads as its fusion code
    hard-codes). Deviations: CareBench indexes the skip with ``has_cxr``, which inverts it
    (samples *with* an image get the EHR-only bottleneck); here the skip follows the paper.
    EHR elements keep the most recent ``max_set_len``; element values are the prepared
    (z-scored) values; no sinusoidal position encoding on the EHR set (times carry the
    order, as UMSE's time-embedding mode); UMSE's paper uses 4 bottleneck tokens, CareBench
    1; CareBench's learned two-weight softmax over the CLS tokens is replaced by UMSE's
    average over available modalities (the learned weights would mix in the CLS of a
    missing image).
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True
    inputs: ClassVar[frozenset[str]] = frozenset({"cxr_hours"})

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        dim, heads, dropout = int(hp["hidden"]), int(hp["nhead"]), float(hp["dropout"])
        layers, bottlenecks = int(hp["mbt_layers"]), int(hp["bottlenecks"])
        if dim % heads or layers < 1 or bottlenecks < 1 or int(hp["max_set_len"]) < 1:
            raise ModelConfigError("umse needs hidden divisible by nhead and mbt_layers, "
                                   "bottlenecks, max_set_len >= 1")
        self.step_hours = data.step_hours
        self.time_embedding = _scalar_embedding(dim)
        self.ehr_encoder = SetEmbedding(data.ehr_features, data.feature_names, dim,
                                        self.time_embedding)
        self.cxr_encoder = _ImageTokens(data.cxr_channels, dim, int(hp["umse_patch"]),
                                        data.image_size, dropout)
        self.cls = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, dim))
                                     for m in ("ehr", "cxr")})
        self.bottleneck = nn.Parameter(torch.randn(1, bottlenecks, dim))
        self.norm_in = nn.ModuleDict({m: nn.LayerNorm(dim) for m in ("ehr", "cxr")})
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: _layer(dim, heads, dropout) for m in ("ehr", "cxr")})
            for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(dim, task.n_outputs))

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench's UMSE: d 256, 8 heads, 1 layer, 1 bottleneck, 32 px patches, dropout
        0.2, at most 500 EHR elements."""
        return {"hidden": 256, "nhead": 8, "dropout": 0.2, "mbt_layers": 1, "bottlenecks": 1,
                "umse_patch": 32, "max_set_len": 500, **TRAINER_HPARAMS}

    @classmethod
    def search_space(cls) -> dict:
        """Not searched (CareBench)."""
        return {}

    def _stream(self, modality: str, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls[modality].expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return self.dropout(self.norm_in[modality](torch.cat([cls, tokens], dim=1)))

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Mean over available modalities of the classifier on each CLS token."""
        ehr_tokens, valid = self.ehr_encoder(batch["ehr"], batch["ehr_lengths"],
                                             self.step_hours, int(self.hparams["max_set_len"]))
        ehr = self._stream("ehr", ehr_tokens)
        size = ehr.shape[0]
        n_b = self.bottleneck.shape[1]
        keep = torch.ones(size, n_b + 1, dtype=torch.bool, device=ehr.device)
        ehr_pad = ~torch.cat([keep, valid], dim=1)
        idx = batch["cxr_present"].to(torch.bool).nonzero(as_tuple=True)[0]
        cxr = None
        if idx.numel():
            tokens = self.cxr_encoder(batch["cxr"].index_select(0, idx))
            days = batch["cxr_hours"].index_select(0, idx).to(tokens.dtype) / HOURS_PER_DAY
            image_type = self.ehr_encoder.feature.weight[self.ehr_encoder.n_features]
            tokens = tokens + self.time_embedding(days[:, None])[:, None] + image_type
            cxr = self._stream("cxr", tokens)
        bottleneck = self.bottleneck.expand(size, -1, -1).to(ehr.dtype)
        for layer in self.layers:
            out = layer["ehr"](torch.cat([bottleneck, ehr], 1), src_key_padding_mask=ehr_pad)
            new_bottleneck, ehr = out[:, :n_b], out[:, n_b:]
            if cxr is not None:
                out = layer["cxr"](torch.cat([bottleneck.index_select(0, idx), cxr], 1))
                cxr = out[:, n_b:]
                both = (new_bottleneck.index_select(0, idx) + out[:, :n_b]) / 2
                new_bottleneck = new_bottleneck.index_copy(0, idx, both.to(ehr.dtype))
            bottleneck = new_bottleneck
        ehr_logits = self.head(ehr[:, 0])
        logits = ehr_logits
        extras = {"ehr_logits": ehr_logits}
        if cxr is not None:
            cxr_logits = self.head(cxr[:, 0])
            logits = logits.index_copy(0, idx, ((ehr_logits.index_select(0, idx) + cxr_logits)
                                                / 2).to(logits.dtype))
        return ModelOutput(logits=logits, aux_losses={}, extras=extras)
