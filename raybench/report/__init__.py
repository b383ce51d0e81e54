"""Markdown results reports of a finished study directory (``raybench report STUDY_DIR``).

The report is built only from what the study runner wrote (``resolved_study.yaml``,
``trials.parquet``, ``predictions/``); nothing is retrained. See ``docs/reports.md``.
"""

from __future__ import annotations

from raybench.report.build import build_report

__all__ = ["build_report"]
