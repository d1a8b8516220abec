"""Histogram of calibration scores with the threshold (matplotlib, imported lazily: not a runtime dependency)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from aaclip.contract.files import atomic_path

log = logging.getLogger(__name__)


def save_score_histogram(path: Path, normal_scores: np.ndarray, threshold: float,
                         anomaly_scores: Optional[np.ndarray] = None, title: str = "") -> bool:
    """Write a PNG of the normal-score histogram (log counts), the threshold and the anomalies if any.

    Returns False (with a warning) when matplotlib is not installed; the plot is optional.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written "
                    "(pip install matplotlib, or aaclip-edge[calibration])")
        return False
    normal = np.asarray(normal_scores, np.float64)
    parts = [normal] + ([np.asarray(anomaly_scores, np.float64)] if anomaly_scores is not None else [])
    everything = np.concatenate(parts + [np.array([threshold])])
    lo, hi = float(everything.min()), float(everything.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 61)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        ax.hist(normal, bins=bins, color="tab:blue", alpha=0.7, label=f"normal (n={normal.size})")
        if anomaly_scores is not None:
            ax.hist(parts[1], bins=bins, color="tab:red", alpha=0.6, label=f"anomalous (n={parts[1].size})")
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.set_yscale("log")
        ax.set_xlabel("image score (normalized)")
        ax.set_ylabel("frames")
        ax.set_title(title or "calibration scores")
        ax.legend()
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return True
