"""Markdown and number formatting shared by the report sections (pure functions, no I/O)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "METRIC_LABELS", "bold_best", "csv_bytes", "fmt", "fmt_count", "fmt_p", "md_table",
    "mean_sd", "metric_label", "slug",
]

METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC", "f1": "F1", "ece": "ECE",
    "auroc_macro": "macro AUROC", "auprc_macro": "macro AUPRC", "f1_macro": "macro F1",
    "kappa_linear": "kappa (linear)", "kappa": "kappa", "kappa_quadratic": "kappa (quadratic)",
    "accuracy": "accuracy", "los_mad_days": "LoS MAD (days)", "auroc_ovr_macro": "macro AUROC",
}
DASH = "—"


def metric_label(metric: str) -> str:
    """Display name of a ``compute_metrics`` key (``auprc/Shock`` -> ``AUPRC Shock``)."""
    if "/" in metric:
        base, label = metric.split("/", 1)
        return f"{METRIC_LABELS.get(base, base)} {label}"
    return METRIC_LABELS.get(metric, metric)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


def fmt(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; a dash when missing or not finite."""
    if value is None or not np.isfinite(value):
        return DASH
    return f"{value:.{digits}f}"


def fmt_count(value: float) -> str:
    """An integer with thousands separators (``21,797,672``); a dash when missing."""
    if value is None or not np.isfinite(value):
        return DASH
    return f"{int(round(value)):,}"


def fmt_p(p: float) -> str:
    """A p-value: 3 decimals, ``< 0.001`` below that, a dash when missing."""
    if p is None or not np.isfinite(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def mean_sd(values: Sequence[float], digits: int = 3) -> tuple[float, float, str]:
    """``(mean, sd, "mean ± sd")`` of the finite values; SD uses ddof 1 (NaN for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan, DASH
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    text = f"{mean:.{digits}f} ± {sd:.{digits}f}" if arr.size > 1 else f"{mean:.{digits}f}"
    return mean, sd, text


def bold_best(texts: list[str], means: Sequence[float], higher_is_better: bool) -> list[str]:
    """Wrap the entries whose mean is the best (ties all bold) in ``**``."""
    arr = np.asarray(means, dtype=np.float64)
    if not np.isfinite(arr).any():
        return list(texts)
    best = np.nanmax(arr) if higher_is_better else np.nanmin(arr)
    return [f"**{t}**" if np.isfinite(m) and np.isclose(m, best, rtol=0, atol=1e-12) else t
            for t, m in zip(texts, arr, strict=True)]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
             align: str | None = None) -> list[str]:
    """A GitHub markdown table; ``align`` is one char per column (``l``/``r``, default l)."""
    align = align or "l" * len(headers)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic CSV bytes: no index, ``%.6g`` floats, ``\\n`` line ends."""
    return frame.to_csv(index=False, float_format="%.6g", lineterminator="\n").encode("utf-8")
