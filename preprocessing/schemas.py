"""Declared columns and dtypes of every raw MIMIC table raybench reads or writes.

One declaration per file, used by the synthetic generator (to write) and by preprocessing
(to validate what it reads). Layouts follow MIMIC-IV v2.2 (``hosp/``, ``icu/``) and
MIMIC-CXR-JPG v2.0.0. Dtype names are pandas dtypes; datetimes are written as
``YYYY-MM-DD HH:MM:SS`` strings like the PhysioNet CSVs and parsed on read.
"""

from __future__ import annotations

from dataclasses import dataclass

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)


@dataclass(frozen=True)
class TableSchema:
    """A raw table: where it lives below its root and which columns it holds."""

    name: str
    relpath: str
    columns: dict[str, str]
    datetime_columns: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        """Column names in file order."""
        return list(self.columns)


PATIENTS = TableSchema(
    "patients",
    "hosp/patients.csv.gz",
    {
        "subject_id": "int64",
        "gender": "string",
        "anchor_age": "int64",
        "anchor_year": "int64",
        "anchor_year_group": "string",
        "dod": "string",
    },
)

ADMISSIONS = TableSchema(
    "admissions",
    "hosp/admissions.csv.gz",
    {
        "subject_id": "int64",
        "hadm_id": "int64",
        "admittime": "datetime64[ns]",
        "dischtime": "datetime64[ns]",
        "deathtime": "datetime64[ns]",
        "admission_type": "string",
        "admit_provider_id": "string",
        "admission_location": "string",
        "discharge_location": "string",
        "insurance": "string",
        "language": "string",
        "marital_status": "string",
        "race": "string",
        "edregtime": "datetime64[ns]",
        "edouttime": "datetime64[ns]",
        "hospital_expire_flag": "int64",
    },
    datetime_columns=("admittime", "dischtime", "deathtime", "edregtime", "edouttime"),
)

DIAGNOSES_ICD = TableSchema(
    "diagnoses_icd",
    "hosp/diagnoses_icd.csv.gz",
    {
        "subject_id": "int64",
        "hadm_id": "int64",
        "seq_num": "int64",
        "icd_code": "string",
        "icd_version": "int64",
    },
)

D_LABITEMS = TableSchema(
    "d_labitems",
    "hosp/d_labitems.csv.gz",
    {"itemid": "int64", "label": "string", "fluid": "string", "category": "string"},
)

LABEVENTS = TableSchema(
    "labevents",
    "hosp/labevents.csv.gz",
    {
        "labevent_id": "int64",
        "subject_id": "int64",
        "hadm_id": "Int64",
        "specimen_id": "int64",
        "itemid": "int64",
        "order_provider_id": "string",
        "charttime": "datetime64[ns]",
        "storetime": "datetime64[ns]",
        "value": "string",
        "valuenum": "float64",
        "valueuom": "string",
        "ref_range_lower": "float64",
        "ref_range_upper": "float64",
        "flag": "string",
        "priority": "string",
        "comments": "string",
    },
    datetime_columns=("charttime", "storetime"),
)

ICUSTAYS = TableSchema(
    "icustays",
    "icu/icustays.csv.gz",
    {
        "subject_id": "int64",
        "hadm_id": "int64",
        "stay_id": "int64",
        "first_careunit": "string",
        "last_careunit": "string",
        "intime": "datetime64[ns]",
        "outtime": "datetime64[ns]",
        "los": "float64",
    },
    datetime_columns=("intime", "outtime"),
)

D_ITEMS = TableSchema(
    "d_items",
    "icu/d_items.csv.gz",
    {
        "itemid": "int64",
        "label": "string",
        "abbreviation": "string",
        "linksto": "string",
        "category": "string",
        "unitname": "string",
        "param_type": "string",
        "lownormalvalue": "float64",
        "highnormalvalue": "float64",
    },
)

CHARTEVENTS = TableSchema(
    "chartevents",
    "icu/chartevents.csv.gz",
    {
        "subject_id": "int64",
        "hadm_id": "int64",
        "stay_id": "int64",
        "caregiver_id": "Int64",
        "charttime": "datetime64[ns]",
        "storetime": "datetime64[ns]",
        "itemid": "int64",
        "value": "string",
        "valuenum": "float64",
        "valueuom": "string",
        "warning": "Int64",
    },
    datetime_columns=("charttime", "storetime"),
)

CXR_METADATA = TableSchema(
    "cxr_metadata",
    "mimic-cxr-2.0.0-metadata.csv.gz",
    {
        "dicom_id": "string",
        "subject_id": "int64",
        "study_id": "int64",
        "PerformedProcedureStepDescription": "string",
        "ViewPosition": "string",
        "Rows": "int64",
        "Columns": "int64",
        "StudyDate": "int64",
        "StudyTime": "float64",
        "ProcedureCodeSequence_CodeMeaning": "string",
        "ViewCodeSequence_CodeMeaning": "string",
        "PatientOrientationCodeSequence_CodeMeaning": "string",
    },
)

CXR_CHEXPERT = TableSchema(
    "cxr_chexpert",
    "mimic-cxr-2.0.0-chexpert.csv.gz",
    {"subject_id": "int64", "study_id": "int64", **{label: "float64" for label in CHEXPERT_LABELS}},
)

CXR_SPLIT = TableSchema(
    "cxr_split",
    "mimic-cxr-2.0.0-split.csv.gz",
    {"dicom_id": "string", "study_id": "int64", "subject_id": "int64", "split": "string"},
)

MIMIC_IV_TABLES: tuple[TableSchema, ...] = (
    PATIENTS,
    ADMISSIONS,
    DIAGNOSES_ICD,
    D_LABITEMS,
    LABEVENTS,
    ICUSTAYS,
    D_ITEMS,
    CHARTEVENTS,
)
MIMIC_CXR_TABLES: tuple[TableSchema, ...] = (CXR_METADATA, CXR_CHEXPERT, CXR_SPLIT)


def cxr_image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    """Relative path of a MIMIC-CXR-JPG image: ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``."""
    subject = f"p{int(subject_id)}"
    return f"files/{subject[:3]}/{subject}/s{int(study_id)}/{dicom_id}.jpg"
