"""Flex-MoE: per-sample routing by modality combination, the bank, the sparse MoE."""

from __future__ import annotations

import pytest
import torch
from model_helpers import build_tiny, eval_logits, tiny_batch

from raybench.models.flex_moe import EHR_ONLY
from raybench.models.sparse_moe import NoisyTopKRouter, SparseMoE, cv_squared


def test_output_unchanged_when_other_samples_lose_their_image() -> None:
    model = build_tiny("flex_moe", "multilabel")
    full = tiny_batch("multilabel", present=(True, True, True, True))
    partial = dict(full, cxr_present=torch.tensor([True, False, False, True]))
    partial["cxr"] = full["cxr"] * partial["cxr_present"][:, None, None, None]
    a, b = eval_logits(model, full), eval_logits(model, partial)
    torch.testing.assert_close(a[[0, 3]], b[[0, 3]])
    assert not torch.allclose(a[[1, 2]], b[[1, 2]])


def test_missing_image_uses_the_bank_tokens() -> None:
    model = build_tiny("flex_moe")
    batch = tiny_batch(present=(True, False, True, True))
    before = eval_logits(model, batch)
    with torch.no_grad():
        model.missing_bank[EHR_ONLY, 1].add_(1.0)
    after = eval_logits(model, batch)
    assert not torch.allclose(before[1], after[1])
    torch.testing.assert_close(before[[0, 2, 3]], after[[0, 2, 3]])


def test_router_fixes_the_first_expert_of_partial_samples() -> None:
    torch.manual_seed(0)
    router = NoisyTopKRouter(dim=8, num_experts=6, top_k=3).eval()
    x = torch.randn(10, 8)
    fixed = torch.tensor([-1, 1, -1, 1, 2, -1, 1, 1, -1, 2])
    chosen, gates, stats = router(x, fixed)
    assert torch.equal(chosen[fixed >= 0, 0], fixed[fixed >= 0])
    assert all(len(set(row)) == 3 for row in chosen.tolist())  # distinct experts
    free_topk = stats["logits"][fixed < 0].topk(3).indices
    assert torch.equal(chosen[fixed < 0], free_topk)
    torch.testing.assert_close(gates.sum(1), torch.ones(10))
    torch.testing.assert_close(gates, torch.softmax(stats["logits"].gather(1, chosen), 1))


def test_sparse_moe_is_the_gated_sum_of_the_chosen_experts() -> None:
    torch.manual_seed(1)
    moe = SparseMoE(dim=6, hidden=12, num_experts=5, top_k=8).eval()  # top_k clamped to 5
    assert moe.top_k == 5
    moe.top_k = moe.routers[0].top_k = 2
    x, fixed = torch.randn(7, 6), torch.full((7,), -1)
    out, _ = moe(x, fixed)
    chosen, gates, _ = moe.routers[0](x, fixed)
    for i in range(7):
        expected = sum(
            gates[i, j] * (torch.nn.functional.gelu(x[i] @ moe.w1[e] + moe.b1[e]) @ moe.w2[e]
                           + moe.b2[e])
            for j, e in enumerate(chosen[i].tolist()))
        torch.testing.assert_close(out[i], expected)


def test_top_k_larger_than_the_experts_is_clamped() -> None:
    model = build_tiny("flex_moe", num_experts=4, top_k=8)
    assert model.blocks[0].ffn.top_k == 4
    assert eval_logits(model, tiny_batch()).shape == (4, 1)


def test_router_loss_balances_and_specialises() -> None:
    assert cv_squared(torch.ones(4)).item() == 0.0
    assert cv_squared(torch.tensor([4.0, 0.0, 0.0, 0.0])).item() > 1.0
    model = build_tiny("flex_moe", gate_loss_weight=0.5)
    model.train()
    out = model(tiny_batch(present=(True, True, True, True)))
    full_only = out.aux_losses["gate_loss"]
    out = model(tiny_batch(present=(True, False, False, True)))
    assert full_only > 0 and out.aux_losses["gate_loss"] > 0
    model.eval()
    assert model(tiny_batch()).aux_losses == {}


def test_router_loss_weight_decays_by_epoch() -> None:
    model = build_tiny("flex_moe", gate_loss_weight=0.02)
    model.on_epoch_start(1, 10)
    assert model.gate_weight.item() == pytest.approx(0.02)
    model.on_epoch_start(10, 10)
    assert model.gate_weight.item() == pytest.approx(0.02 * (1 - 0.5 * 0.9))


def test_two_routers_split_the_modalities() -> None:
    model = build_tiny("flex_moe", num_routers=2)
    assert len(model.blocks[0].ffn.routers) == 2
    model.train()
    out = model(tiny_batch())
    out.aux_losses["gate_loss"].backward()
    for router in model.blocks[0].ffn.routers:
        assert router.w_gate.weight.grad is not None
