"""The re-clustering figure of unsupervised runs: the ``kind: cluster`` rows their epoch hooks log, plotted.

Every clustering method (AML, ADCA) logs one row per re-clustering (counts, outlier fractions and, with true ids,
ARI / NMI / cross-modal match precision, see :func:`vireid.clustering.clustering_diagnostics`); ``clustering.png``
shows them in order, phases separated, and ``vireid report`` embeds it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cluster_rows", "plot_clustering"]


def cluster_rows(out: Path, phases: Sequence[str]) -> list[dict[str, Any]]:
    """The ``kind: cluster`` rows of the named phases' logs, in order."""
    rows = []
    for name in phases:
        log = out / name / "log.jsonl"
        if log.is_file():
            rows += [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "cluster"]
    return rows


def plot_clustering(out: Path, phases: Sequence[str]) -> Path | None:
    """``clustering.png``: clusters, outlier fraction and (with ground truth) ARI/NMI/match precision per clustering."""
    rows = cluster_rows(out, phases)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("clusters_rgb", "clusters_ir", "num_clusters"):
        axes[0].plot(x, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    axes[0].set_title("clusters")
    for key in ("outlier_fraction_rgb", "outlier_fraction_ir"):
        axes[1].plot(x, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    axes[1].set_title("outlier fraction")
    for key in ("ari", "nmi", "match_precision"):
        if any(key in r for r in rows):
            axes[2].plot(x, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    axes[2].set_title("agreement with ground truth")
    starts = [i for i in range(1, len(rows)) if rows[i]["phase"] != rows[i - 1]["phase"]]
    for ax in axes:
        for s in starts:
            ax.axvline(s - 0.5, color="gray", ls=":")
        ax.set_xlabel("re-clustering (phases separated by dotted lines)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "clustering.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
