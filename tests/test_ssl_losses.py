"""SSL losses against hand-computed values, VICReg's anti-collapse terms, LARS and schedules."""

from __future__ import annotations

import math

import pytest
import torch

from raybench.models.base import OptimizerSpec
from raybench.models.ssl_losses import (
    align_loss,
    convirt_loss,
    vicreg_covariance,
    vicreg_terms,
    vicreg_variance,
)
from raybench.optim import LARS, build_optimizer, lars_param_groups, lr_factor

R2 = math.sqrt(0.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: single-threaded torch is fastest (and does not spin on shared CPUs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# 3 x 2 embeddings; after normalisation e = (1,0), (0,1), (1,1)/sqrt2 and c = (1,0),
# (1,1)/sqrt2, (0,1), so the cosine similarities s[i][k] = e_i . c_k are:
Z_E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
Z_C = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
S = [[1.0, R2, 0.0],
     [0.0, R2, 1.0],
     [R2, 1.0, R2]]


def _nll(rows: list[list[float]], tau: float, exclude_positive: bool) -> float:
    """mean_i -log exp(r_ii/tau) / sum_k exp(r_ik/tau), written out element by element."""
    total = 0.0
    for i, row in enumerate(rows):
        terms = [math.exp(v / tau) for k, v in enumerate(row) if not (exclude_positive and k == i)]
        total += -(row[i] / tau - math.log(sum(terms)))
    return total / len(rows)


def _transpose(rows: list[list[float]]) -> list[list[float]]:
    return [list(col) for col in zip(*rows, strict=True)]


@pytest.mark.parametrize("exclude_positive", [False, True])
def test_convirt_matches_the_hand_computed_value(exclude_positive: bool) -> None:
    tau = 0.5
    expected = 0.5 * (_nll(S, tau, exclude_positive) + _nll(_transpose(S), tau, exclude_positive))
    got = convirt_loss(Z_E, Z_C, tau, exclude_positive)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # e.g. without exclusion, the first row of e->c is -log(e^2 / (e^2 + e^(2 r2) + 1)):
    first = -(2.0 - math.log(math.exp(2.0) + math.exp(2 * R2) + 1.0))
    assert _nll([S[0]], tau, False) == pytest.approx(first)


def test_excluding_the_positive_lowers_the_loss_and_keeps_it_finite() -> None:
    with_pos = convirt_loss(Z_E, Z_C, 0.1, False)
    without = convirt_loss(Z_E, Z_C, 0.1, True)
    assert without < with_pos  # a smaller denominator
    assert torch.isfinite(without)
    # two samples, tau 1: without the positive each denominator is the single negative,
    # -log(exp(s_ii) / exp(s_ik)) = s_ik - s_ii; s = [[1, r2], [0, r2]]
    two = convirt_loss(Z_E[:2], Z_C[:2], 1.0, True).item()
    e_to_c = ((R2 - 1.0) + (0.0 - R2)) / 2
    c_to_e = ((0.0 - 1.0) + (R2 - R2)) / 2
    assert two == pytest.approx(0.5 * (e_to_c + c_to_e))


def test_vicreg_terms_match_the_hand_computed_values() -> None:
    z_e = torch.tensor([[0.0, 0.0], [0.5, 0.1], [1.0, 0.5]])
    z_c = torch.tensor([[0.2, 0.0], [0.5, 0.3], [0.7, 0.3]])
    invariance, variance, covariance = vicreg_terms(z_e, z_c)
    sq = [(a - b) ** 2 for ra, rb in zip(z_e.tolist(), z_c.tolist(), strict=True)
          for a, b in zip(ra, rb, strict=True)]
    assert invariance.item() == pytest.approx(sum(sq) / 6, rel=1e-6)

    def var(col):  # unbiased
        m = sum(col) / 3
        return sum((x - m) ** 2 for x in col) / 2

    def v(z):
        cols = _transpose(z.tolist())
        return sum(max(0.0, 1 - math.sqrt(var(c) + 1e-4)) for c in cols) / 2

    def c(z):
        a, b = _transpose(z.tolist())
        ma, mb = sum(a) / 3, sum(b) / 3
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / 2
        return 2 * cov**2 / 2  # sum over i != j of Cov_ij^2, divided by d = 2

    assert vicreg_variance(z_e).item() == pytest.approx(v(z_e), rel=1e-5)
    assert variance.item() == pytest.approx(v(z_e) + v(z_c), rel=1e-5)
    assert vicreg_covariance(z_c).item() == pytest.approx(c(z_c), rel=1e-5)
    assert covariance.item() == pytest.approx(c(z_e) + c(z_c), rel=1e-5)
    assert variance.item() > 0 and covariance.item() > 0  # both terms are active here


def test_align_temperature_gradient_matches_the_hand_derivation() -> None:
    t = torch.tensor(math.log(0.2), requires_grad=True)
    loss = align_loss(Z_E, Z_C, t)
    loss.backward()
    tau = 0.2
    assert loss.item() == pytest.approx(_nll(S, tau, False) + _nll(_transpose(S), tau, False),
                                        rel=1e-6)
    # d/dt [logsumexp_k(s_ik e^-t) - s_ii e^-t] = -e^-t (sum_k p_ik s_ik - s_ii)
    grad = 0.0
    for rows in (S, _transpose(S)):
        for i, row in enumerate(rows):
            weights = [math.exp(v / tau) for v in row]
            expected_s = sum(w * v for w, v in zip(weights, row, strict=True)) / sum(weights)
            grad += -(1 / tau) * (expected_s - row[i]) / len(rows)
    assert t.grad.item() == pytest.approx(grad, rel=1e-5)
    assert t.grad.item() != 0


def test_align_temperature_is_clamped_to_its_bounds() -> None:
    for value, tau in ((math.log(5.0), 1.0), (math.log(0.001), 0.01)):
        t = torch.tensor(value, requires_grad=True)
        loss = align_loss(Z_E, Z_C, t)
        loss.backward()
        assert loss.item() == pytest.approx(_nll(S, tau, False) + _nll(_transpose(S), tau, False),
                                            rel=1e-5)
        assert t.grad.item() == 0.0  # outside the bounds the temperature does not move


def _vicreg_run(std_coeff: float, cov_coeff: float, steps: int = 50) -> torch.Tensor:
    """Two small encoders trained on synthetic paired views with VICReg; per-dim std of z."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    enc_e = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    enc_c = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    params = [*enc_e.parameters(), *enc_c.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-2)
    mix = torch.randn(8, 8, generator=gen)
    for _ in range(steps):
        latent = torch.randn(64, 8, generator=gen)  # a shared cause, seen through two views
        x_e = latent + 0.1 * torch.randn(64, 8, generator=gen)
        x_c = latent @ mix + 0.1 * torch.randn(64, 8, generator=gen)
        inv, var, cov = vicreg_terms(enc_e(x_e), enc_c(x_c))
        loss = 25.0 * inv + std_coeff * var + cov_coeff * cov
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        latent = torch.randn(512, 8, generator=gen)
        return enc_e(latent).std(dim=0)


def test_vicreg_does_not_collapse_and_would_without_its_regularisers() -> None:
    std = _vicreg_run(25.0, 1.0)
    assert (std >= 0.5).float().mean().item() >= 0.9, std
    collapsed = _vicreg_run(0.0, 0.0)
    assert (collapsed < 0.1).float().mean().item() >= 0.9, collapsed  # invariance alone


# --------------------------------------------------------------------------- LARS


def test_lars_trust_ratio_and_update_by_hand() -> None:
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    weight.grad = torch.tensor([[0.6, 0.8]])                 # ||g|| = 1
    wd, eta, lr = 0.1, 1e-3, 2.0
    ratio = LARS.trust_ratio(weight.detach(), weight.grad, wd, eta, eps=0.0)
    assert ratio.item() == pytest.approx(eta * 5 / (1 + wd * 5))
    opt = LARS([weight], lr=lr, momentum=0.9, weight_decay=wd, trust_coefficient=eta, eps=0.0)
    before = weight.detach().clone()
    opt.step()
    local = eta * 5 / (1 + wd * 5)
    expected = before - lr * local * (torch.tensor([[0.6, 0.8]]) + wd * before)
    torch.testing.assert_close(weight.detach(), expected)
    # second step: momentum 0.9 on the previous (already scaled) update
    weight.grad = torch.tensor([[0.6, 0.8]])
    w1 = weight.detach().clone()
    opt.step()
    norm = float(torch.linalg.vector_norm(w1))
    local2 = eta * norm / (1 + wd * norm)
    update = 0.9 * local * (torch.tensor([[0.6, 0.8]]) + wd * before) + local2 * (
        torch.tensor([[0.6, 0.8]]) + wd * w1)
    torch.testing.assert_close(weight.detach(), w1 - lr * update)


def test_lars_excludes_biases_and_norms_and_handles_zero_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 2))
    groups = lars_param_groups(model.named_parameters())
    adapted = {id(p) for p in groups[0]["params"]}
    excluded = {id(p) for p in groups[1]["params"]}
    assert groups[1]["exclude"] is True
    assert adapted == {id(model[0].weight), id(model[2].weight)}
    assert excluded == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                        id(model[2].bias)}
    opt = build_optimizer(OptimizerSpec("lars", lr=0.5, weight_decay=0.1), model.named_parameters())
    assert isinstance(opt, LARS)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    bias_before = model[0].bias.detach().clone()
    opt.step()
    # excluded: plain SGD step, no weight decay, no trust ratio
    torch.testing.assert_close(model[0].bias.detach(), bias_before - 0.5)
    zero = torch.zeros(2, 2)
    assert LARS.trust_ratio(zero, torch.ones(2, 2), 0.1, 1e-3).item() == 1.0
    assert LARS.trust_ratio(torch.ones(2, 2), zero, 0.1, 1e-3).item() == 1.0


def test_lr_schedules() -> None:
    warm = OptimizerSpec("lars", lr=1.0, schedule="warmup_cosine_restarts", warmup_epochs=10,
                         restart_epochs=500)
    assert [lr_factor(warm, e, 300) for e in (1, 2, 10)] == pytest.approx([0.1, 0.2, 1.0])
    assert lr_factor(warm, 11, 300) == pytest.approx(1.0)  # cosine starts at its maximum
    assert lr_factor(warm, 261, 300) == pytest.approx(0.5)  # 250 of 500 epochs into the cycle
    assert lr_factor(warm, 511, 1000) == pytest.approx(1.0)  # warm restart
    step = OptimizerSpec("adam", lr=1.0, schedule="multistep", milestones=(0.6, 0.8))
    assert [lr_factor(step, e, 10) for e in (6, 7, 8, 9)] == pytest.approx([1, 0.1, 0.1, 0.01])
    cos = OptimizerSpec("adamw", lr=1.0, schedule="cosine")
    assert lr_factor(cos, 1, 4) == 1.0 and lr_factor(cos, 3, 4) == pytest.approx(0.5)
    assert lr_factor(OptimizerSpec("adam", lr=1.0), 7, 9) == 1.0
