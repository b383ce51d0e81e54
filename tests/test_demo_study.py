"""The README's demo (`raybench study studies/demo.yaml`) writes a report with every table and
figure. The default-suite test runs the demo file (its data, tasks, cohorts, methods and missing
ratios) with a shrunk search and training (``--set``); the ``slow`` test runs it as is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixture import IDENTIFIER_NAMES, MIMIC_LIKE_ID, assert_sections_and_figures

DEMO = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"
SHRINK = ("search.n_calls=2", "search.n_initial_points=1",
          "seeds=[0,1]", "training.epochs=1", "training.max_train_batches=3")


def _run_demo(storage: Path, *overrides: str) -> Path:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    sets = [arg for item in (f"storage={storage}", *overrides) for arg in ("--set", item)]
    proc = subprocess.run([sys.executable, "-m", "raybench.cli", "study", str(DEMO), *sets],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"report: {storage / 'report' / 'report.md'}" in proc.stdout + proc.stderr
    return storage / "report" / "report.md"


def _check_report(report: Path, n_seeds: int) -> None:
    text = assert_sections_and_figures(report)
    for method in ("ehr_lstm", "cxr_resnet", "joint_fusion", "late_fusion", "medfuse"):
        assert f"| {method} |" in text
    assert f"mean ± SD over {n_seeds} seeds" in text and "(p = " in text
    assert "**average rank**" in text and "No trial failed." in text
    for path in report.parent.iterdir():
        if path.suffix in (".md", ".csv"):
            content = path.read_text()
            assert not IDENTIFIER_NAMES.search(content), path.name
            assert not MIMIC_LIKE_ID.search(content), path.name


def test_demo_study_shrunk_writes_every_table_and_figure(tmp_path):
    _check_report(_run_demo(tmp_path / "demo", *SHRINK), n_seeds=2)


@pytest.mark.slow
def test_demo_study_as_in_the_readme(tmp_path):
    _check_report(_run_demo(tmp_path / "demo"), n_seeds=3)
