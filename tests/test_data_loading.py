"""Prepared-data loading and batching."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from raybench.data import (
    LoaderConfig,
    drop_images,
    iterate_batches,
    load_prepared,
    make_batch,
    require_inputs,
)
from raybench.errors import RaybenchError


@pytest.fixture(scope="module")
def decompensation(prepared_small):
    return load_prepared(prepared_small, "decompensation")


def test_hourly_samples_are_windows_of_their_stay(decompensation, prepared_small):
    data = decompensation
    features = pd.read_parquet(prepared_small / "ehr" / "features_medmod")
    labels = pd.read_parquet(prepared_small / "labels" / "decompensation.parquet")
    late = int(np.argmax(labels["ehr_hours"].to_numpy()))  # the planted stay past max_hours
    stay = data.stay_id[late]
    rows = features[features.stay_id == stay].drop(columns=["stay_id", "step"]).to_numpy()
    same_stay = np.r_[np.flatnonzero(data.stay_id == stay)[:3], late]
    batch = make_batch(data, same_stay, LoaderConfig(max_len=1000), train=False)
    for i, sample in enumerate(same_stay):
        k, first = int(data.n_steps[sample]), int(labels["first_step"].iloc[sample])
        assert batch["ehr_lengths"][i] == k
        assert np.allclose(batch["ehr"][i, :k].numpy(), rows[first:first + k])
        assert (batch["ehr"][i, k:] == 0).all()  # right padding
    # Past max_hours a sample carries the last 336 bins before its hour, not the first ones.
    assert labels["ehr_hours"].iloc[late] > 336
    assert data.n_steps[late] == 336 and labels["first_step"].iloc[late] > 0
    assert labels["first_step"].iloc[late] + 336 == int(labels["ehr_hours"].iloc[late])
    # The matrix holds each stay's series once (+ one zero padding row), although the
    # hourly samples together cover far more steps: samples are windows, not copies.
    assert len(data.ehr) == len(features) + 1
    assert data.n_steps.sum() > 5 * len(features)


def test_tasks_loaded_together_share_one_copy(prepared_small):
    from raybench.data import load_shared

    shared = load_shared(prepared_small)
    mortality = load_prepared(prepared_small, "mortality", shared=shared)
    radiology = load_prepared(prepared_small, "radiology", shared=shared)
    assert mortality.ehr is radiology.ehr and mortality.images is radiology.images


def test_max_len_keeps_the_most_recent_steps(decompensation):
    data = decompensation
    sample = int(np.argmax(data.n_steps))
    full = make_batch(data, np.array([sample]), LoaderConfig(max_len=10_000), train=False)
    short = make_batch(data, np.array([sample]), LoaderConfig(max_len=5), train=False)
    assert torch.equal(short["ehr"][0], full["ehr"][0, -5:])


def test_batch_follows_the_model_contract(decompensation):
    data = decompensation
    idx = np.arange(8)
    batch = make_batch(data, idx, LoaderConfig(), train=True,
                       gen=torch.Generator().manual_seed(0))
    crop = data.image_size * 7 // 8
    assert batch["cxr"].shape == (8, 3, crop, crop) and batch["cxr"].dtype == torch.float32
    assert batch["cxr_present"].tolist() == (data.image_row[idx] >= 0).tolist()
    assert (batch["cxr"][~batch["cxr_present"]] == 0).all()
    assert batch["y"].shape == (8, 1)


def test_augmentation_is_seeded_and_off_for_evaluation(decompensation):
    data = decompensation
    idx = np.flatnonzero(data.image_row >= 0)[:4]
    cfg = LoaderConfig()

    def batch(train, seed):
        return make_batch(data, idx, cfg, train=train, gen=torch.Generator().manual_seed(seed))

    assert torch.equal(batch(True, 1)["cxr"], batch(True, 1)["cxr"])
    assert not torch.equal(batch(True, 1)["cxr"], batch(True, 2)["cxr"])
    assert torch.equal(batch(False, 1)["cxr"], batch(False, 2)["cxr"])


def test_drop_images_removes_whole_stays_in_chosen_splits_only(decompensation):
    data = decompensation
    rows = drop_images(data, 0.5, ("train",), seed=3)
    train, test = data.indices("train"), data.indices("test")
    assert (rows[test] == data.image_row[test]).all()
    had = np.unique(data.stay_id[train][data.image_row[train] >= 0])
    kept = np.unique(data.stay_id[train][rows[train] >= 0])
    assert len(kept) == len(had) - round(0.5 * len(had))
    for stay in kept:  # a kept stay keeps its image at every hour
        assert (rows[data.stay_id == stay] == data.image_row[data.stay_id == stay]).all()
    assert (drop_images(data, 0.5, ("train",), seed=3) == rows).all()


def test_unknown_imputation_and_missing_dataset_are_clear(prepared_small, tmp_path):
    with pytest.raises(RaybenchError, match="available: medmod, carebench"):
        load_prepared(prepared_small, "mortality", imputation="mean")
    with pytest.raises(RaybenchError, match="raybench preprocess"):
        load_prepared(tmp_path, "mortality")


def _expected_cxr_hours(dataset, task: str, image_row: np.ndarray) -> np.ndarray:
    """pred_time - image study time in hours, from the Parquet files with pandas joins."""
    labels = pd.read_parquet(dataset / "labels" / f"{task}.parquet")
    index = pd.read_parquet(dataset / "samples" / "cxr_index.parquet")
    time = labels[["cxr_index"]].merge(index[["cxr_index", "time"]], how="left")["time"]
    hours = (labels["pred_time"] - time).dt.total_seconds().to_numpy() / 3600.0
    return np.where(image_row >= 0, hours, 0.0)


def test_cxr_hours_is_pred_time_minus_image_time(prepared_small):
    for task in ("mortality", "decompensation", "radiology"):
        data = load_prepared(prepared_small, task)
        present = data.image_row >= 0
        assert present.any() and (~present).any() or task == "radiology"
        assert data.cxr_hours.dtype == np.float32 and (data.cxr_hours >= 0).all()
        np.testing.assert_allclose(data.cxr_hours,
                                   _expected_cxr_hours(prepared_small, task, data.image_row),
                                   rtol=1e-6, atol=1e-3)
        assert (data.cxr_hours[~present] == 0).all()
        if task == "radiology":  # the prediction is made at the image's own time
            assert (data.cxr_hours == 0).all()
        else:
            assert (data.cxr_hours[present] > 0).any()
    assert data.step_hours == 1.0


def test_cxr_hours_on_a_hand_made_image_time(prepared_small, tmp_path):
    dataset = tmp_path / "prepared"
    shutil.copytree(prepared_small, dataset)
    labels = pd.read_parquet(dataset / "labels" / "mortality.parquet")
    sample = int(np.flatnonzero(labels["cxr_index"].to_numpy() >= 0)[0])
    index = pd.read_parquet(dataset / "samples" / "cxr_index.parquet")
    chosen = index["cxr_index"] == labels["cxr_index"].iloc[sample]
    index.loc[chosen, "time"] = labels["pred_time"].iloc[sample] - pd.Timedelta(minutes=150)
    index.to_parquet(dataset / "samples" / "cxr_index.parquet", index=False)
    data = load_prepared(dataset, "mortality")
    assert data.cxr_hours[sample] == pytest.approx(2.5)


def test_cxr_hours_only_when_declared_and_zero_where_dropped(decompensation):
    data = decompensation
    idx = np.flatnonzero(data.image_row >= 0)[:6]
    cfg = LoaderConfig(augment=False)
    assert "cxr_hours" not in make_batch(data, idx, cfg, train=False)
    rows = data.image_row.copy()
    rows[idx[:3]] = -1  # as the CXR-missingness corruption does
    batch = make_batch(data, idx, cfg, train=False, image_row=rows, inputs={"cxr_hours"})
    hours = batch["cxr_hours"]
    assert hours.dtype == torch.float32 and hours.shape == (6,)
    assert (hours[:3] == 0).all()
    assert torch.equal(hours[3:], torch.from_numpy(data.cxr_hours[idx[3:]]))
    batches = list(iterate_batches(data, idx, cfg, train=True, inputs=frozenset({"cxr_hours"})))
    assert all("cxr_hours" in b for _, b in batches)
    with pytest.raises(RaybenchError, match="unknown batch input"):
        make_batch(data, idx, cfg, train=False, inputs={"cxr_time"})


def test_dataset_without_image_times_refuses_cxr_hours(prepared_small, tmp_path):
    dataset = tmp_path / "prepared"
    shutil.copytree(prepared_small, dataset)
    index = pd.read_parquet(dataset / "samples" / "cxr_index.parquet")
    index.drop(columns=["time"]).to_parquet(dataset / "samples" / "cxr_index.parquet")
    data = load_prepared(dataset, "mortality")
    assert data.cxr_hours is None
    idx = np.arange(4)
    assert make_batch(data, idx, LoaderConfig(), train=False)["ehr"].shape[0] == 4
    with pytest.raises(RaybenchError, match="re-run `raybench preprocess`"):
        make_batch(data, idx, LoaderConfig(), train=False, inputs={"cxr_hours"})
    with pytest.raises(RaybenchError, match="utde needs cxr_hours.*re-run `raybench preprocess`"):
        require_inputs(data, {"cxr_hours"}, "utde")
