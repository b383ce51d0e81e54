"""Golden digests of each preprocessing stage's output on the small synthetic tree.

``tests/test_stage_versions.py`` compares a fresh run with ``tests/data/stage_golden.json``:
a stage whose output changed while its ``STAGE_VERSION`` did not fails the test. After a
deliberate change, bump the stage's version and refresh the file:

    .venv/bin/python tests/stage_golden.py      # rewrites tests/data/stage_golden.json

Digests are of the content, normalised so that library upgrades do not break them: Parquet
tables through their column names, types and values (floats to 5 significant digits, each
image as its mean grey level), JSON with floats to 5 significant digits.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

GOLDEN = Path(__file__).parent / "data" / "stage_golden.json"
STAGES = ("cohort", "samples", "cxr", "ehr", "labels")
SYNTH = {"patients": 300, "seed": 7, "image_size": 64}  # the synth_small fixture
CXR_IMAGE_SIZE = 64  # the prepared_small fixture


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def _table_text(path: Path) -> str:
    frame = pd.read_parquet(path)
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object and len(values) and isinstance(values.iloc[0], bytes):
            frame[column] = [int(round(np.frombuffer(v, np.uint8).mean())) for v in values]
    schema = ",".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items())
    return schema + "\n" + frame.to_csv(index=False, float_format="%.5g")


def content_digest(stage_dir: Path) -> str:
    """Normalised digest of every file a stage wrote (its marker excluded)."""
    digest = hashlib.sha256()
    for path in sorted(Path(stage_dir).rglob("*")):
        if not path.is_file() or path.name == "_SUCCESS.json":
            continue
        digest.update(path.relative_to(stage_dir).as_posix().encode())
        if path.suffix == ".parquet":
            digest.update(_table_text(path).encode())
        elif path.suffix == ".json":
            digest.update(json.dumps(_round(json.loads(path.read_text())),
                                     sort_keys=True).encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def inputs_digest(raw: Path) -> str:
    """Digest of the synthetic raw tree's tables (the golden is only valid for these)."""
    digest = hashlib.sha256()
    for path in sorted(Path(raw).rglob("*.csv.gz")):
        digest.update(path.relative_to(raw).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def current(raw: Path, prepared: Path) -> dict:
    """The golden record of a prepared directory built from ``raw``."""
    from preprocessing.pipeline import STAGE_VERSIONS

    return {"inputs": inputs_digest(raw),
            "stages": {name: {"version": STAGE_VERSIONS[name],
                              "digest": content_digest(prepared / name)} for name in STAGES}}


def main() -> None:
    """Build the small synthetic tree, preprocess it and rewrite the golden file."""
    from preprocessing.config import PreprocessConfig
    from preprocessing.pipeline import run_preprocess
    from preprocessing.synth.generator import SynthConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        generate(SynthConfig(out=raw, **SYNTH))
        run_preprocess(raw / "mimic-iv", raw / "mimic-cxr-jpg", prepared,
                       config=PreprocessConfig(cxr_image_size=CXR_IMAGE_SIZE), show=False)
        record = current(raw, prepared)
    GOLDEN.write_text(json.dumps(record, indent=2) + "\n")
    json.dump(record, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
