"""Per-gallery lookups shared by the NumPy and the torch metric backends (its own module so that neither backend
imports the other)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GalleryIndex", "prepare_gallery"]


@dataclass
class GalleryIndex:
    """Per-gallery lookups shared by all query chunks (NumPy arrays)."""

    g_idx: np.ndarray  # [G] gallery pid -> 0..n_ids-1
    n_ids: int
    id_cols: np.ndarray  # [n_ids, M] gallery columns of each id, ascending, padded with G
    g_key: np.ndarray | None  # [G] removal keys or None (nothing can be removed)


def prepare_gallery(g_pids: np.ndarray, g_keys: np.ndarray | None, q_keys: np.ndarray | None
                    ) -> tuple[GalleryIndex, np.ndarray]:
    """The :class:`GalleryIndex` of a gallery and its sorted distinct pids (shared by both backends)."""
    uniq, g_idx = np.unique(g_pids, return_inverse=True)
    g_idx = g_idx.reshape(-1).astype(np.int64)
    n_ids, G = len(uniq), len(g_pids)
    counts = np.bincount(g_idx, minlength=n_ids)
    m = int(counts.max()) if n_ids else 0
    order = np.argsort(g_idx, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    id_cols = np.full((n_ids, max(m, 1)), G, dtype=np.int64)
    within = np.arange(G) - np.repeat(starts, counts)
    id_cols[g_idx[order], within] = order
    g_key = None
    if g_keys is not None and q_keys is not None and np.intersect1d(g_keys, q_keys).size:
        g_key = np.asarray(g_keys, dtype=np.int64)
    return GalleryIndex(g_idx, n_ids, id_cols, g_key), uniq
