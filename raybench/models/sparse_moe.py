"""A pure-torch sparse mixture-of-experts layer with noisy top-k routers (for Flex-MoE).

- :class:`NoisyTopKRouter`: Shazeer et al.'s noisy top-k gating ("Outrageously Large Neural
  Networks: The Sparsely-Gated Mixture-of-Experts Layer", ICLR 2017, arXiv:1701.06538):
  ``clean = x W_g``; in training ``noisy = clean + N(0, 1) * (softplus(x W_n) + 0.01)``; the
  gates are a softmax over the top-k logits. A token may come with a *fixed* expert, which
  then always takes its first slot (Flex-MoE's S-router); the other slots are the best
  remaining experts.
- Balancing losses: ``cv^2(importance) + cv^2(load)`` with importance the summed gates per
  expert and load the smooth "probability of being in the top k" estimate of the noisy
  gate (selection counts in eval mode or when ``k`` equals the number of experts).
- :class:`SparseMoE`: ``num_experts`` two-layer GELU MLPs (``d -> hidden -> d``) stored as
  batched weights; each token is sent only to its ``k`` experts (a loop over the experts
  that received tokens), the outputs weighted by the gates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NoisyTopKRouter", "SparseMoE", "cv_squared"]

NOISE_EPSILON = 1e-2


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)^2`` (0 for fewer than 2 values)."""
    x = x.float()
    if x.numel() < 2:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + 1e-10)


class NoisyTopKRouter(nn.Module):
    """Noisy top-k gate over ``num_experts`` (see the module docstring)."""

    def __init__(self, dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = int(num_experts), int(top_k)
        self.w_gate = nn.Linear(dim, num_experts, bias=False)
        self.w_noise = nn.Linear(dim, num_experts, bias=False)

    def forward(self, x: torch.Tensor, fixed: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Route tokens ``x`` ``[N, D]``; ``fixed`` int64 ``[N]`` (-1 = free routing).

        Returns the chosen experts ``[N, k]``, their gates ``[N, k]`` (softmax over the
        chosen logits) and, for the balancing losses, ``logits`` ``[N, E]``, ``gates``
        ``[N, E]`` (dense) and ``load`` ``[N, E]`` (per-token load estimate).
        """
        clean = self.w_gate(x).float()
        if self.training:
            std = F.softplus(self.w_noise(x).float()) + NOISE_EPSILON
            logits = clean + torch.randn_like(clean) * std
        else:
            std, logits = None, clean
        forced = fixed >= 0
        ranking = logits.masked_fill(
            F.one_hot(fixed.clamp(min=0), self.num_experts).bool() & forced[:, None],
            float("inf"))
        chosen = ranking.topk(self.top_k, dim=1).indices
        gates = torch.softmax(logits.gather(1, chosen), dim=1)
        dense = torch.zeros_like(logits).scatter(1, chosen, gates)
        if std is not None and self.top_k < self.num_experts:
            load = self._prob_in_top_k(clean, logits, std)
        else:
            load = (dense > 0).to(dense.dtype)
        return chosen, gates, {"logits": logits, "gates": dense, "load": load}

    def _prob_in_top_k(self, clean: torch.Tensor, noisy: torch.Tensor, std: torch.Tensor
                       ) -> torch.Tensor:
        """Smooth probability that each expert is in a token's top k (Shazeer et al., A.4)."""
        top = noisy.topk(self.top_k + 1, dim=1).values
        threshold_in, threshold_out = top[:, self.top_k:self.top_k + 1], top[:, -2:-1]
        normal = torch.distributions.Normal(0.0, 1.0)
        prob_in = normal.cdf((clean - threshold_in) / std)
        prob_out = normal.cdf((clean - threshold_out) / std)
        return torch.where(noisy > threshold_in, prob_in, prob_out)


class SparseMoE(nn.Module):
    """Top-k routed expert MLPs with one or more routers (see the module docstring)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int,
                 num_routers: int = 1) -> None:
        super().__init__()
        self.num_experts = int(num_experts)
        self.top_k = min(int(top_k), self.num_experts)
        self.routers = nn.ModuleList(
            NoisyTopKRouter(dim, self.num_experts, self.top_k) for _ in range(num_routers))
        self.w1 = nn.Parameter(torch.empty(self.num_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(self.num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(self.num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(self.num_experts, dim))
        for w in (self.w1, self.w2):  # nn.Linear's default init, per expert
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x: torch.Tensor, fixed: torch.Tensor, router: int = 0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mixture output for tokens ``x`` ``[N, D]`` routed by ``routers[router]``."""
        chosen, gates, stats = self.routers[router](x, fixed)
        out = torch.zeros_like(x)
        flat_expert = chosen.reshape(-1)
        flat_token = torch.arange(x.shape[0], device=x.device).repeat_interleave(self.top_k)
        flat_gate = gates.reshape(-1)
        for expert in flat_expert.unique().tolist():
            slots = (flat_expert == expert).nonzero(as_tuple=True)[0]
            tokens = flat_token.index_select(0, slots)
            inp = x.index_select(0, tokens)
            hidden = F.gelu(inp @ self.w1[expert].to(inp.dtype) + self.b1[expert].to(inp.dtype))
            y = hidden @ self.w2[expert].to(inp.dtype) + self.b2[expert].to(inp.dtype)
            out = out.index_add(0, tokens, y * flat_gate.index_select(0, slots)[:, None]
                                .to(y.dtype))
        return out, stats

    @staticmethod
    def balance_loss(stats: dict[str, torch.Tensor], fixed: torch.Tensor,
                     reserved_expert: int = 0) -> torch.Tensor:
        """Flex-MoE's router loss for one routing call.

        Freely routed tokens (``fixed < 0``, G-router): ``cv^2(importance) + cv^2(load)``
        over all experts. Tokens with a fixed expert (S-router): cross-entropy of the router
        logits towards that expert, plus the same balancing over the experts other than
        ``reserved_expert`` (the full-modality combination's).
        """
        free = fixed < 0
        loss = stats["logits"].new_zeros(())
        if free.any():
            loss = loss + cv_squared(stats["gates"][free].sum(0)) + cv_squared(
                stats["load"][free].sum(0))
        if (~free).any():
            keep = [e for e in range(stats["gates"].shape[1]) if e != reserved_expert]
            loss = loss + F.cross_entropy(stats["logits"][~free], fixed[~free])
            loss = loss + cv_squared(stats["gates"][~free][:, keep].sum(0)) + cv_squared(
                stats["load"][~free][:, keep].sum(0))
        return loss
