"""``raybench preprocess`` end to end on the small synthetic tree."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from preprocessing import schemas as S
from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocess
from preprocessing.stages import SCRATCH
from raybench.errors import RaybenchError

TASKS = ("mortality", "mortality_icu", "phenotyping", "decompensation", "length_of_stay",
         "length_of_stay_7", "radiology")


def _digests(root) -> dict[str, str]:
    """Hashes of every data file (Parquet, CSV) below root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".parquet", ".csv")}


def test_manifest_counts_every_task_cohort_and_split(prepared_small):
    manifest = json.loads((prepared_small / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and len(manifest["config_hash"]) == 16
    assert set(manifest["counts"]) == set(TASKS)
    for task, per in manifest["counts"].items():
        frame = pd.read_parquet(prepared_small / "labels" / f"{task}.parquet")
        assert sum(per["base"].values()) == len(frame) > 0
        assert sum(per["matched"].values()) == int((frame["cxr_index"] >= 0).sum())
    radiology = manifest["counts"]["radiology"]
    assert radiology["base"] == radiology["matched"]  # radiology samples are images
    assert manifest["ehr"]["n_features"] == len(manifest["ehr"]["features"]) == 59
    assert manifest["cohort"]["exclusions"][-1]["after"] == manifest["cohort"]["stays"]


def test_splits_are_disjoint_by_patient(prepared_small):
    stays = pd.read_parquet(prepared_small / "cohort" / "stays.parquet")
    by_split = stays.groupby("split")["subject_id"].apply(set)
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    listed = pd.read_csv(prepared_small / "cohort" / "splits" / "test_stay_ids.csv")
    assert set(listed["stay_id"]) == set(stays.loc[stays.split == "test", "stay_id"])


def test_only_ap_images_taken_no_later_than_prediction(prepared_small, synth_small):
    index = pd.read_parquet(prepared_small / "samples" / "cxr_index.parquet")
    meta = pd.read_csv(synth_small / "mimic-cxr-jpg" / S.CXR_METADATA.relpath)
    views = meta.set_index("dicom_id").loc[index["dicom_id"], "ViewPosition"]
    assert set(views) == {"AP"} and set(meta.ViewPosition) == {"AP", "PA", "LATERAL"}
    times = index.set_index("cxr_index")["time"]
    for task in ("decompensation", "mortality", "phenotyping"):
        frame = pd.read_parquet(prepared_small / "labels" / f"{task}.parquet")
        with_cxr = frame[frame.cxr_index >= 0]
        assert len(with_cxr) > 0
        assert (times.reindex(with_cxr.cxr_index).to_numpy()
                <= with_cxr.pred_time.to_numpy()).all()


def test_images_and_ehr_are_model_ready(prepared_small):
    images = pd.read_parquet(prepared_small / "cxr" / "images.parquet")
    pixels = np.frombuffer(images["image"].iloc[0], dtype=np.uint8)
    assert pixels.size == 64 * 64 and images["cxr_index"].is_monotonic_increasing
    features = pd.read_parquet(prepared_small / "ehr" / "features_medmod")
    lengths = pd.read_parquet(prepared_small / "ehr" / "stay_lengths.parquet")
    assert len(features) == lengths["n_steps"].sum()
    assert not features.drop(columns=["stay_id", "step"]).isna().any().any()
    for task in ("phenotyping", "decompensation"):
        labels = pd.read_parquet(prepared_small / "labels" / f"{task}.parquet")
        caps = lengths.set_index("stay_id")["n_steps"].reindex(labels["stay_id"]).to_numpy()
        ends = (labels["first_step"] + labels["n_steps"]).to_numpy()
        assert (ends <= caps).all() and (labels["n_steps"] >= 1).all()
        assert (labels["n_steps"] <= 336).all() and (labels["first_step"] >= 0).all()


def test_normalisation_statistics_come_from_train_stays(prepared_small):
    norm = json.loads((prepared_small / "ehr" / "normalization.json").read_text())
    hourly = pd.read_parquet(prepared_small / "ehr" / "hourly")
    train = hourly[hourly.split == "train"]["heart_rate"].dropna()
    assert norm["mean"]["heart_rate"] == pytest.approx(train.mean(), rel=1e-5)
    everything = hourly["heart_rate"].dropna()
    assert everything.mean() != pytest.approx(train.mean(), rel=1e-9)


def test_rerun_skips_stages_and_fresh_run_is_identical(prepared_small, synth_small, tmp_path):
    before = _digests(prepared_small)
    again = run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg",
                           prepared_small, config=PreprocessConfig(cxr_image_size=64), show=False)
    assert set(again["cached_stages"]) == {"cohort", "samples", "cxr", "ehr", "labels"}
    assert _digests(prepared_small) == before
    fresh = tmp_path / "fresh"
    run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg", fresh,
                   config=PreprocessConfig(cxr_image_size=64), show=False)
    assert _digests(fresh) == before


def test_half_written_stage_is_rebuilt(prepared_small, synth_small, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared_small, out)
    marker = json.loads((out / "labels" / "_SUCCESS.json").read_text())
    marker["key"] = "stale"  # built with other settings: must be rebuilt
    (out / "labels" / "_SUCCESS.json").write_text(json.dumps(marker))
    (out / "labels" / "mortality.parquet").write_bytes(b"garbage")
    scratch = out / "ehr.tmp"  # left by a run killed while building the ehr stage
    scratch.mkdir()
    (scratch / SCRATCH).write_text("")
    (scratch / "partial.parquet").write_bytes(b"partial")
    result = run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg", out,
                            config=PreprocessConfig(cxr_image_size=64), show=False)
    assert "labels" not in result["cached_stages"] and "ehr" in result["cached_stages"]
    assert _digests(out)["labels/mortality.parquet"] == \
        _digests(prepared_small)["labels/mortality.parquet"]


def test_rebuild_never_deletes_a_file_raybench_did_not_write(prepared_small, synth_small,
                                                             tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared_small, out)
    marker = json.loads((out / "cohort" / "_SUCCESS.json").read_text())
    marker["key"] = "stale"
    (out / "cohort" / "_SUCCESS.json").write_text(json.dumps(marker))
    note = out / "cohort" / "my_notes.txt"  # a user's file inside a stage folder
    note.write_text("keep me")
    with pytest.raises(RaybenchError, match=r"cohort must be rebuilt but holds file\(s\) "
                                            r"raybench did not write \(my_notes.txt\)"):
        run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg", out,
                       config=PreprocessConfig(cxr_image_size=64), show=False)
    assert note.read_text() == "keep me"
    assert (out / "cohort" / "stays.parquet").is_file()  # refused before deleting anything
    foreign = tmp_path / "user-dir"
    foreign.mkdir()
    (foreign / "results.csv").write_text("mine")
    with pytest.raises(RaybenchError, match="not empty .*was not created by raybench"):
        run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg", foreign,
                       config=PreprocessConfig(cxr_image_size=64), show=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["results.csv"]


def test_missing_files_are_all_listed(tmp_path, synth_small):
    iv = tmp_path / "iv"
    shutil.copytree(synth_small / "mimic-iv", iv)
    (iv / "icu" / "chartevents.csv.gz").unlink()
    (iv / "hosp" / "patients.csv.gz").unlink()
    with pytest.raises(RaybenchError) as error:
        run_preprocess(iv, tmp_path / "no-cxr", tmp_path / "out", show=False)
    message = str(error.value)
    for name in ("chartevents.csv.gz", "patients.csv.gz", "mimic-cxr-2.0.0-metadata.csv.gz",
                 "mimic-cxr-2.0.0-chexpert.csv.gz"):
        assert name in message


def test_wrong_columns_are_named(tmp_path, synth_small):
    iv = tmp_path / "iv"
    shutil.copytree(synth_small / "mimic-iv", iv)
    path = iv / "icu" / "icustays.csv.gz"
    pd.read_csv(path).rename(columns={"intime": "in_time"}).to_csv(path, index=False)
    with pytest.raises(RaybenchError, match=r"icustays.csv.gz lacks column\(s\) intime"):
        run_preprocess(iv, synth_small / "mimic-cxr-jpg", tmp_path / "out", show=False)


def test_empty_cohort_names_the_filter(tmp_path, synth_small):
    config = tmp_path / "prep.yaml"
    config.write_text("min_age: 120\n")
    result = subprocess.run(
        [sys.executable, "-m", "raybench.cli", "preprocess", "--mimic-iv",
         str(synth_small / "mimic-iv"), "--mimic-cxr", str(synth_small / "mimic-cxr-jpg"),
         "--out", str(tmp_path / "out"), "--config", str(config)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "empty after the filter 'adult (age >= 120)'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_field_is_named(tmp_path, synth_small):
    config = tmp_path / "prep.yaml"
    config.write_text("resample_hours: 3\nunknown_key: 1\n")
    with pytest.raises(RaybenchError, match="resample_hours") as error:
        run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg",
                       tmp_path / "out", config_path=config, show=False)
    assert "unknown_key" in str(error.value) and "prep.yaml" in str(error.value)
