"""Flex-MoE: missing-modality bank + sparse mixture of experts (``flex_moe``).

Yun, Choi, Peng, Wu, Bao, Zhang, Xin, Long, Chen, "Flex-MoE: Modeling Arbitrary Modality
Combination via the Flexible Mixture-of-Experts", NeurIPS 2024, arXiv:2410.08245 (code
UNITES-Lab/flex-moe).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from raybench.models.base import (
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
)
from raybench.models.carebench_common import CAREBENCH_HPARAMS
from raybench.models.cxr_encoders import build_cxr_encoder, encode_present
from raybench.models.ehr_encoders import build_ehr_encoder
from raybench.models.registry import register_model
from raybench.models.sparse_moe import SparseMoE

__all__ = ["FlexMoE", "COMBINATIONS"]

#: Modality combinations in Flex-MoE's order of preference: index 0 is the full one, whose
#: samples train the generalised (G-) router; each other index is also the expert that the
#: specialised (S-) router fixes as the first choice for that combination's samples.
COMBINATIONS = (("ehr", "cxr"), ("ehr",), ("cxr",))
FULL, EHR_ONLY = 0, 1


class PatchAdapter(nn.Module):
    """Feature ``[B, D_in]`` -> ``num_patches`` tokens ``[B, P, D]`` (Linear, LayerNorm,
    dropout; CareBench's patch adapter)."""

    def __init__(self, in_dim: int, dim: int, num_patches: int, dropout: float) -> None:
        super().__init__()
        self.num_patches, self.dim = num_patches, dim
        self.proj = nn.Linear(in_dim, dim * num_patches)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, P, D]``."""
        tokens = self.proj(feat).view(feat.shape[0], self.num_patches, self.dim)
        return self.dropout(self.norm(tokens))


class MoEBlock(nn.Module):
    """Pre-norm transformer block whose feed-forward is a sparse MoE (or a dense MLP)."""

    def __init__(self, dim: int, heads: int, dropout: float, sparse: bool,
                 moe_args: dict[str, int]) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.sparse = sparse
        if sparse:
            self.ffn = SparseMoE(dim, 2 * dim, **moe_args)
        else:
            self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, fixed: torch.Tensor, chunks: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N, D]`` -> tokens, router loss (0 for a dense block).

        ``fixed`` ``[B]``: each sample's fixed expert (-1: free routing); ``chunks``: the
        token count of each modality (modality ``m`` uses router ``m % num_routers``).
        """
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, h, h, need_weights=False)[0])
        h = self.norm2(x)
        if not self.sparse:
            return x + self.dropout(self.ffn(h)), x.new_zeros((), dtype=torch.float32)
        outputs, loss, start = [], x.new_zeros((), dtype=torch.float32), 0
        for m, size in enumerate(chunks):
            part = h[:, start:start + size]
            tokens_fixed = fixed.repeat_interleave(size)
            router = m % len(self.ffn.routers)
            out, stats = self.ffn(part.reshape(-1, part.shape[-1]), tokens_fixed, router)
            loss = loss + SparseMoE.balance_loss(stats, tokens_fixed, reserved_expert=FULL)
            outputs.append(out.view_as(part))
            start += size
        return x + self.dropout(torch.cat(outputs, dim=1)), loss


@register_model("flex_moe")
class FlexMoE(MultimodalModel):
    """Missing-modality bank, sparse-MoE transformer, routing by modality combination.

    Faithful: each modality's encoder feature becomes ``num_patches`` tokens; a sample
    without an image gets the missing-modality bank's learned tokens for (its combination,
    CXR) instead; modality tokens plus a learned position embedding go through ``num_layers``
    transformer blocks whose feed-forward is a sparse MoE in the first block and every
    other one after it (``num_experts`` GELU MLPs of width 2 d, noisy top-``top_k`` routers,
    Shazeer et al. 2017); the tokens of each modality are averaged, concatenated and
    classified by an MLP of ``num_layers_pred`` layers. Routing follows each sample's own
    modality combination: full samples (EHR + CXR) are routed freely by the G-router and
    contribute the load-balancing loss ``cv^2(importance) + cv^2(load)``; a sample with a
    missing image (combination "EHR only", index 1) has the S-router fix its first expert to
    expert 1 (the other ``top_k - 1`` chosen freely), with the reference code's
    cross-entropy pull of the router logits towards that expert and balancing over the
    experts other than expert 0. Router loss weight: ``gate_loss_weight * (1 - 0.5 *
    (epoch - 1) / epochs)`` (CareBench's decay, set by the epoch-start hook; the paper's code
    keeps it constant).

    Deviations: a pure-torch MoE (no FastMoE); routing is per sample (CareBench switches the
    whole batch between full and partial routing), so a sample's output never depends on
    which other samples have images. ``top_k`` larger than ``num_experts`` is clamped to
    ``num_experts`` (the search space allows top_k 8 with 4 experts). ``num_routers``
    routers: modality ``m``'s tokens use router ``m % num_routers`` (the reference code
    builds ``num_routers`` gates but routes with the first only). Pre-norm residual blocks
    (the reference block adds the attention output to itself instead of to its input). The
    paper's modality-sorted warm-up epochs (full samples first) are not reproduced: the
    trainer shuffles batches. Patch tokens come from CareBench's adapter of the pooled
    encoder feature (Linear to ``num_patches x d``, LayerNorm, dropout) on CareBench's EHR
    transformer / ResNet-50; absent images never enter the ResNet (``handles_missing_cxr``).
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"ehr", "cxr"})
    handles_missing_cxr: ClassVar[bool] = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams: Any) -> None:
        super().__init__(data, task, **hparams)
        hp = self.hparams
        dim, patches = int(hp["hidden"]), int(hp["num_patches"])
        for key in ("num_patches", "num_layers", "num_layers_pred", "num_experts",
                    "num_routers", "top_k"):
            if int(hp[key]) < 1:
                raise ModelConfigError(f"flex_moe: {key} must be >= 1, got {hp[key]}")
        dropout = float(hp["dropout"])
        self.ehr_encoder = build_ehr_encoder(str(hp["ehr_encoder"]), data.ehr_features, hp)
        self.cxr_encoder = build_cxr_encoder(hp, data.cxr_channels)
        self.ehr_adapter = PatchAdapter(self.ehr_encoder.out_dim, dim, patches, dropout)
        self.cxr_adapter = PatchAdapter(self.cxr_encoder.out_dim, dim, patches, dropout)
        self.missing_bank = nn.Parameter(torch.randn(len(COMBINATIONS), 2, patches, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 * patches, dim))
        moe_args = {"num_experts": int(hp["num_experts"]), "top_k": int(hp["top_k"]),
                    "num_routers": int(hp["num_routers"])}
        self.blocks = nn.ModuleList(
            MoEBlock(dim, int(hp["num_heads"]), dropout, sparse=(i % 2 == 0), moe_args=moe_args)
            for i in range(int(hp["num_layers"])))
        layers: list[nn.Module] = []
        width = 2 * dim
        for _ in range(int(hp["num_layers_pred"]) - 1):
            layers += [nn.Linear(width, dim), nn.ReLU(), nn.Dropout(dropout)]
            width = dim
        self.head = nn.Sequential(*layers, nn.Linear(width, task.n_outputs))
        self.register_buffer("gate_weight", torch.tensor(float(hp["gate_loss_weight"])))

    @classmethod
    def default_hparams(cls) -> dict:
        """CareBench: 16 patches, 1 layer, 16 experts, 1 router, top-4, gate weight 0.01."""
        return {**CAREBENCH_HPARAMS, "num_patches": 16, "num_layers": 1, "num_layers_pred": 1,
                "num_experts": 16, "num_routers": 1, "top_k": 4, "num_heads": 4,
                "gate_loss_weight": 0.01}

    @classmethod
    def search_space(cls) -> dict:
        """CareBench's: num_experts, num_routers, top_k, gate_loss_weight."""
        return {"num_experts": {"choice": [4, 8, 16]},
                "num_routers": {"choice": [1, 2]},
                "top_k": {"choice": [2, 4, 8]},
                "gate_loss_weight": {"uniform": [0.001, 0.1]}}

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """CareBench's decaying router-loss weight."""
        progress = min((epoch - 1) / max(epochs, 1), 1.0)
        self.gate_weight.fill_(float(self.hparams["gate_loss_weight"]) * (1.0 - 0.5 * progress))

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Logits; the weighted router loss in ``aux_losses["gate_loss"]``."""
        present = batch["cxr_present"].to(torch.bool)
        combination = torch.where(present, FULL, EHR_ONLY)
        ehr_tokens = self.ehr_adapter(self.ehr_encoder(batch["ehr"], batch["ehr_lengths"]))
        cxr_tokens = self.cxr_adapter(encode_present(self.cxr_encoder, batch["cxr"], present))
        missing = self.missing_bank[combination, 1].to(cxr_tokens.dtype)
        cxr_tokens = torch.where(present[:, None, None], cxr_tokens, missing)
        x = torch.cat([ehr_tokens, cxr_tokens.to(ehr_tokens.dtype)], dim=1) + self.pos_embed
        num_experts = int(self.hparams["num_experts"])
        fixed = torch.where(present, -1, combination % num_experts)
        chunks = [ehr_tokens.shape[1], cxr_tokens.shape[1]]
        router_loss = x.new_zeros((), dtype=torch.float32)
        for block in self.blocks:
            x, loss = block(x, fixed, chunks)
            router_loss = router_loss + loss
        pooled = torch.cat([x[:, :chunks[0]].mean(1), x[:, chunks[0]:].mean(1)], dim=1)
        logits = self.head(pooled)
        aux = {"gate_loss": self.gate_weight * router_loss} if self.training else {}
        return ModelOutput(logits=logits, aux_losses=aux)
