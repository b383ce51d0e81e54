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
