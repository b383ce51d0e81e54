"""Preprocessing settings (``raybench preprocess --config FILE``), validated with pydantic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raybench.errors import RaybenchError

SCHEMA_VERSION = 1


class PreprocessConfig(BaseModel):
    """Every choice preprocessing makes; its hash keys the stage caches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_age: int = Field(18, description="adults only: age at admission >= min_age")
    exclude_transfers: bool = Field(True, description="drop stays whose care unit changed")
    exclude_multi_stay_admissions: bool = Field(
        True, description="drop admissions with more than one ICU stay (mimic3-benchmarks)")
    count_stays_after_transfer_filter: bool = Field(
        True, description="count an admission's ICU stays after dropping transfers, as "
                          "mimic3-benchmarks and MedFuse do (false: count every stay)")
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    resample_hours: Literal[1, 2] = 1
    max_hours: int = Field(24 * 14, ge=48, description="EHR history a sample carries: the "
                           "last max_hours before its prediction time (hours)")
    pre_intime_hours: float = Field(2.0, ge=0, description="events of the stay charted this "
                                    "long before intime go into the first bin")
    require_ehr_events: bool = Field(True, description="drop samples whose EHR history holds "
                                     "no event (mimic3-benchmarks)")
    imputations: tuple[Literal["medmod", "carebench"], ...] = ("medmod", "carebench")
    mortality_hours: int = 48
    hourly_min_hours: int = Field(4, description="hourly samples (decompensation, LoS) at "
                                  "whole hours after this one (mimic3-benchmarks: t > 4)")
    decompensation_horizon_hours: int = 24
    cxr_lookback_hours: float = Field(0.0, ge=0, description="accept AP images this long "
                                      "before ICU admission (0 = anchors' behaviour)")
    cxr_image_size: int = Field(256, ge=16, le=1024)
    radiology_uncertain: Literal["zeros", "ones"] = "zeros"
    num_cpus: int | None = Field(None, description="Ray CPUs (default: all)")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> PreprocessConfig:
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) <= 0:
            raise ValueError("split_fractions must be three positive numbers summing to 1")
        if not self.imputations:
            raise ValueError("imputations must name at least one strategy")
        return self

    def digest(self, *fields: str) -> str:
        """Short hash of the named fields (all fields when none are named)."""
        data = self.model_dump(mode="json")
        if fields:
            data = {k: data[k] for k in fields}
        data["schema_version"] = SCHEMA_VERSION
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: Path | None) -> PreprocessConfig:
    """Read a preprocessing YAML; errors name the file, the field and what was expected."""
    if path is None:
        return PreprocessConfig()
    if not Path(path).is_file():
        raise RaybenchError(f"preprocessing config {path} does not exist")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise RaybenchError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RaybenchError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    try:
        return PreprocessConfig(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise RaybenchError(f"{path}: {problems}") from None
