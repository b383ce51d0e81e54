"""ShaSpec: where each auxiliary loss acts, and the shared-feature substitution."""

from __future__ import annotations

import torch

from raybench.models import DataSpec, TaskSpec, build_model, get_model

B, T, NF, PX = 4, 5, 7, 32
TINY = {"hidden": 16, "nhead": 2, "max_len": 16, "cxr_backbone": "resnet_tiny",
        "pretrained": False}


def model(seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_model("shaspec", DataSpec(ehr_features=NF, image_size=PX),
                       TaskSpec("t", "binary", 1), **{**TINY, **extra})


def batch(present=(True, False, True, False), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor(present)
    return {"ehr": torch.randn(B, T, NF, generator=g), "ehr_lengths": torch.tensor([5, 3, 1, 4]),
            "cxr": torch.randn(B, 3, PX, PX, generator=g) * present[:, None, None, None],
            "cxr_present": present, "y": torch.randint(0, 2, (B,), generator=g).float()}


def grads(m, loss) -> dict[str, bool]:
    m.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    groups = ("shared.", "ehr_encoder.", "cxr_encoder.", "domain_classifier.", "compose.",
              "classifier.")
    return {g: any(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in m.named_parameters() if n.startswith(g)) for g in groups}


def test_search_space_is_carebench():
    assert get_model("shaspec").search_space() == {
        "alpha": {"uniform": [0.01, 0.1]}, "beta": {"uniform": [0.005, 0.2]}}


def test_domain_classifier_reads_the_specific_features():
    m = model().train()
    domain = m(batch()).aux_losses["domain"]
    reached = grads(m, domain)
    assert reached["domain_classifier."] and reached["ehr_encoder."] and reached["cxr_encoder."]
    assert not reached["shared."] and not reached["compose."] and not reached["classifier."]


def test_alignment_acts_on_shared_features_of_pairs_only():
    m = model().train()
    alignment = m(batch()).aux_losses["alignment"]
    reached = grads(m, alignment)
    assert reached["shared."]
    assert not reached["ehr_encoder."] and not reached["cxr_encoder."]
    assert not reached["domain_classifier."]
    none = model().train()(batch(present=(False,) * B)).aux_losses
    assert float(none["alignment"].detach()) == 0.0
    assert float(none["domain"].detach()) > 0  # EHR specific features are still classified


def test_missing_image_is_replaced_by_the_ehr_shared_feature():
    m = model().eval()
    b = batch()
    present = b["cxr_present"]
    with torch.no_grad():
        ehr_specific = m.ehr_encoder(b["ehr"], b["ehr_lengths"])
        ehr_shared = m.shared.ehr(b["ehr"], b["ehr_lengths"])
        ehr_fused = ehr_shared + m.compose(torch.cat([ehr_shared, ehr_specific], 1))
        expected = m.classifier(torch.cat([ehr_fused, ehr_shared], 1))
        got = m(b).logits
    torch.testing.assert_close(got[~present], expected[~present])
    assert not torch.allclose(got[present], expected[present])


def test_loss_weights():
    b = batch()
    with torch.no_grad():
        base = model().eval()(b).aux_losses
        scaled = model(alpha=0.05, beta=0.2).eval()(b).aux_losses
    torch.testing.assert_close(scaled["alignment"], base["alignment"] * 0.5)
    torch.testing.assert_close(scaled["domain"], base["domain"] * 10)
