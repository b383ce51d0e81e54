"""Synthetic MIMIC-CXR-JPG: studies, CheXpert labels, split file and JPEG images.

About 30 % of ICU stays get one or more AP studies inside the stay (more likely when the
patient is sicker or has a respiratory/cardiac condition); some studies are PA + LATERAL
(which preprocessing must exclude), some AP studies fall in the 24 h before ICU admission
(for the optional look-back), and some patients have outpatient PA/LATERAL studies.
Findings follow the admission's hidden conditions; CheXpert labels follow the findings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from preprocessing.schemas import CHEXPERT_LABELS
from preprocessing.synth.render import image_shape


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _studies(rng: np.random.Generator, stays: pd.DataFrame, patients: pd.DataFrame,
             admissions: pd.DataFrame) -> pd.DataFrame:
    """One row per study: subject, time, kind ('AP' or 'PA'), and the stay it is about."""
    n = len(stays)
    sev = stays["severity"].to_numpy()
    p = _sigmoid(-1.45 + 0.45 * sev + 0.9 * stays["resp_failure"].to_numpy()
                 + 0.5 * stays["pneumonia"].to_numpy() + 0.5 * stays["chf"].to_numpy())
    has = rng.random(n) < p
    count = np.where(has, 1 + rng.poisson(0.6, n), 0)
    idx = np.repeat(np.arange(n), count)
    los_h = ((stays["outtime"] - stays["intime"]) / pd.Timedelta(hours=1)).to_numpy()
    hours = 0.2 + (los_h[idx] - 0.3) * rng.beta(1.2, 2.0, len(idx))
    kind = np.where(rng.random(len(idx)) < 0.9, "AP", "PA")
    frames = [pd.DataFrame({"stay": idx, "hours": hours, "kind": kind})]
    before = rng.random(n) < np.where(has, 0.12, 0.04)
    b_idx = np.flatnonzero(before)
    frames.append(pd.DataFrame({
        "stay": b_idx, "hours": -rng.uniform(0.5, 23.5, len(b_idx)), "kind": "AP",
    }))
    studies = pd.concat(frames, ignore_index=True)
    studies["time"] = (stays["intime"].to_numpy()[studies["stay"].to_numpy()]
                       + pd.to_timedelta(studies["hours"], unit="h").to_numpy())
    studies["subject_id"] = stays["subject_id"].to_numpy()[studies["stay"].to_numpy()]

    # Outpatient PA + LATERAL studies, 30-300 days before the first admission.
    first_adm = admissions.groupby("subject_id")["admittime"].min()
    out_pat = patients["subject_id"].to_numpy()[rng.random(len(patients)) < 0.2]
    out_time = first_adm.reindex(out_pat).to_numpy() - pd.to_timedelta(
        rng.uniform(30, 300, len(out_pat)), unit="D").to_numpy()
    outpatient = pd.DataFrame({"stay": -1, "hours": np.nan, "kind": "PA",
                               "time": out_time, "subject_id": out_pat})
    studies = pd.concat([studies, outpatient], ignore_index=True)
    studies["time"] = pd.DatetimeIndex(studies["time"]).floor("s") + pd.to_timedelta(
        rng.integers(0, 1000, len(studies)), unit="ms")
    return studies.sort_values(["subject_id", "time"], kind="stable").reset_index(drop=True)


def _findings(rng: np.random.Generator, studies: pd.DataFrame, stays: pd.DataFrame) -> np.ndarray:
    """Boolean findings (studies x 14 CheXpert labels) from the hidden conditions."""
    m = len(studies)
    stay = studies["stay"].to_numpy()
    inpatient = stay >= 0
    safe = np.where(inpatient, stay, 0)

    def cond(key):
        return np.where(inpatient, stays[key].to_numpy()[safe], 0).astype(bool)

    sev = np.where(inpatient, stays["severity"].to_numpy()[safe], -1.0)
    u = lambda: rng.random(m)  # noqa: E731
    f = {}
    f["Cardiomegaly"] = u() < np.where(cond("chf"), 0.85, np.where(cond("htn_comp"), 0.2, 0.05))
    f["Enlarged Cardiomediastinum"] = u() < np.where(f["Cardiomegaly"], 0.3, 0.03)
    f["Pleural Effusion"] = u() < np.where(cond("chf") | cond("pleurisy"), 0.5, 0.06)
    f["Edema"] = u() < np.where(cond("chf"), 0.45, 0.04 + 0.03 * np.clip(sev, 0, 3))
    f["Consolidation"] = u() < np.where(cond("pneumonia"), 0.75, 0.04)
    f["Pneumonia"] = f["Consolidation"] & (u() < 0.7)
    f["Atelectasis"] = u() < np.where(cond("complications"), 0.3, 0.12)
    f["Pneumothorax"] = u() < np.where(cond("pleurisy"), 0.5, 0.01)
    devices = u() < np.where(cond("resp_failure"), 0.9, 0.15 + 0.1 * np.clip(sev, 0, 3))
    f["Support Devices"] = devices & inpatient
    f["Lung Lesion"] = u() < 0.03
    f["Fracture"] = u() < 0.02
    f["Pleural Other"] = u() < 0.02
    f["Lung Opacity"] = f["Consolidation"] | f["Edema"] | f["Atelectasis"] | (u() < 0.05)
    others = np.column_stack([f[k] for k in f])
    f["No Finding"] = ~others.any(axis=1)
    return np.column_stack([f[label] for label in CHEXPERT_LABELS])


def _chexpert_values(rng: np.random.Generator, findings: np.ndarray) -> np.ndarray:
    """Report-derived labels: positives 1.0 (or -1.0 uncertain), negatives blank or 0.0."""
    u = rng.random(findings.shape)
    pos = np.where(u < 0.15, -1.0, 1.0)
    neg = np.where(u < 0.25, 0.0, np.nan)
    values = np.where(findings, pos, neg)
    no_finding = CHEXPERT_LABELS.index("No Finding")
    values[:, no_finding] = np.where(findings[:, no_finding], 1.0, np.nan)
    return values


def _hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
    return np.array(["-".join(f"{v:08x}" for v in row) for row in raw], dtype=object)


def cxr_tables(
    rng: np.random.Generator,
    stays: pd.DataFrame,
    patients: pd.DataFrame,
    admissions: pd.DataFrame,
    image_size: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Build (metadata, chexpert, split, images) frames.

    ``images`` lists each JPEG to render: dicom_id, subject_id, study_id, view, seed and the
    findings of its study (one bool column per CheXpert label).
    """
    studies = _studies(rng, stays, patients, admissions)
    m = len(studies)
    studies["study_id"] = 50_000_000 + np.sort(rng.choice(9_000_000, m, replace=False))
    findings = _findings(rng, studies, stays)
    values = _chexpert_values(rng, findings)
    chexpert = pd.DataFrame(values, columns=list(CHEXPERT_LABELS))
    chexpert.insert(0, "study_id", studies["study_id"].to_numpy())
    chexpert.insert(0, "subject_id", studies["subject_id"].to_numpy())

    # Images per study: AP -> AP (10 % also a LATERAL); PA -> PA + LATERAL.
    is_pa = studies["kind"].to_numpy() == "PA"
    extra_lat = ~is_pa & (rng.random(m) < 0.1)
    n_img = np.where(is_pa | extra_lat, 2, 1)
    s_idx = np.repeat(np.arange(m), n_img)
    second = np.arange(len(s_idx)) - np.repeat(np.cumsum(n_img) - n_img, n_img) == 1
    view = np.where(second, "LATERAL", np.where(is_pa[s_idx], "PA", "AP")).astype(object)
    n_i = len(s_idx)
    rows, cols = image_shape(image_size)
    time = pd.DatetimeIndex(studies["time"].to_numpy()[s_idx])
    study_time = (time.hour * 10000 + time.minute * 100 + time.second
                  + time.microsecond / 1e6).to_numpy().round(3)
    description = np.where(is_pa[s_idx], "CHEST (PA AND LAT)", "CHEST (PORTABLE AP)")
    view_meaning = pd.Series(view).map(
        {"AP": "antero-posterior", "PA": "postero-anterior", "LATERAL": "lateral"})
    dicom_id = _hex_ids(rng, n_i)
    metadata = pd.DataFrame({
        "dicom_id": dicom_id,
        "subject_id": studies["subject_id"].to_numpy()[s_idx],
        "study_id": studies["study_id"].to_numpy()[s_idx],
        "PerformedProcedureStepDescription": description,
        "ViewPosition": view,
        "Rows": rows,
        "Columns": cols,
        "StudyDate": (time.year * 10000 + time.month * 100 + time.day).to_numpy(),
        "StudyTime": study_time,
        "ProcedureCodeSequence_CodeMeaning": description,
        "ViewCodeSequence_CodeMeaning": view_meaning.to_numpy(),
        "PatientOrientationCodeSequence_CodeMeaning": np.where(
            is_pa[s_idx], "Erect", "Recumbent"),
    })
    subjects = np.unique(metadata["subject_id"].to_numpy())
    u = rng.random(len(subjects))
    subject_split = pd.Series(np.where(u < 0.98, "train", np.where(u < 0.99, "validate", "test")),
                              index=subjects)
    split = metadata[["dicom_id", "study_id", "subject_id"]].copy()
    split["split"] = subject_split.reindex(split["subject_id"]).to_numpy()

    images = metadata[["dicom_id", "subject_id", "study_id", "ViewPosition"]].copy()
    images["seed"] = rng.integers(0, 2**31 - 1, n_i)
    for j, label in enumerate(CHEXPERT_LABELS):
        images[label] = findings[s_idx, j]
    return metadata, chexpert, split, images
