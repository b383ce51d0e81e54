"""The synthetic MIMIC generator: schemas, determinism, planted signal, CLI errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from preprocessing import schemas as S
from preprocessing.synth.generator import MIMIC_CXR_DIR, MIMIC_IV_DIR, SynthConfig, generate
from preprocessing.variables import CAPILLARY_REFILL_TEXT, GCS_VERBAL_TEXT, ITEM_FIO2


def _read(root: Path, schema: S.TableSchema) -> pd.DataFrame:
    return pd.read_csv(root / schema.relpath, parse_dates=list(schema.datetime_columns))


@pytest.mark.parametrize("schema", S.MIMIC_IV_TABLES + S.MIMIC_CXR_TABLES, ids=lambda s: s.name)
def test_every_table_matches_its_declaration(synth_small, schema):
    sub = MIMIC_IV_DIR if schema in S.MIMIC_IV_TABLES else MIMIC_CXR_DIR
    frame = _read(synth_small / sub, schema)
    assert list(frame.columns) == schema.column_names
    assert len(frame) > 0
    for column, dtype in schema.columns.items():
        if dtype.startswith("datetime"):
            assert pd.api.types.is_datetime64_any_dtype(frame[column]) or frame[column].isna().all()
        elif dtype in ("int64", "float64") and frame[column].notna().any():
            frame[column].astype(dtype)  # raises if a value does not fit the declared dtype


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(SynthConfig(out=tmp_path / name, patients=25, seed=seed, image_size=48))
    first, second, other = (digest(tmp_path / n) for n in "abc")
    assert first == second
    assert first["mimic-iv/icu/chartevents.csv.gz"] != other["mimic-iv/icu/chartevents.csv.gz"]


def test_image_files_follow_the_mimic_cxr_jpg_layout(synth_small):
    cxr = synth_small / MIMIC_CXR_DIR
    meta = _read(cxr, S.CXR_METADATA)
    row = meta.iloc[0]
    path = cxr / S.cxr_image_relpath(row.subject_id, row.study_id, row.dicom_id)
    assert path.parts[-4] == f"p{str(row.subject_id)[:2]}"
    with Image.open(path) as image:
        assert image.mode == "L"
        assert image.size == (row.Columns, row.Rows)
    assert set(meta["ViewPosition"]) == {"AP", "PA", "LATERAL"}
    assert meta["StudyDate"].astype(str).str.fullmatch(r"2\d{7}").all()


def test_raw_quirks_are_present(synth_small):
    chart = _read(synth_small / MIMIC_IV_DIR, S.CHARTEVENTS)
    verbal = chart.loc[chart.itemid == 223900, "value"]
    assert set(verbal.dropna()) <= set(GCS_VERBAL_TEXT) and "No Response-ETT" in set(verbal)
    crr = chart.loc[chart.itemid.isin([223951, 224308]), "value"]
    assert set(crr) <= set(CAPILLARY_REFILL_TEXT)
    assert {223761, 223762} <= set(chart.itemid)  # temperature in F and in C
    assert chart.loc[chart.itemid == ITEM_FIO2, "valuenum"].max() > 1  # FiO2 in percent
    numeric = chart[chart.itemid == 220045]
    assert (numeric.valuenum > 1000).any()  # impossible heart rates planted
    assert numeric.valuenum.isna().any()  # blanks planted


def _stay_table(root: Path) -> pd.DataFrame:
    iv = root / MIMIC_IV_DIR
    stays = _read(iv, S.ICUSTAYS)
    adm = _read(iv, S.ADMISSIONS)[["hadm_id", "hospital_expire_flag"]]
    return stays.merge(adm, on="hadm_id")


def test_vitals_predict_mortality_well_above_chance(synth_small):
    chart = _read(synth_small / MIMIC_IV_DIR, S.CHARTEVENTS)
    chart = chart[chart.valuenum.between(0, 400)]
    wanted = {220045: "hr", 220210: "rr", 224690: "rr", 220277: "spo2", 220181: "mbp",
              220052: "mbp", 223901: "gcs_motor"}
    chart = chart[chart.itemid.isin(list(wanted))].assign(var=lambda f: f.itemid.map(wanted))
    features = chart.pivot_table(index="stay_id", columns="var", values="valuenum",
                                 aggfunc=["mean", "max", "min"])
    features.columns = [f"{agg}_{var}" for agg, var in features.columns]
    stays = _stay_table(synth_small).set_index("stay_id").join(features, how="inner")
    x = stays[features.columns].fillna(stays[features.columns].median()).to_numpy()
    y = stays["hospital_expire_flag"].to_numpy()
    assert 0.04 < y.mean() < 0.35
    model = LogisticRegression(max_iter=2000)
    prob = cross_val_predict(model, (x - x.mean(0)) / x.std(0), y, cv=5,
                             method="predict_proba")[:, 1]
    assert roc_auc_score(y, prob) > 0.75


def test_heart_width_separates_cardiomegaly(synth_small):
    cxr = synth_small / MIMIC_CXR_DIR
    meta = _read(cxr, S.CXR_METADATA)
    labels = _read(cxr, S.CXR_CHEXPERT)[["study_id", "Cardiomegaly"]]
    ap = meta[meta.ViewPosition == "AP"].merge(labels, on="study_id")
    ap = ap[ap.Cardiomegaly.isin([0.0, 1.0]) | ap.Cardiomegaly.isna()]
    widths = []
    for row in ap.itertuples():
        pixels = np.asarray(Image.open(
            cxr / S.cxr_image_relpath(row.subject_id, row.study_id, row.dicom_id)), float)
        h, w = pixels.shape
        band = pixels[int(0.57 * h):int(0.65 * h)]
        # Bands covered by an enlarged heart only: either side of the normal heart border.
        flank = np.r_[band[:, int(0.36 * w):int(0.41 * w)].ravel(),
                      band[:, int(0.67 * w):int(0.71 * w)].ravel()]
        widths.append(flank.mean() - pixels[int(0.3 * h):int(0.4 * h)].mean())
    y = (ap.Cardiomegaly == 1.0).to_numpy()
    assert 5 <= y.sum() < len(y)
    assert roc_auc_score(y, widths) > 0.8


def test_cxr_exists_for_about_a_third_of_stays(synth_small):
    stays = _stay_table(synth_small)
    meta = _read(synth_small / MIMIC_CXR_DIR, S.CXR_METADATA)
    meta = meta[meta.ViewPosition == "AP"]
    time = pd.to_datetime(meta.StudyDate.astype(str) + meta.StudyTime.map(lambda t: f"{t:010.3f}"),
                          format="%Y%m%d%H%M%S.%f")
    pairs = stays.merge(meta.assign(time=time), on="subject_id")
    inside = pairs[(pairs.time >= pairs.intime) & (pairs.time <= pairs.outtime)]
    share = inside.stay_id.nunique() / len(stays)
    assert 0.2 < share < 0.42


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raybench.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["synth", "--out", "/proc/forbidden/x"], "cannot write to output directory"),
        (["synth", "--out", "OUT", "--patients", "many"], "--patients"),
        (["synth", "--out", "OUT", "--image-size", "8"], "--image-size"),
        (["synth"], "--out"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, args, expected):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    result = _cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert "Traceback" not in result.stderr
