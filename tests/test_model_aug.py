"""AUG: boosting losses, adaptive classifier assignment, the active-layer buffers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from model_helpers import assert_one_line_error, build_tiny, eval_logits, run_train_cli, tiny_batch

from raybench.models import ModelConfigError, task_loss


def _end_epoch(model, epoch: int, ehr_score: float, cxr_score: float) -> None:
    model.on_epoch_start(epoch, 20)
    model.epoch_scores = {"ehr": ehr_score, "cxr": cxr_score}
    model.on_epoch_end(epoch)


def test_classifier_assignment_goes_to_the_weaker_modality_on_schedule() -> None:
    model = build_tiny("aug", layer_check_interval=5, aug_lambda=1.0, margin=0.01,
                       aug_max_layers=2)
    _end_epoch(model, 1, ehr_score=10.0, cxr_score=5.0)  # EHR stronger: boost the CXR side
    assert (model.active_layers("ehr"), model.active_layers("cxr")) == (0, 1)
    _end_epoch(model, 2, ehr_score=10.0, cxr_score=5.0)  # not a check epoch
    assert model.active_layers("cxr") == 1
    _end_epoch(model, 5, ehr_score=5.0, cxr_score=10.0)  # CXR stronger now
    assert (model.active_layers("ehr"), model.active_layers("cxr")) == (1, 1)
    _end_epoch(model, 10, ehr_score=10.05, cxr_score=10.0)  # within the margin: nothing
    assert (model.active_layers("ehr"), model.active_layers("cxr")) == (1, 1)
    for epoch in (15, 20, 25):  # capped at aug_max_layers
        _end_epoch(model, epoch, ehr_score=10.0, cxr_score=1.0)
    assert model.active_layers("cxr") == 2 and model.last_ratio == 10.0


def test_boosting_loss_matches_the_paper_and_training_uses_no_fused_loss() -> None:
    model = build_tiny("aug", "multilabel", merge_alpha=0.7)
    batch = tiny_batch("multilabel")
    model.active_cxr += 2
    model.train()
    torch.manual_seed(0)
    out = model(batch)
    assert not out.extras["loss_mask"].any()
    assert task_loss(out.logits, batch["y"], "multilabel", out.extras["loss_mask"]) == 0
    model.eval()
    with torch.no_grad():
        feats = {"ehr": model.ehr_encoder(batch["ehr"], batch["ehr_lengths"]),
                 "cxr": model.cxr_encoder(batch["cxr"])}
        out = model(batch)
        y = batch["y"]
        z_ehr = model.fc_out(model.embedding["ehr"](feats["ehr"]))
        torch.testing.assert_close(out.aux_losses["aug_ehr"],
                                   0.7 * F.binary_cross_entropy_with_logits(z_ehr, y))
        base = model.fc_out(model.embedding["cxr"](feats["cxr"]))
        h1, h2 = (model.fc_out(F.relu(layer(feats["cxr"]))) for layer in model.boost["cxr"][:2])
        z, prev = base + h1 + h2, base + h1
        expected = (F.binary_cross_entropy_with_logits(z, y)
                    + F.binary_cross_entropy_with_logits(prev, y)
                    + F.binary_cross_entropy_with_logits(h2, y)
                    - 0.5 * F.binary_cross_entropy_with_logits(h2, y * torch.sigmoid(prev)))
        torch.testing.assert_close(out.aux_losses["aug_cxr"], 0.3 * expected)
        torch.testing.assert_close(out.logits, 0.7 * z_ehr + 0.3 * z)


def test_multiclass_residual_term_is_the_soft_target_cross_entropy() -> None:
    model = build_tiny("aug", "multiclass", merge_alpha=0.5)
    model.active_ehr += 1
    batch = tiny_batch("multiclass")
    model.eval()
    with torch.no_grad():
        feat = model.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        base = model.fc_out(model.embedding["ehr"](feat))
        h = model.fc_out(F.relu(model.boost["ehr"][0](feat)))
        y = batch["y"]
        soft = F.one_hot(y, 4) * torch.softmax(base, -1)
        expected = (F.cross_entropy(base + h, y) + F.cross_entropy(base, y)
                    + F.cross_entropy(h, y) + 0.5 * (soft * F.log_softmax(h, -1)).sum(-1).mean())
        torch.testing.assert_close(model(batch).aux_losses["aug_ehr"], 0.5 * expected)


def test_only_active_boosting_layers_get_gradients() -> None:
    model = build_tiny("aug")
    model.active_cxr += 1
    model.train()
    out = model(tiny_batch())
    sum(out.aux_losses.values()).backward()
    assert model.boost["cxr"][0].weight.grad is not None
    assert model.boost["cxr"][1].weight.grad is None
    assert model.boost["ehr"][0].weight.grad is None


def test_active_count_survives_best_state_restore() -> None:
    """As the trainer does: keep the best epoch's state_dict copy, reload it at the end."""
    model = build_tiny("aug", aug_max_layers=3, layer_check_interval=1)
    batch = tiny_batch()
    _end_epoch(model, 1, ehr_score=9.0, cxr_score=3.0)
    best_state = copy.deepcopy(model.state_dict())
    best_logits = eval_logits(model, batch)
    _end_epoch(model, 2, ehr_score=9.0, cxr_score=3.0)
    assert model.active_layers("cxr") == 2
    assert not torch.allclose(eval_logits(model, batch), best_logits)
    model.load_state_dict(best_state)
    assert model.active_layers("cxr") == 1
    torch.testing.assert_close(eval_logits(model, batch), best_logits)
    fresh = build_tiny("aug", seed=5, aug_max_layers=3)
    fresh.load_state_dict(best_state)
    torch.testing.assert_close(eval_logits(fresh, batch), best_logits)


def test_bad_max_layers() -> None:
    with pytest.raises(ModelConfigError, match="aug_max_layers must be >= 1, got 0"):
        build_tiny("aug", aug_max_layers=0)


def test_bad_max_layers_on_the_command_line(prepared_small, capsys) -> None:
    result = run_train_cli(capsys, prepared_small, "aug", "aug_max_layers=0")
    assert_one_line_error(result, "aug_max_layers must be >= 1")
