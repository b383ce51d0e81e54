"""SMIL: k-means priors from stage "cxr", reconstruction, the meta-learning step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import assert_one_line_error, build_tiny, eval_logits, run_train_cli, tiny_batch
from sklearn.cluster import KMeans

from raybench.errors import RaybenchError
from raybench.models import task_loss


def _cxr_epoch(model, batches) -> None:
    model.set_stage("cxr")
    model.train()
    model.on_epoch_start(1, 1)
    for batch in batches:
        model(batch)
    model.on_epoch_end(1)


def test_centres_are_kmeans_of_the_cxr_stage_features_and_survive_restore() -> None:
    model = build_tiny("smil", n_clusters=3)
    batches = [tiny_batch(seed=s, present=(True, True, False, True)) for s in range(3)]
    _cxr_epoch(model, batches)
    model.train()
    with torch.no_grad():  # the features that epoch saw (training mode, 9 present images)
        torch.manual_seed(0)
        feats = torch.cat([model.cxr_encoder(b["cxr"][b["cxr_present"]]) for b in batches])
    expected = KMeans(n_clusters=3, n_init=10, random_state=0).fit(feats.numpy())
    got = model.centres.numpy()
    order = [int(np.argmin(((expected.cluster_centers_ - c) ** 2).sum(1))) for c in got]
    np.testing.assert_allclose(got, expected.cluster_centers_[order], rtol=1e-4, atol=1e-5)
    state = copy.deepcopy(model.state_dict())
    fresh = build_tiny("smil", n_clusters=3, seed=4)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.centres, model.centres)


def test_no_training_image_is_refused() -> None:
    model = build_tiny("smil", n_clusters=3)
    with pytest.raises(RaybenchError, match="smil needs CXR images in the training split"):
        _cxr_epoch(model, [tiny_batch(present=(False, False, False, False))])


def test_reconstruction_is_the_weighted_mean_of_the_centres() -> None:
    model = build_tiny("smil", n_clusters=4)
    with torch.no_grad():
        model.centres.copy_(torch.randn(4, 16))
    batch = tiny_batch(present=(False, False, True, True))
    model.eval()
    with torch.no_grad():
        ehr = model.ehr_encoder(batch["ehr"], batch["ehr_lengths"])
        w = F.softplus(model.recon_net(ehr))
        recon = (w[:, :, None] * model.centres[None]).sum(1) / w.sum(1, keepdim=True)
        x = torch.cat([ehr, recon], 1) + F.softplus(model.perturb_fc1(ehr))
        h = F.relu(model.fc1(x)) + F.softplus(model.perturb_fc2(x))
        expected = model.fc2(h)
    torch.testing.assert_close(eval_logits(model, batch)[:2], expected[:2])


def _meta_losses(model, batch, seed=0):
    model.set_stage("fusion")
    model.train()
    torch.manual_seed(seed)
    return model(batch)


def test_meta_train_loss_never_sees_the_images() -> None:
    """Meta-training drops every image on purpose; only the meta-val terms use them."""
    model = build_tiny("smil", dropout=0.0)
    batch = tiny_batch(present=(True,) * 8)
    other = dict(batch, cxr=torch.randn_like(batch["cxr"]))
    a, b = _meta_losses(model, batch).aux_losses, _meta_losses(model, other).aux_losses
    torch.testing.assert_close(a["meta_train"], b["meta_train"])
    assert not torch.allclose(a["meta_val"] + a["prior_mean"], b["meta_val"] + b["prior_mean"])


def test_inner_loop_adapts_the_parameters_seen_by_the_outer_loss() -> None:
    """CareBench's functional forward ignored the adapted parameters; here they matter."""
    batch = tiny_batch("multilabel", present=(True,) * 8)
    losses = {}
    for lr_inner in (0.0, 0.5):
        model = build_tiny("smil", "multilabel", dropout=0.0, lr_inner=lr_inner)
        losses[lr_inner] = _meta_losses(model, batch).aux_losses
    torch.testing.assert_close(losses[0.0]["meta_train"], losses[0.5]["meta_train"])
    assert not torch.allclose(losses[0.0]["meta_val"], losses[0.5]["meta_val"])
    model = build_tiny("smil", "multilabel", dropout=0.0, lr_inner=0.5)
    out = _meta_losses(model, batch)
    assert not out.extras["loss_mask"].any()
    total = task_loss(out.logits, batch["y"], "multilabel", out.extras["loss_mask"])
    (total + sum(out.aux_losses.values())).backward()
    assert model.ehr_encoder.embed.weight.grad is not None
    assert all(p.grad is None for p in model.cxr_encoder.parameters())


def test_mc_size_is_the_number_of_noise_draws(monkeypatch) -> None:
    model = build_tiny("smil", mc_size=7, inner_loop=2)
    seen = []
    original = model._heads

    def spy(run, ehr, cxr, noise):
        seen.append((noise, tuple(ehr.shape)))
        return original(run, ehr, cxr, noise)

    monkeypatch.setattr(model, "_heads", spy)
    _meta_losses(model, tiny_batch(present=(True,) * 5))
    sampled = [shape for noise, shape in seen if noise is True]
    assert len(sampled) == 2 and all(shape[0] == 7 and len(shape) == 3 for shape in sampled)


def test_image_branch_is_frozen_after_the_cxr_stage() -> None:
    model = build_tiny("smil")
    assert model.pretrain_stages() == ["cxr", "paired"]
    model.set_stage("paired")
    model.train()
    assert not any(p.requires_grad for p in model.cxr_encoder.parameters())
    assert not model.cxr_encoder.training and model.fc1.training
    out = model(tiny_batch())
    assert torch.equal(out.extras["loss_mask"], tiny_batch()["cxr_present"])
    model.set_stage("cxr")
    assert all(p.requires_grad for p in model.cxr_encoder.parameters())


def test_no_training_image_on_the_command_line(prepared_small, capsys) -> None:
    result = run_train_cli(capsys, prepared_small, "smil", "cxr_missing_ratio=1.0",
                           "cxr_missing_splits=[train]")
    assert_one_line_error(result, "smil needs CXR images in the training split")
