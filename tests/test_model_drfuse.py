"""DrFuse: logit-average shared fusion, masked disease-wise attention, losses on pairs."""

from __future__ import annotations

import torch

from raybench.models import (
    DataSpec,
    TaskSpec,
    build_model,
    get_model,
    mean_probability_logits,
)
from raybench.models.drfuse import LAMBDAS, shared_jsd

B, T, NF, PX, K = 4, 5, 7, 32, 3
TINY = {"hidden": 16, "nhead": 2, "max_len": 16, "cxr_backbone": "resnet_tiny",
        "pretrained": False}
PAIRED_ONLY = ("pred_cxr", "disentangle_shared", "disentangle_cxr", "attn_rank")


def model(kind: str = "multilabel", n: int = K, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_model("drfuse", DataSpec(ehr_features=NF, image_size=PX),
                       TaskSpec("t", kind, n), **{**TINY, **extra})


def batch(present=(True, False, True, False), seed: int = 0, kind: str = "multilabel",
          n: int = K) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor(present)
    y = (torch.randint(0, n, (B,), generator=g) if kind == "multiclass"
         else torch.randint(0, 2, (B, n), generator=g).float())
    return {"ehr": torch.randn(B, T, NF, generator=g), "ehr_lengths": torch.tensor([5, 3, 1, 4]),
            "cxr": torch.randn(B, 3, PX, PX, generator=g) * present[:, None, None, None],
            "cxr_present": present, "y": y}


def test_search_space_is_carebench():
    space = get_model("drfuse").search_space()
    assert space == {key: {"uniform": [0.01, 2.0]} for key in LAMBDAS}
    assert len(space) == 7


def test_shared_jsd():
    a = torch.randn(6, 8)
    torch.testing.assert_close(shared_jsd(a, a), torch.zeros(6))
    b = torch.randn(6, 8)
    assert (shared_jsd(a, b) > 0).all()
    torch.testing.assert_close(shared_jsd(a, b), shared_jsd(b, a))
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    m = (p + q) / 2
    reference = 0.5 * (p * (p / m).log() + q * (q / m).log()).sum(-1)
    torch.testing.assert_close(shared_jsd(a, b), reference)


def test_attention_ignores_the_missing_image():
    m = model().eval()
    with torch.no_grad():
        out = m(batch())
    attention = out.extras["attention"]  # [B, K, 3]: ehr, shared, cxr
    assert attention.shape == (B, K, 3)
    torch.testing.assert_close(attention.sum(-1), torch.ones(B, K))
    assert torch.all(attention[[1, 3], :, 2] == 0)
    assert torch.all(attention[[0, 2], :, 2] > 0)


def test_shared_fusion_is_the_logit_of_the_mean_probability():
    m = model().eval()
    b = batch()
    present = b["cxr_present"]
    with torch.no_grad():
        ehr_shared = m.shared_project(m._ehr_features(b)[0])
        cxr_shared = m.shared_project(m.cxr_encoder(b["cxr"]))
        expected = mean_probability_logits([ehr_shared, cxr_shared], "binary")
        shared_logits = m(b).extras["shared_logits"]
    torch.testing.assert_close(shared_logits[present], m.shared_head(expected)[present])
    torch.testing.assert_close(shared_logits[~present], m.shared_head(ehr_shared)[~present])


def test_paired_losses_vanish_without_images_and_ignore_unpaired_labels():
    m = model().train()
    torch.manual_seed(1)
    none = m(batch(present=(False,) * B)).aux_losses
    for key in PAIRED_ONLY:
        assert float(none[key].detach()) == 0.0, key
    assert float(none["disentangle_ehr"].detach()) > 0
    assert set(none) == {"pred_shared", "pred_ehr", *PAIRED_ONLY, "disentangle_ehr"}
    m.eval()
    b = batch()
    flipped = dict(b, y=b["y"].clone())
    flipped["y"][[1, 3]] = 1 - flipped["y"][[1, 3]]  # labels of the samples without an image
    with torch.no_grad():
        base, other = m(b).aux_losses, m(flipped).aux_losses
    for key in PAIRED_ONLY:
        torch.testing.assert_close(base[key], other[key])
    assert not torch.allclose(base["pred_ehr"], other["pred_ehr"])


def test_lambdas_scale_their_losses_and_multiclass_ranking_works():
    b = batch()
    with torch.no_grad():
        ones = model().eval()(b).aux_losses
        doubled = model(**dict.fromkeys(LAMBDAS, 2.0)).eval()(b).aux_losses
    for key in ones:
        torch.testing.assert_close(doubled[key], 2 * ones[key])
    m = model("multiclass", 4).train()
    out = m(batch(kind="multiclass", n=4))
    assert out.logits.shape == (B, 4) and torch.isfinite(out.aux_losses["attn_rank"])
    (out.logits.sum() + sum(out.aux_losses.values())).backward()
    assert m.attn_proj.weight.grad.abs().sum() > 0
