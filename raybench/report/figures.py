"""Deterministic PNG figures (matplotlib, Agg backend) returned as bytes.

Determinism: the Agg backend, fixed rcParams inside ``rc_context`` (the user's matplotlibrc
cannot change the output), ``svg.hashsalt`` fixed, and PNG metadata without the ``Software``
entry (the only varying field matplotlib writes), so the same data gives the same bytes.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["convergence_figure", "fairness_gap_figure", "robustness_figure"]

_RC = {
    "figure.dpi": 100, "savefig.dpi": 150, "font.size": 8, "axes.titlesize": 9,
    "axes.labelsize": 8, "legend.fontsize": 7, "svg.hashsalt": "raybench", "path.simplify": True,
    "axes.prop_cycle": matplotlib.cycler(color=list(matplotlib.colormaps["tab10"].colors)),
}


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _colors(methods: list[str]) -> dict[str, tuple]:
    palette = matplotlib.colormaps["tab10"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def robustness_figure(data: pd.DataFrame, title: str, ylabel: str, dpi: int = 150) -> bytes:
    """Metric vs CXR missing ratio, one line per method with a mean ± SD band.

    ``data`` columns: ``method``, ``missing_ratio``, ``mean``, ``sd`` (methods in plot order).
    """
    methods = list(dict.fromkeys(data["method"]))
    colors = _colors(methods)
    with matplotlib.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        for method in methods:
            part = data[data["method"] == method].sort_values("missing_ratio")
            x, mean = part["missing_ratio"].to_numpy(), part["mean"].to_numpy()
            sd = np.nan_to_num(part["sd"].to_numpy(), nan=0.0)
            ax.plot(x, mean, marker="o", ms=3, lw=1.2, color=colors[method], label=method)
            ax.fill_between(x, mean - sd, mean + sd, color=colors[method], alpha=0.15, lw=0)
        ax.set_xlabel("CXR missing ratio")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(loc="best", frameon=False)
        fig.tight_layout()
        return _png(fig, dpi)


def fairness_gap_figure(gaps: pd.DataFrame, title: str, dpi: int = 150) -> bytes:
    """Grouped bars of the subgroup gap per metric (x) and method (bars), one panel per
    attribute (CareBench Fig. 3 style). Missing gaps are drawn as empty slots.

    ``gaps`` columns: ``method``, ``attribute``, ``metric``, ``gap``.
    """
    attributes = list(dict.fromkeys(gaps["attribute"]))
    methods = list(dict.fromkeys(gaps["method"]))
    metrics = list(dict.fromkeys(gaps["metric"]))
    colors = _colors(methods)
    width = 0.8 / max(len(methods), 1)
    with matplotlib.rc_context(_RC):
        fig, axes = plt.subplots(1, len(attributes), figsize=(2.6 * len(attributes) + 0.6, 3.2),
                                 sharey=True, squeeze=False)
        for ax, attribute in zip(axes[0], attributes, strict=True):
            for j, method in enumerate(methods):
                part = gaps[(gaps["attribute"] == attribute) & (gaps["method"] == method)]
                part = part.set_index("metric").reindex(metrics)
                x = np.arange(len(metrics)) + (j - (len(methods) - 1) / 2) * width
                ax.bar(x, np.nan_to_num(part["gap"].to_numpy(), nan=0.0), width,
                       color=colors[method], label=method)
            ax.set_xticks(np.arange(len(metrics)), metrics)
            ax.set_title(attribute)
            ax.grid(axis="y", alpha=0.3, lw=0.5)
        axes[0][0].set_ylabel("gap (max − min over groups)")
        axes[0][-1].legend(loc="upper right", frameon=False)
        fig.suptitle(title)
        fig.tight_layout()
        return _png(fig, dpi)


def convergence_figure(data: pd.DataFrame, title: str, ylabel: str, dpi: int = 150) -> bytes:
    """Best validation metric so far vs configuration number, one step line per method.

    ``data`` columns: ``method``, ``config_id``, ``best_so_far`` (methods in plot order).
    """
    methods = list(dict.fromkeys(data["method"]))
    colors = _colors(methods)
    with matplotlib.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        for method in methods:
            part = data[data["method"] == method].sort_values("config_id")
            ax.step(part["config_id"], part["best_so_far"], where="post", marker="o", ms=3,
                    lw=1.2, color=colors[method], label=method)
        ax.set_xlabel("configuration number (config_id)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, lw=0.5)
        if methods:
            ax.legend(loc="best", frameon=False)
        fig.tight_layout()
        return _png(fig, dpi)
