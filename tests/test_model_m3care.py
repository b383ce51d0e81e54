"""M3Care: imputation of a missing image from the neighbours that have one."""

from __future__ import annotations

import pytest
import torch

from raybench.models import DataSpec, TaskSpec, build_model, get_model
from raybench.models.m3care import MaskedBatchNorm1d, gaussian_kernel

B, T, NF, PX = 6, 5, 7, 32
TINY = {"hidden": 16, "nhead": 2, "max_len": 16, "cxr_backbone": "resnet_tiny",
        "pretrained": False}


def model(seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_model("m3care", DataSpec(ehr_features=NF, image_size=PX),
                       TaskSpec("t", "binary", 1), **{**TINY, **extra}).eval()


def batch(present, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor(present)
    return {"ehr": torch.randn(len(present), T, NF, generator=g),
            "ehr_lengths": torch.full((len(present),), T),
            "cxr": torch.randn(len(present), 3, PX, PX, generator=g) * present[:, None, None, None],
            "cxr_present": present,
            "y": torch.randint(0, 2, (len(present),), generator=g).float()}


def outputs(m, b):
    with torch.no_grad():
        return m(b)


def test_declared_batch_dependent_and_search_space():
    cls = get_model("m3care")
    assert cls.batch_dependent and cls.handles_missing_cxr
    assert cls.search_space() == {"stab_reg_lambda": {"uniform": [0.001, 2.0]}}


def test_missing_image_is_imputed_from_neighbours_with_an_image():
    m = model()
    m.threshold.data.fill_(-20.0)  # keep every pair in the similarity graph
    b = batch([False, True, True, True, False, True])
    before = outputs(m, b)
    changed = dict(b, cxr=b["cxr"].clone())
    changed["cxr"][1] = torch.randn(3, PX, PX) * 3.0  # a neighbour's image
    after = outputs(m, changed)
    for absent in (0, 4):  # their imputed CXR feature and their prediction move
        assert not torch.allclose(before.extras["cxr_feature"][absent],
                                  after.extras["cxr_feature"][absent])
        assert not torch.allclose(before.logits[absent], after.logits[absent])


def test_absent_images_never_feed_the_imputation():
    """Only present_j columns aggregate: an absent sample's pixels change nothing, and with no
    neighbour having an image the imputed features ignore the EHR of the others."""
    m = model()
    m.threshold.data.fill_(-20.0)
    b = batch([False, True, False, True, False, False])
    garbage = dict(b, cxr=b["cxr"].clone())
    garbage["cxr"][[0, 2, 4, 5]] = torch.randn(4, 3, PX, PX) * 50.0
    torch.testing.assert_close(outputs(m, b).logits, outputs(m, garbage).logits)
    nobody = batch([False] * B)
    feats = outputs(m, nobody).extras["cxr_feature"]
    other = dict(nobody, ehr=torch.randn(B, T, NF))
    torch.testing.assert_close(feats, outputs(m, other).extras["cxr_feature"])
    assert torch.allclose(feats, feats[:1].expand_as(feats))  # an empty row: one constant


def test_stability_loss_is_the_norm_gap_and_trains_the_projection():
    m = model().train()
    out = m(batch([True, False, True, True, False, True]))
    loss = out.aux_losses["stability"]
    assert loss.dim() == 0 and loss >= 0
    loss.backward()
    assert m.similarity_proj["ehr"][0].weight.grad.abs().sum() > 0
    zero = model(stab_reg_lambda=0.0)(batch([True] * B)).aux_losses["stability"]
    assert float(zero.detach()) == 0.0


def test_masked_batch_norm_uses_selected_rows_only():
    norm = MaskedBatchNorm1d(3).train()
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [100.0, -100.0, 7.0]])
    rows = torch.tensor([True, True, False])
    out = norm(x, rows)
    assert torch.equal(out[2], torch.zeros(3))
    torch.testing.assert_close(out[:2], torch.nn.functional.batch_norm(
        x[:2], None, None, training=True, eps=norm.eps))
    torch.testing.assert_close(norm.running_mean, 0.1 * x[:2].mean(0))
    single = MaskedBatchNorm1d(3).train()
    assert torch.equal(single(x, torch.tensor([False, False, True]))[2], torch.zeros(3))
    assert torch.equal(single.running_var, torch.ones(3))  # undefined variance not recorded


def test_gaussian_kernel_properties():
    x = torch.randn(5, 4)
    pairs = torch.ones(5, 5, dtype=torch.bool)
    k = gaussian_kernel(x, pairs)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(torch.diagonal(k), torch.ones(5))
    assert (k > 0).all() and (k <= 1).all()
    # the bandwidth only looks at the marked pairs: an outlier outside them changes nothing
    far = torch.cat([x[:4], x[4:] + 1e3])
    inner = pairs.clone()
    inner[4, :] = inner[:, 4] = False
    torch.testing.assert_close(gaussian_kernel(x, inner)[:4, :4],
                               gaussian_kernel(far, inner)[:4, :4])


@pytest.mark.parametrize("kind,n", [("multilabel", 5), ("multiclass", 4)])
def test_best_state_restore_keeps_batch_norm_statistics(kind, n):
    torch.manual_seed(0)
    m = build_model("m3care", DataSpec(ehr_features=NF, image_size=PX), TaskSpec("t", kind, n),
                    **TINY).train()
    m(batch([True, False, True, True, False, True]))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    assert not torch.equal(state["norm_raw.cxr.running_mean"], torch.zeros(16))
    fresh = build_model("m3care", DataSpec(ehr_features=NF, image_size=PX),
                        TaskSpec("t", kind, n), **TINY)
    fresh.load_state_dict(state)
    fresh.eval()
    m.eval()
    b = batch([True, False, True, True, False, True], seed=3)
    torch.testing.assert_close(fresh(b).logits, m(b).logits)
