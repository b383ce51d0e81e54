"""Shared fixtures: small synthetic MIMIC trees, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from preprocessing.synth.generator import SynthConfig, generate


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """300 patients, 64 px images: enough stays for signal checks, a few seconds to make."""
    out = tmp_path_factory.mktemp("synth_small")
    generate(SynthConfig(out=out, patients=300, seed=7, image_size=64))
    return out


@pytest.fixture(scope="session")
def prepared_small(synth_small, tmp_path_factory) -> Path:
    """The small synthetic tree run through ``raybench preprocess`` (64 px CXRs)."""
    from preprocessing.config import PreprocessConfig
    from preprocessing.pipeline import run_preprocess

    out = tmp_path_factory.mktemp("prepared_small")
    run_preprocess(synth_small / "mimic-iv", synth_small / "mimic-cxr-jpg", out,
                   config=PreprocessConfig(cxr_image_size=64), show=False)
    return out


@pytest.fixture(scope="session")
def prepared_medium(tmp_path_factory) -> Path:
    """800 patients, 64 px CXRs, MedMod imputation: enough samples for learning tests."""
    from preprocessing.config import PreprocessConfig
    from preprocessing.pipeline import run_preprocess

    raw = tmp_path_factory.mktemp("synth_medium")
    generate(SynthConfig(out=raw, patients=800, seed=11, image_size=96))
    out = tmp_path_factory.mktemp("prepared_medium")
    run_preprocess(raw / "mimic-iv", raw / "mimic-cxr-jpg", out,
                   config=PreprocessConfig(cxr_image_size=64, imputations=("medmod",)),
                   show=False)
    return out
