"""HEALNet: a shared latent array that attends to each modality in turn (``healnet``)."""

from __future__ import annotations

import math
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
    PatchEmbedding,
    encode_steps,
)
from raybench.models.ehr_encoders import build_ehr_encoder
from raybench.models.registry import register_model

__all__ = ["HEALNet", "fourier_encode"]


def fourier_encode(pos: torch.Tensor, max_freq: float, bands: int) -> torch.Tensor:
    """``[..., 2 * bands + 1]``: sin and cos of ``pos * f * pi`` for ``bands`` frequencies
    ``f`` evenly spaced in ``[1, max_freq / 2]``, then ``pos`` itself (HEALNet/Perceiver)."""
    scales = torch.linspace(1.0, max_freq / 2, bands, device=pos.device, dtype=pos.dtype)
    angles = pos.unsqueeze(-1) * scales * math.pi
    return torch.cat([angles.sin(), angles.cos(), pos.unsqueeze(-1)], dim=-1)


class _Attention(nn.Module):
    """Pre-norm multi-head (cross-)attention as in HEALNet's code: softmax at temperature 0.5,
    output projection followed by a LeakyReLU (slope 0.01)."""

    def __init__(self, dim: int, context_dim: int | None, heads: int, dim_head: int,
                 dropout: float) -> None:
        super().__init__()
        context_dim = context_dim or dim
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.scale = dim_head ** -0.5 / 0.5  # temperature 0.5
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Update for ``x`` ``[B, N, dim]``; ``mask`` (bool ``[B, M]``) marks valid context."""
        x = self.norm(x)
        context = x if context is None else self.norm_context(context)
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, scale=self.scale,
            dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).flatten(2))


class _FeedForward(nn.Module):
    """Pre-norm gated feed-forward ``x * act(gate)`` (SELU gate if ``snn``, else GELU)."""

    def __init__(self, dim: int, dropout: float, snn: bool, mult: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * mult * dim)
        self.down = nn.Linear(mult * dim, dim)
        self.act = F.selu if snn else F.gelu
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Update for ``x``."""
        value, gate = self.up(self.norm(x)).chunk(2, dim=-1)
        return self.drop(self.down(value * self.act(gate)))


class _Layer(nn.Module):
    """One HEALNet layer: per-modality cross-attention + feed-forward, then latent
    self-attention blocks."""

    def __init__(self, dim: int, context_dims: dict[str, int], hp: dict[str, Any]) -> None:
        super().__init__()
        cross = dict(heads=int(hp["cross_heads"]), dim_head=dim // int(hp["cross_heads"]),
                     dropout=float(hp["attn_dropout"]))
        ff = dict(dropout=float(hp["ff_dropout"]), snn=bool(hp["snn"]))
        self.cross = nn.ModuleDict({m: _Attention(dim, c, **cross)
                                    for m, c in context_dims.items()})
        self.cross_ff = nn.ModuleDict({m: _FeedForward(dim, **ff) for m in context_dims})
        self.self_attn = nn.ModuleList(
            nn.ModuleList([_Attention(dim, None, int(hp["latent_heads"]),
                                      dim // int(hp["latent_heads"]), float(hp["attn_dropout"])),
                           _FeedForward(dim, **ff)])
            for _ in range(int(hp["self_per_cross_attn"])))

    def attend(self, modality: str, x: torch.Tensor, context: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Residual cross-attention of the latents to ``modality``, then its feed-forward."""
        x = x + self.cross[modality](x, context, mask)
        return x + self.cross_ff[modality](x)

    def think(self, x: torch.Tensor) -> torch.Tensor:
        """Residual latent self-attention and feed-forward blocks."""
        for attn, ff in self.self_attn:
            x = x + attn(x)
            x = x + ff(x)
        return x


@register_model("healnet")
class HEALNet(MultimodalModel):
    """HEALNet: hybrid early fusion through a shared latent array.

    Hemker, Simidjievski, Jamnik, "HEALNet: Multimodal Fusion for Heterogeneous Biomedical
    Data", NeurIPS 2024, arXiv:2311.09115.

    A learned latent array (``latent_channels`` x ``hidden``) is updated ``depth`` times;
    each update cross-attends to the EHR tokens, then to the CXR tokens (modality-specific
    attention and feed-forward weights), then runs ``self_per_cross_attn`` latent
    self-attention blocks. With ``weight_tie_layers`` layers 2..depth share one set of
    weights (layer 1 has its own), as in the authors' code. Each token carries a Fourier
    encoding of its position (``num_freq_bands`` bands up to ``max_freq``): the EHR step's
    relative position in its own sequence (0 = first valid step, 1 = last), the image
    patch's row and column in the patch grid. The prediction is a linear head on the
    layer-normalised mean of the latents.

    Faithful: the latent bottleneck and iterative per-modality cross-attention, weight
    tying, Fourier position channels, SELU-gated feed-forward (``snn``), the authors'
    temperature-0.5 softmax and LeakyReLU after each attention, CareBench's defaults (depth
    3, 256 x 256 latents, 4 heads of 64, dropout 0.2, 2 bands, max frequency 10). The latent
    width is ``hidden`` and the head size ``hidden / heads`` (CareBench sets latent_dim 256 =
    hidden and 64 = 256 / 4 separately).
    Deviations: EHR tokens are the per-step outputs of the EHR encoder (CareBench's
    "encoded" mode; the paper feeds raw tabular data), with padded steps masked out of the
    attention; CXR tokens are ``healnet_patch`` x ``healnet_patch`` patches linearly embedded
    to ``hidden`` (``cxr_encoder``) instead of CareBench's 50k single-pixel tokens; a sample
    without an image skips the CXR cross-attention and its feed-forward (the residual update
    is gated by ``cxr_present`` per sample, where the authors' code silently skips a missing
    modality for the whole batch with ``try/except``); in tied layers each modality keeps its
    own cross feed-forward (the authors' code shares one). CareBench trains with batch 4;
    raybench keeps the study's batch size.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        hidden, bands = int(hp["hidden"]), int(hp["num_freq_bands"])
        depth, dim = int(hp["depth"]), hidden
        if depth < 1 or bands < 1 or int(hp["self_per_cross_attn"]) < 0:
            raise ModelConfigError("healnet needs depth >= 1, num_freq_bands >= 1 and "
                                   "self_per_cross_attn >= 0")
        for key in ("cross_heads", "latent_heads"):
            if int(hp[key]) < 1 or hidden % int(hp[key]):
                raise ModelConfigError(f"healnet: hidden ({hidden}) must be a multiple of "
                                       f"{key} ({hp[key]})")
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.cxr_encoder = PatchEmbedding(data.cxr_channels, hidden, int(hp["healnet_patch"]),
                                          data.image_size, "healnet_patch")
        freq = 2 * bands + 1
        contexts = {"ehr": self.ehr_encoder.out_dim + freq, "cxr": hidden + 2 * freq}
        self.latents = nn.Parameter(torch.randn(int(hp["latent_channels"]), dim))
        n_unique = min(depth, 2) if hp["weight_tie_layers"] else depth
        self.layers = nn.ModuleList(_Layer(dim, contexts, hp) for _ in range(n_unique))
        self.layer_order = [min(i, n_unique - 1) for i in range(depth)]
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, task.n_outputs))

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench's HEALNet: depth 3, 256 latents of ``hidden`` 256, 4 heads, 2 bands,
        max frequency 10, patches of 16 px."""
        shared = {k: v for k, v in CAREBENCH_HPARAMS.items()
                  if k not in ("cxr_backbone", "pretrained")}
        return {**shared, "healnet_patch": 16, "depth": 3, "num_freq_bands": 2,
                "max_freq": 10.0, "latent_channels": 256, "cross_heads": 4,
                "latent_heads": 4, "attn_dropout": 0.2, "ff_dropout": 0.2, "self_per_cross_attn": 1,
                "weight_tie_layers": True, "snn": True}

    @classmethod
    def search_space(cls) -> dict:
        """CareBench's: depth, num_freq_bands, max_freq."""
        return {"depth": {"choice": [1, 2, 3]}, "num_freq_bands": {"choice": [1, 2, 4]},
                "max_freq": {"choice": [5.0, 10.0]}}

    def _fourier(self, pos: torch.Tensor) -> torch.Tensor:
        return fourier_encode(pos, float(self.hparams["max_freq"]),
                              int(self.hparams["num_freq_bands"]))

    def _ehr_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        steps, valid = encode_steps(self.ehr_encoder, batch["ehr"], batch["ehr_lengths"])
        last = (valid.sum(1, keepdim=True) - 1).clamp(min=1).to(steps.dtype)
        pos = torch.arange(steps.shape[1], device=steps.device, dtype=steps.dtype) / last
        return torch.cat([steps, self._fourier(pos).to(steps.dtype)], dim=-1), valid

    def _cxr_tokens(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.cxr_encoder(images)
        grid = self.cxr_encoder.grid
        axis = torch.linspace(0.0, 1.0, grid, device=tokens.device)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        enc = torch.cat([self._fourier(rows.reshape(-1)), self._fourier(cols.reshape(-1))], -1)
        enc = enc.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([tokens, enc], dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Logits from the latents after ``depth`` rounds of EHR/CXR cross-attention."""
        ehr_ctx, valid = self._ehr_tokens(batch)
        present = batch["cxr_present"].to(torch.bool)
        idx = present.nonzero(as_tuple=True)[0]
        cxr_ctx = self._cxr_tokens(batch["cxr"].index_select(0, idx)) if idx.numel() else None
        x = self.latents.unsqueeze(0).expand(ehr_ctx.shape[0], -1, -1)
        for i in self.layer_order:
            layer = self.layers[i]
            x = layer.attend("ehr", x, ehr_ctx, valid)
            if cxr_ctx is not None:  # only samples with an image take the CXR update
                updated = layer.attend("cxr", x.index_select(0, idx), cxr_ctx)
                x = x.index_copy(0, idx, updated.to(x.dtype))
            x = layer.think(x)
        return ModelOutput(logits=self.head(x.mean(dim=1)), aux_losses={})
