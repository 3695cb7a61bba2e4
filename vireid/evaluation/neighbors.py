"""k-reciprocal neighbour sets on exact kNN lists (NumPy/SciPy; no torch), shared by re-ranking and clustering.

Test-time re-ranking (:mod:`vireid.evaluation.rerank`, SPEC 2.5) and the clustering Jaccard distance
(:mod:`vireid.clustering.jaccard`, SPEC 2.6) build the same sets from every sample's nearest-neighbour list
``nn[i]`` (ascending distance, ties by the lower index, ``nn[i, 0]`` normally ``i`` itself):

* ``R(i)`` = the j among i's first ``n_forward`` neighbours that have i among their own first ``n_forward``;
  ``R_half`` the same with ``n_half``;
* the expansion: for every member j of R(i), R_half(j) is added when ``|R_half(j) ∩ R(i)| > 2/3 |R_half(j)|``.

Everything is a sparse boolean product over the kNN graph, O(N k^2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

__all__ = [
    "concat_ranges",
    "expanded_reciprocal_sets",
    "half_k",
    "pattern_values",
    "query_expansion",
    "reciprocal_sets",
]


def half_k(k1: int) -> int:
    """``round(k1 / 2)`` with NumPy's round-half-to-even, as both reference codes use ``np.around``."""
    return int(np.around(k1 / 2.0))


def _neighbour_graph(nn: np.ndarray, m: int) -> sp.csr_matrix:
    """Boolean CSR matrix with row i holding i's first m neighbours."""
    n = nn.shape[0]
    m = min(m, nn.shape[1])
    cols = nn[:, :m].reshape(-1)
    indptr = np.arange(0, n * m + 1, m, dtype=np.int64)
    g = sp.csr_matrix((np.ones(n * m, dtype=bool), cols, indptr), shape=(n, n))
    g.sum_duplicates()
    return g


def reciprocal_sets(nn: np.ndarray, m: int) -> sp.csr_matrix:
    """k-reciprocal sets as a symmetric boolean CSR matrix: j in R(i) iff j in top-m(i) and i in top-m(j)."""
    g = _neighbour_graph(nn, m)
    r = g.multiply(g.T).tocsr()
    r.eliminate_zeros()
    r.sort_indices()
    return r


def expanded_reciprocal_sets(nn: np.ndarray, n_forward: int, n_half: int) -> sp.csr_matrix:
    """The expanded k-reciprocal set of every sample, as a boolean CSR pattern with sorted columns.

    ``R(i)`` = the j among i's first ``n_forward`` neighbours that have i among their own first
    ``n_forward``; ``R_half`` the same with ``n_half``. For every member j of R(i), R_half(j) is added when
    ``|R_half(j) ∩ R(i)| > 2/3 |R_half(j)|`` (evaluated in float64 exactly as the references do).

    Vectorised: with R and R_half symmetric, ``(R @ R_half)[i, j] = |R(i) ∩ R_half(j)|``.
    """
    r = reciprocal_sets(nn, n_forward)
    rh = reciprocal_sets(nn, n_half)
    ri = r.astype(np.int32)
    rhi = rh.astype(np.int32)
    counts = (ri @ rhi).multiply(ri).tocsr()  # intersection sizes at the positions of R
    counts.eliminate_zeros()
    half_sizes = np.diff(rhi.indptr)
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    cols = counts.indices
    keep = counts.data.astype(np.float64) > (2.0 / 3.0) * half_sizes[cols].astype(np.float64)
    sel = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.int32), (rows[keep], cols[keep])), shape=counts.shape
    )
    expanded = (ri + sel @ rhi).tocsr()
    expanded.data[:] = 1
    expanded = expanded.astype(bool)
    expanded.eliminate_zeros()
    expanded.sort_indices()
    return expanded


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``range(starts[t], ends[t])`` for all t, vectorised."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total, dtype=np.int64)


def pattern_values(
    pattern: sp.csr_matrix,
    nn: np.ndarray,
    nn_values: np.ndarray,
    compute: Callable[[sp.csr_matrix], np.ndarray],
) -> np.ndarray:
    """Values of a symmetric pairwise quantity at every stored (i, j) of ``pattern``, in pattern order.

    Most expanded-set pairs are already among the kNN lists (as (i, j) or, by symmetry, as (j, i)); their
    values are looked up from ``nn_values``. The rest are computed by ``compute(missing_pattern)`` (values in the
    missing pattern's CSR order).
    """
    n = pattern.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(pattern.indptr))
    cols = pattern.indices.astype(np.int64)
    out = np.empty(pattern.nnz, dtype=np.float32)
    known = np.arange(n, dtype=np.int64)[:, None] * n + nn
    order = np.argsort(known, axis=None, kind="stable")
    keys = known.reshape(-1)[order]
    flat_vals = nn_values.reshape(-1)[order]
    found = np.zeros(pattern.nnz, dtype=bool)
    for query in (rows * n + cols, cols * n + rows):
        pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        hit = (keys[pos] == query) & ~found
        out[hit] = flat_vals[pos[hit]]
        found |= hit
    if not found.all():
        miss = ~found
        counts = np.bincount(rows[miss], minlength=n)
        missing = sp.csr_matrix(
            (np.ones(int(miss.sum()), dtype=bool), cols[miss], np.concatenate([[0], np.cumsum(counts)])),
            shape=pattern.shape,
        )
        out[miss] = compute(missing)
    return out


def query_expansion(v: sp.csr_matrix, nn: np.ndarray, k2: int) -> sp.csr_matrix:
    """Local query expansion: row i becomes the mean of the rows of i's first k2 neighbours (float32).

    ``k2 == 1`` leaves V unchanged, as the references skip the step then. (The summation order is scipy's; the
    re-ranking reproduces the reference's order itself, see :mod:`vireid.evaluation.rerank`.)
    """
    if k2 == 1:
        return v
    n = v.shape[0]
    k2 = min(k2, nn.shape[1])
    cols = nn[:, :k2].reshape(-1)
    indptr = np.arange(0, n * k2 + 1, k2, dtype=np.int64)
    p = sp.csr_matrix((np.ones(n * k2, dtype=np.float32), cols, indptr), shape=(n, n))
    out = (p @ v).tocsr()
    out.data /= np.float32(k2)
    out.sort_indices()
    return out
