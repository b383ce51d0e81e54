"""UMSE: set elements from value/mask pairs, image time, skip bottleneck direction."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import torch

from raybench.models import DataSpec, TaskSpec, build_model, get_model

NAMES = ("heart_rate", "gcs=1", "gcs=2", "mask:heart_rate", "mask:gcs")
B, PX = 3, 32
TINY = {"hidden": 16, "nhead": 2}


def model(seed: int = 0, names=NAMES, **extra):
    torch.manual_seed(seed)
    spec = DataSpec(ehr_features=len(names), image_size=PX, feature_names=names, step_hours=2.0)
    return build_model("umse", spec, TaskSpec("t", "binary", 1), **{**TINY, **extra}).eval()


def ehr_rows() -> torch.Tensor:
    """Sample 0: 3 steps; heart rate observed at steps 0 and 2, gcs=2 observed at step 1."""
    ehr = torch.zeros(B, 3, len(NAMES))
    ehr[0, 0] = torch.tensor([0.7, 0, 0, 1, 0])
    ehr[0, 1] = torch.tensor([0.7, 0, 1, 0, 1])  # heart rate imputed (carried), gcs=2 hot
    ehr[0, 2] = torch.tensor([-1.2, 1, 0, 1, 0])  # gcs=1 hot but not observed
    ehr[1, :2] = torch.tensor([0.1, 1, 0, 1, 1])  # 2 valid steps, everything observed
    ehr[2, 0] = torch.tensor([0.3, 0, 0, 0, 0])  # nothing observed
    return ehr


def batch(present=(True, False, True), hours=(5.0, 0.0, 30.0), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor(present)
    return {"ehr": ehr_rows(), "ehr_lengths": torch.tensor([3, 2, 1]),
            "cxr": torch.randn(B, 3, PX, PX, generator=g) * present[:, None, None, None],
            "cxr_present": present, "cxr_hours": torch.tensor(hours) * present}


def test_declares_image_times_and_is_not_searched():
    cls = get_model("umse")
    assert cls.inputs == {"cxr_hours"} and cls.search_space() == {}


def test_set_elements_are_the_observed_values():
    embed = model().ehr_encoder
    observed = embed.observed(ehr_rows(), torch.tensor([3, 2, 1]))  # [B, T, value channels]
    assert observed.shape == (B, 3, 3)
    assert observed[0].tolist() == [[True, False, False], [False, False, True],
                                     [True, False, False]]
    assert observed[1].tolist() == [[True, True, False], [True, True, False],
                                    [False, False, False]]
    assert not observed[2].any()
    tokens, valid = embed(ehr_rows(), torch.tensor([3, 2, 1]), step_hours=2.0, max_elements=500)
    assert tokens.shape == (B, 4, 16) and valid.sum(1).tolist() == [3, 4, 0]
    # the most recent elements are kept when capped
    _, capped = embed(ehr_rows(), torch.tensor([3, 2, 1]), step_hours=2.0, max_elements=2)
    assert capped.sum(1).tolist() == [2, 2, 0]


def test_element_embedding_is_value_plus_time_plus_feature():
    m = model()
    embed = m.ehr_encoder
    one = ehr_rows()[:1, :1]  # heart rate 0.7 at the only step: 1 h before prediction
    tokens, _ = embed(one, torch.tensor([1]), step_hours=2.0, max_elements=500)
    with torch.no_grad():
        expected = (embed.value(torch.tensor([[0.7]])) + m.time_embedding(torch.tensor([[1 / 24]]))
                    + embed.feature.weight[0])
    torch.testing.assert_close(tokens[0, 0], expected[0])


def test_without_feature_names_every_channel_is_an_element():
    m = model(names=("a", "b", "c", "d", "e"))
    tokens, valid = m.ehr_encoder(torch.randn(2, 4, 5), torch.tensor([4, 2]), 1.0, 500)
    assert valid.sum(1).tolist() == [20, 10]


def test_image_reaches_the_ehr_stream_through_the_bottleneck():
    """With the skip the right way round, a sample's image changes its EHR CLS token from the
    second layer on (CareBench's inverted index gives samples with an image the EHR-only
    bottleneck). With one layer (CareBench's default) the exchanged bottleneck is never read:
    the image reaches the output through the averaged CLS read-out only."""
    b = batch()
    other = dict(b, cxr=b["cxr"].clone())
    other["cxr"][0] = torch.randn(3, PX, PX) * 3
    for layers in (1, 2):
        m = model(mbt_layers=layers)
        with torch.no_grad():
            before, after = m(b), m(other)
        ehr_moved = not torch.allclose(before.extras["ehr_logits"][0],
                                       after.extras["ehr_logits"][0])
        assert ehr_moved == (layers == 2)
        assert not torch.allclose(before.logits[0], after.logits[0])
        torch.testing.assert_close(before.logits[1:], after.logits[1:])


def test_image_time_is_used_only_where_there_is_an_image():
    m = model()
    b = batch()
    with torch.no_grad():
        base = m(b).logits
        later = m(dict(b, cxr_hours=torch.tensor([50.0, 7.0, 30.0]))).logits
    assert not torch.allclose(base[0], later[0])  # sample 0's image is older
    torch.testing.assert_close(base[1:], later[1:])  # sample 1 has no image


def test_cli_refuses_a_dataset_without_image_times(prepared_small, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_small, copy)
    index = pd.read_parquet(copy / "samples" / "cxr_index.parquet")
    index.drop(columns=["time"]).to_parquet(copy / "samples" / "cxr_index.parquet")
    result = subprocess.run(
        [sys.executable, "-m", "raybench.cli", "train", "--task", "mortality", "--method",
         "umse", "--data", str(copy), "--set", "epochs=1", "--set", "hidden=16",
         "--set", "umse_patch=8"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "umse needs cxr_hours" in lines[0] and "re-run `raybench preprocess`" in lines[0]
