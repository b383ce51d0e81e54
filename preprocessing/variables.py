"""The 17 benchmark EHR variables with their MIMIC-IV (MetaVision) sources.

The variable set is the mimic3-benchmarks / MedMod one; the itemids are MIMIC-IV's
MetaVision items. Unlike the anchors (see ``../shared/reference/anchors.md`` section 0.4),
capillary refill comes from MIMIC-IV items 223951/224308 and GCS total is computed from its
three components, so no channel is permanently empty on MIMIC-IV.

Valid ranges are in the harmonised unit (after F->C, percent->fraction, inch->cm, lb->kg);
values outside them are treated as not measured. Normal values seed imputation (MedMod's
"previous, else normal value" strategy).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variable:
    """One EHR channel: where it comes from and how it is cleaned."""

    name: str
    kind: str  # "continuous" or "categorical"
    chart_itemids: tuple[int, ...] = ()
    lab_itemids: tuple[int, ...] = ()
    unit: str = ""
    valid_low: float | None = None
    valid_high: float | None = None
    normal: float = 0.0
    categories: tuple[float, ...] = ()
    # itemid -> multiplier/offset pair converting that item's unit into ``unit``
    conversions: dict[int, str] = field(default_factory=dict)


# Text values as MIMIC-IV writes them for the GCS components (value column; valuenum is the score).
GCS_EYE_TEXT = {"Spontaneously": 4, "To Speech": 3, "To Pain": 2, "None": 1}
GCS_VERBAL_TEXT = {
    "Oriented": 5,
    "Confused": 4,
    "Inappropriate Words": 3,
    "Incomprehensible sounds": 2,
    "No Response": 1,
    "No Response-ETT": 1,
}
GCS_MOTOR_TEXT = {
    "Obeys Commands": 6,
    "Localizes Pain": 5,
    "Flex-withdraws": 4,
    "Abnormal Flexion": 3,
    "Abnormal extension": 2,
    "No response": 1,
}
CAPILLARY_REFILL_TEXT = {"Normal <3 Seconds": 0, "Abnormal >3 Seconds": 1}

ITEM_GCS_EYE = 220739
ITEM_GCS_VERBAL = 223900
ITEM_GCS_MOTOR = 223901
ITEM_CRR_RIGHT = 223951
ITEM_CRR_LEFT = 224308
ITEM_TEMP_F = 223761
ITEM_TEMP_C = 223762
ITEM_FIO2 = 223835
ITEM_HEIGHT_IN = 226707
ITEM_HEIGHT_CM = 226730
ITEM_WEIGHT_ADMIT = 226512
ITEM_WEIGHT_DAILY = 224639
ITEM_WEIGHT_LB = 226531

VARIABLES: tuple[Variable, ...] = (
    Variable(
        "capillary_refill",
        "categorical",
        chart_itemids=(ITEM_CRR_RIGHT, ITEM_CRR_LEFT),
        normal=0.0,
        categories=(0.0, 1.0),
    ),
    Variable(
        "diastolic_bp", "continuous", (220051, 220180, 225310), unit="mmHg",
        valid_low=0, valid_high=375, normal=59.0,
    ),
    Variable(
        "fio2", "continuous", (ITEM_FIO2,), unit="fraction", valid_low=0.21, valid_high=1.0,
        normal=0.21, conversions={ITEM_FIO2: "percent_to_fraction"},
    ),
    Variable(
        "gcs_eye", "categorical", (ITEM_GCS_EYE,), normal=4.0, categories=(1.0, 2.0, 3.0, 4.0)
    ),
    Variable(
        "gcs_motor", "categorical", (ITEM_GCS_MOTOR,), normal=6.0,
        categories=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
    ),
    Variable(
        "gcs_total", "categorical", (), normal=15.0,
        categories=tuple(float(v) for v in range(3, 16)),
    ),
    Variable(
        "gcs_verbal", "categorical", (ITEM_GCS_VERBAL,), normal=5.0,
        categories=(1.0, 2.0, 3.0, 4.0, 5.0),
    ),
    Variable(
        "glucose", "continuous", (220621, 225664, 226537), (50931, 50809), unit="mg/dL",
        valid_low=33, valid_high=2000, normal=128.0,
    ),
    Variable(
        "heart_rate", "continuous", (220045,), unit="bpm", valid_low=0, valid_high=350,
        normal=86.0,
    ),
    Variable(
        "height", "continuous", (ITEM_HEIGHT_CM, ITEM_HEIGHT_IN), unit="cm", valid_low=50,
        valid_high=240, normal=170.0, conversions={ITEM_HEIGHT_IN: "inch_to_cm"},
    ),
    Variable(
        "mean_bp", "continuous", (220052, 220181, 225312), unit="mmHg", valid_low=14,
        valid_high=330, normal=77.0,
    ),
    Variable(
        "spo2", "continuous", (220277,), (50817,), unit="%", valid_low=0, valid_high=100,
        normal=98.0,
    ),
    Variable(
        "resp_rate", "continuous", (220210, 224690), unit="insp/min", valid_low=0,
        valid_high=300, normal=19.0,
    ),
    Variable(
        "systolic_bp", "continuous", (220050, 220179, 225309), unit="mmHg", valid_low=0,
        valid_high=375, normal=118.0,
    ),
    Variable(
        "temperature", "continuous", (ITEM_TEMP_C, ITEM_TEMP_F), unit="degC", valid_low=26,
        valid_high=45, normal=36.6, conversions={ITEM_TEMP_F: "fahrenheit_to_celsius"},
    ),
    Variable(
        "weight", "continuous", (ITEM_WEIGHT_ADMIT, ITEM_WEIGHT_DAILY, ITEM_WEIGHT_LB),
        unit="kg", valid_low=1, valid_high=250, normal=81.0,
        conversions={ITEM_WEIGHT_LB: "pound_to_kg"},
    ),
    Variable(
        "ph", "continuous", (223830,), (50820,), unit="", valid_low=6.3, valid_high=8.4,
        normal=7.4,
    ),
)

VARIABLES_BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}
# Admission measurements that describe the patient rather than the hour: charted at any time
# before ICU admission in the stay, they still seed the first bin (mimic3-benchmarks reads
# height and weight from the whole episode).
STATIC = ("height", "weight")
CONTINUOUS = tuple(v.name for v in VARIABLES if v.kind == "continuous")
CATEGORICAL = tuple(v.name for v in VARIABLES if v.kind == "categorical")

# Text-valued items: value text -> numeric code.
TEXT_VALUE_MAPS: dict[int, dict[str, int]] = {
    ITEM_GCS_EYE: GCS_EYE_TEXT,
    ITEM_GCS_VERBAL: GCS_VERBAL_TEXT,
    ITEM_GCS_MOTOR: GCS_MOTOR_TEXT,
    ITEM_CRR_RIGHT: CAPILLARY_REFILL_TEXT,
    ITEM_CRR_LEFT: CAPILLARY_REFILL_TEXT,
}


def itemid_to_variable() -> dict[int, str]:
    """Map every chartevents/labevents itemid used by raybench to its variable name."""
    mapping: dict[int, str] = {}
    for var in VARIABLES:
        for itemid in (*var.chart_itemids, *var.lab_itemids):
            mapping[itemid] = var.name
    return mapping
