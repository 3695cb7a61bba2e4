"""Ranked-list pictures: each probe with its top-K gallery matches, correct ones framed green, wrong ones red."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vireid.data.images import load_image


def ranked_list_figure(
    root: str | Path,
    probe_paths: Sequence[str],
    gallery_paths: Sequence[str],
    distances: np.ndarray,
    out: str | Path,
    *,
    probe_pids: Sequence[int] | np.ndarray | None = None,
    gallery_pids: Sequence[int] | np.ndarray | None = None,
    top: int = 8,
    title: str | None = None,
) -> Path:
    """Draw one row per probe: the probe, then its ``top`` nearest gallery images with their distances.

    ``distances`` is [P, G] (rows: probes, columns: gallery), ties broken by gallery order. When ``probe_pids`` and
    ``gallery_pids`` are given, each match is framed green (same identity) or red. Images are read from ``root``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    distances = np.asarray(distances)
    top = min(top, distances.shape[1])
    order = np.argsort(distances, axis=1, kind="stable")[:, :top]
    known = probe_pids is not None and gallery_pids is not None
    rows = len(probe_paths)
    fig, axes = plt.subplots(rows, top + 1, figsize=(1.1 * (top + 1), 2.2 * rows), squeeze=False)
    for r in range(rows):
        _show(axes[r, 0], load_image(Path(root) / probe_paths[r]), "probe", None)
        axes[r, 0].add_patch(Rectangle((0, 0), 1, 1, transform=axes[r, 0].transAxes, fill=False, lw=3, ec="#1f5fbf"))
        for k, j in enumerate(order[r]):
            ax = axes[r, k + 1]
            color = None
            if known and gallery_pids is not None and probe_pids is not None:
                color = "#1a9e1a" if gallery_pids[j] == probe_pids[r] else "#d62728"
            _show(ax, load_image(Path(root) / gallery_paths[j]), f"{k + 1}: {distances[r, j]:.2f}", color)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _show(ax, img, label: str, color: str | None) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(np.asarray(img))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(label, fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if color is not None:
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=4, ec=color))
