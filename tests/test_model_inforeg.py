"""InfoReg: the proximal regulation of the dominant encoder, the window k, the buffers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from model_helpers import assert_one_line_error, build_tiny, run_train_cli, tiny_batch

from raybench.models import ModelConfigError, task_loss


def _backward(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    out = model(batch)
    loss = task_loss(out.logits, batch["y"], model.task.kind) + sum(out.aux_losses.values())
    loss.backward()
    return out


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _scores(out, ehr: float, cxr: float):
    out.extras["score_ehr"], out.extras["score_cxr"] = torch.tensor(ehr), torch.tensor(cxr)
    return out


@pytest.mark.parametrize("dominant", ["ehr", "cxr"])
def test_proximal_term_on_the_dominant_encoder_only(dominant: str) -> None:
    model = build_tiny("inforeg", dropout=0.0)
    batch = tiny_batch()
    model.on_epoch_start(1, 10)  # anchors = parameters now; k = 1 (window open)
    with torch.no_grad():  # parameters move during the epoch
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = _backward(model, batch)
    plain = {m: _grads(model._encoder(m)) for m in ("ehr", "cxr")}
    scores = {"ehr": 7.0, "cxr": 5.5} if dominant == "ehr" else {"ehr": 5.5, "cxr": 7.0}
    model.after_backward(_scores(out, **scores), batch)
    beta = model.hparams[f"{dominant}_scale"] * math.exp(math.tanh(1.5))
    assert model.last_betas[dominant] == pytest.approx(beta)
    for m in ("ehr", "cxr"):
        encoder = model._encoder(m)
        for param, anchor, before in zip(encoder.parameters(), model._anchors[m], plain[m],
                                         strict=True):
            if before is None:
                continue
            expected = before + beta * (param.detach() - anchor) if m == dominant else before
            torch.testing.assert_close(param.grad, expected)


def test_grad_scale_mode_is_carebench_scaling() -> None:
    model = build_tiny("inforeg", dropout=0.0, inforeg_mode="grad_scale", ehr_scale=1.0)
    batch = tiny_batch()
    model.on_epoch_start(1, 10)
    out = _backward(model, batch)
    plain = _grads(model.ehr_encoder)
    model.after_backward(_scores(out, 6.0, 2.0), batch)
    factor = 1.0 - min(1.0 * (6.0 - 2.0) / 8.0, 0.9)
    for param, before in zip(model.ehr_encoder.parameters(), plain, strict=True):
        if before is not None:
            torch.testing.assert_close(param.grad, before * factor)


def test_no_regulation_once_the_window_closes() -> None:
    model = build_tiny("inforeg", k_threshold=0.05, history=2)
    for trace in (1.0, 1.0, 1.0):  # flat Fisher traces: k = 0
        model.on_epoch_start(1, 10)
        model._trace_sum = [trace, trace]
        model.on_epoch_end(1)
    model.on_epoch_start(4, 10)
    assert model.window_k.tolist() == [0.0, 0.0]
    batch = tiny_batch()
    out = _backward(model, batch)
    plain = _grads(model.ehr_encoder)
    model.after_backward(_scores(out, 9.0, 1.0), batch)
    assert model.last_betas == {"ehr": 0.0, "cxr": 0.0}
    for param, before in zip(model.ehr_encoder.parameters(), plain, strict=True):
        if before is not None:
            torch.testing.assert_close(param.grad, before)


def test_window_k_is_the_reference_formula() -> None:
    """k = (mean of the last h traces - mean of the h before) / mean of the last h."""
    h = 3
    model = build_tiny("inforeg", history=h)
    assert model.window_value().tolist() == [1.0, 1.0]  # first epoch
    traces = [4.0, 9.0, 7.0, 3.0, 2.5, 8.0]
    for n, trace in enumerate(traces, start=1):
        model.on_epoch_start(n, 10)
        model._trace_sum = [trace, 2 * trace]
        model.on_epoch_end(n)
        padded = [0.0] * h + traces[:n]
        recent, before = padded[-h:], padded[-h - 1:-1]
        expected = (sum(recent) / h - sum(before) / h) / (sum(recent) / h)
        k = model.window_value()
        assert k[0].item() == pytest.approx(expected)
        assert k[1].item() == pytest.approx(expected)  # scale invariant


def test_fisher_trace_accumulates_squared_gradients() -> None:
    model = build_tiny("inforeg", dropout=0.0)
    batch = tiny_batch()
    model.on_epoch_start(1, 10)
    for _ in range(2):
        out = _backward(model, batch)
        model.after_backward(out, batch)  # no scores in extras: no regulation
    expected = sum(m.weight.grad.pow(2).mean().item() for m in model.cxr_encoder.modules()
                   if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
    assert model._trace_sum[1] == pytest.approx(2 * expected, rel=1e-5)
    model.on_epoch_end(1)
    assert model.trace_history[1, -1].item() == pytest.approx(2 * expected, rel=1e-5)


def test_history_survives_best_state_restore() -> None:
    model = build_tiny("inforeg", history=2)
    for epoch, trace in enumerate((5.0, 3.0), start=1):
        model.on_epoch_start(epoch, 10)
        model._trace_sum = [trace, trace / 2]
        model.on_epoch_end(epoch)
    best = copy.deepcopy(model.state_dict())
    k_best = model.window_value().clone()
    model.on_epoch_start(3, 10)
    model._trace_sum = [100.0, 1.0]
    model.on_epoch_end(3)
    assert not torch.equal(model.window_value(), k_best)
    fresh = build_tiny("inforeg", history=2, seed=9)
    fresh.load_state_dict(best)
    assert int(fresh.epochs_recorded) == 2
    torch.testing.assert_close(fresh.trace_history, best["trace_history"])
    torch.testing.assert_close(fresh.window_value(), k_best)


def test_bad_mode() -> None:
    with pytest.raises(ModelConfigError, match="inforeg_mode must be one of proximal, grad_scale"):
        build_tiny("inforeg", inforeg_mode="clip")


def test_bad_mode_on_the_command_line(prepared_small, capsys) -> None:
    result = run_train_cli(capsys, prepared_small, "inforeg", "inforeg_mode=clip")
    assert_one_line_error(result, "inforeg_mode must be one of proximal, grad_scale", "'clip'")
