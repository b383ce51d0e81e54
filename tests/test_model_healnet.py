"""HEALNet: patch tokens, Fourier positions, per-sample CXR gating, weight tying, bad input."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from raybench.models import DataSpec, ModelConfigError, TaskSpec, build_model, get_model
from raybench.models.healnet import fourier_encode

B, T, NF, PX = 4, 6, 7, 32
TINY = {"hidden": 16, "nhead": 2, "max_len": 16, "latent_channels": 8}


def model(seed: int = 0, px: int = PX, **extra):
    torch.manual_seed(seed)
    return build_model("healnet", DataSpec(ehr_features=NF, image_size=px),
                       TaskSpec("t", "multilabel", 3), **{**TINY, **extra}).eval()


def batch(present=(True, False, True, True), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor(present)
    return {"ehr": torch.randn(B, T, NF, generator=g), "ehr_lengths": torch.tensor([6, 3, 1, 4]),
            "cxr": torch.randn(B, 3, PX, PX, generator=g) * present[:, None, None, None],
            "cxr_present": present}


def logits(m, b):
    with torch.no_grad():
        return m(b).logits


def test_search_space_is_carebench():
    assert get_model("healnet").search_space() == {
        "depth": {"choice": [1, 2, 3]}, "num_freq_bands": {"choice": [1, 2, 4]},
        "max_freq": {"choice": [5.0, 10.0]}}
    assert get_model("healnet").default_hparams()["healnet_patch"] == 16


def test_fourier_encoding():
    pos = torch.tensor([0.0, 0.5, 1.0])
    enc = fourier_encode(pos, max_freq=10.0, bands=2)
    assert enc.shape == (3, 5)  # sin x2, cos x2, pos
    scales = torch.tensor([1.0, 5.0])  # linspace(1, max_freq / 2, bands)
    expected = torch.cat([torch.sin(pos[:, None] * scales * math.pi),
                          torch.cos(pos[:, None] * scales * math.pi), pos[:, None]], dim=1)
    torch.testing.assert_close(enc, expected)


def test_patches_must_divide_the_crop():
    assert model(px=32).cxr_encoder.n_tokens == 4  # (32 / 16) ** 2 patches
    with pytest.raises(ModelConfigError, match=r"healnet_patch 16 does not divide .* 56 px.*8"):
        model(px=56)
    assert model(px=56, healnet_patch=8).cxr_encoder.n_tokens == 49


def test_image_updates_only_the_samples_that_have_one():
    m = model()
    b = batch()
    other = dict(b, cxr=b["cxr"].clone())
    other["cxr"][0] = torch.randn(3, PX, PX)  # sample 0 has an image: its output moves
    before, after = logits(m, b), logits(m, other)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:])
    # a sample without an image gets the same output whether the others have images or not
    no_images = batch(present=(False,) * B)
    torch.testing.assert_close(logits(m, no_images)[1], before[1])


def test_weight_tying_shares_layers_two_to_depth():
    tied, untied = model(depth=3), model(depth=3, weight_tie_layers=False)
    assert len(tied.layers) == 2 and tied.layer_order == [0, 1, 1]
    assert len(untied.layers) == 3 and untied.layer_order == [0, 1, 2]
    one = model(depth=1)
    assert len(one.layers) == 1
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(tied) == count(model(depth=2)) < count(untied)
    assert logits(tied, batch()).shape == (B, 3)


def test_bad_settings_are_refused():
    with pytest.raises(ModelConfigError, match="cross_heads"):
        model(cross_heads=3)
    with pytest.raises(ModelConfigError, match="depth"):
        model(depth=0)


def test_cli_refuses_a_patch_that_does_not_divide_the_crop(prepared_small):
    result = subprocess.run(
        [sys.executable, "-m", "raybench.cli", "train", "--task", "mortality", "--method",
         "healnet", "--data", str(prepared_small), "--set", "epochs=1", "--set", "hidden=16"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "healnet_patch 16 does not divide the image crop of 56 px" in lines[0]
