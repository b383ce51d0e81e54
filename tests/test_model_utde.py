"""UTDE: mTAND over observed steps, the gate, image times, refusal without image times."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
import torch
from model_helpers import assert_one_line_error, build_tiny, eval_logits, run_train_cli, tiny_batch

from raybench import trainer as T
from raybench.data import LoaderConfig, load_prepared
from raybench.errors import RaybenchError
from raybench.models import DataSpec

NAMES = ("hr", "gcs=1", "gcs=2", "mask:hr", "mask:gcs", "sex", "age")
DATA = DataSpec(ehr_features=7, image_size=32, feature_names=NAMES, step_hours=2.0)


def _naive_mtand(emb, times, values, mask):
    """Per channel, per head: softmax over the steps where the channel was observed."""
    b, t, c = values.shape
    q = emb.query(emb.time(times)).view(b, t, emb.heads, emb.d_head)
    k = emb.key(emb.time(times)).view(b, t, emb.heads, emb.d_head)
    out = torch.zeros(b, t, emb.heads, c)
    for i in range(b):
        for h in range(emb.heads):
            scores = q[i, :, h] @ k[i, :, h].T / math.sqrt(emb.d_head)  # [T, T]
            for ch in range(c):
                seen = mask[i, :, ch] > 0
                if seen.any():
                    weights = torch.softmax(scores[:, seen], dim=1)
                    out[i, :, h, ch] = weights @ values[i, seen, ch]
    return emb.mtand_out(out.reshape(b, t, -1))


def test_mtand_is_a_softmax_over_each_channels_observed_steps() -> None:
    model = build_tiny("utde", data=DATA)
    emb = model.ehr_encoder
    assert emb.value_idx.tolist() == [0, 1, 2, 5, 6] and emb.mask_idx.tolist() == [3, 4, 4, -1, -1]
    batch = tiny_batch(features=7, steps=6)
    ehr = batch["ehr"].clone()
    ehr[..., 3:5] = (torch.rand(4, 6, 2) > 0.5).float()  # observation masks
    valid = torch.arange(6)[None, :] < batch["ehr_lengths"][:, None]
    values, mask = emb.observations(ehr, valid)
    assert torch.equal(mask[..., :5], mask[..., 5:])  # masks are values too (reference code)
    assert torch.all(mask[..., 3:5][valid] == 1) and torch.all(mask[~valid] == 0)
    times = torch.rand(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(emb.mtand(times, values, mask),
                                   _naive_mtand(emb, times, values, mask))


def test_gate_mixes_the_two_embeddings() -> None:
    model = build_tiny("utde", data=DATA)
    emb = model.ehr_encoder.eval()
    batch = tiny_batch(features=7)
    times = torch.rand(4, 6)
    valid = torch.arange(6)[None, :] < batch["ehr_lengths"][:, None]
    with torch.no_grad():
        values, mask = emb.observations(batch["ehr"], valid)
        irregular = emb.mtand(times, values, mask)
        regular = emb.imputation(batch["ehr"].transpose(1, 2)).transpose(1, 2)
        for bias, expected in ((60.0, irregular), (-60.0, regular)):
            emb.gate[-2].bias.fill_(bias)
            emb.gate[-2].weight.zero_()
            torch.testing.assert_close(emb(batch["ehr"], batch["ehr_lengths"], times), expected)


def test_image_time_changes_the_prediction() -> None:
    model = build_tiny("utde", data=DATA)
    batch = tiny_batch(features=7)
    later = dict(batch, cxr_hours=batch["cxr_hours"] + 30.0)
    assert not torch.allclose(eval_logits(model, batch), eval_logits(model, later))


def test_a_batch_without_image_times_is_refused() -> None:
    model = build_tiny("utde", data=DATA)
    batch = tiny_batch(features=7)
    del batch["cxr_hours"]
    with pytest.raises(RaybenchError, match="utde needs the batch key cxr_hours.*re-run"):
        model(batch)


def test_a_dataset_without_image_times_is_refused(prepared_small) -> None:
    data = load_prepared(prepared_small, "mortality")
    data.cxr_hours = None
    cfg = T.TrainConfig(epochs=1, loader=LoaderConfig(batch_size=16, max_len=16))
    with pytest.raises(RaybenchError, match="utde needs cxr_hours.*re-run `raybench preprocess`"):
        T.train_and_evaluate(data, "utde", {"hidden": 16, "cxr_backbone": "resnet_tiny",
                                            "pretrained": False, "nhead": 2}, cfg)


def test_no_image_times_on_the_command_line(prepared_small, tmp_path, capsys) -> None:
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_small, copy)
    index = pd.read_parquet(copy / "samples" / "cxr_index.parquet")
    index.drop(columns=["time"]).to_parquet(copy / "samples" / "cxr_index.parquet")
    result = run_train_cli(capsys, copy, "utde", task="mortality")
    assert_one_line_error(result, "utde needs cxr_hours", "re-run `raybench preprocess`")
