"""Jaccard distance for clustering (SPEC 2.6): the faiss-kNN variant of k-reciprocal encoding.

This is NOT the test-time re-ranking distance (that is :func:`vireid.evaluation.rerank.k_reciprocal_rerank`,
SPEC 2.5). The clustering variant, used by cluster-contrast / ADCA / AML before DBSCAN, differs in two ways
that change the numbers, so the two are kept under separate names:

* its kNN list holds ``k1`` entries *including the sample itself* (faiss returns k1 results and the
  reciprocal test slices ``[:k1 + 1]`` of a k1-wide array), one fewer than re-ranking's ``k1 + 1``;
* the weights of a row are ``softmax(-d^2)`` over the expanded set with ``d^2 = 2 - 2 x.y`` on L2-normalised
  features, instead of ``exp(-d^2 / max)`` normalised by the row sum.

Everything else is shared: reciprocal sets for ``k1`` and ``round(k1 / 2)`` (round half to even), the 2/3
expansion rule, local query expansion over the ``k2`` nearest, and ``d_J = 1 - s / (2 - s)`` with
``s = sum_k min(V_ik, V_jk)`` (``sum max = 2 - sum min`` because rows sum to 1), negatives clamped to 0.

:func:`jaccard_distance` returns the dense N x N matrix (equal to the reference formulation in
:mod:`vireid.clustering.reference` to float32 rounding); :func:`jaccard_distance_sparse` returns only the
entries DBSCAN can use (``<= eps``) as a CSR matrix, which is all a radius-based clustering needs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from vireid.clustering.kreciprocal import (
    _gather_dots,
    blocked_knn,
    expanded_reciprocal_sets,
    half_k,
    min_sums_symmetric_upper,
    pattern_values,
    query_expansion,
    resolve_device,
)

__all__ = ["jaccard_distance", "jaccard_distance_sparse", "clustering_weights"]


def _check_args(features: np.ndarray | torch.Tensor, k1: int, k2: int) -> None:
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [N, D] array, got shape {tuple(features.shape)}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")


def _as_tensor(features: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(features) if not isinstance(features, torch.Tensor) else features.detach()
    x = x.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf; fix the feature extraction before clustering")
    return x


def clustering_weights(
    features: np.ndarray | torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    *,
    normalize: bool = True,
    device: str | torch.device | None = None,
    block_size: int = 2048,
) -> sp.csr_matrix:
    """The query-expanded k-reciprocal weight matrix V (N x N CSR, float32, rows summing to 1).

    Exposed because it is the sparse core of the clustering Jaccard distance: ``V[i]`` is the softmax of
    ``-(2 - 2 x_i.x_j)`` over i's expanded k-reciprocal set, then averaged over i's ``k2`` nearest.
    """
    _check_args(features, k1, k2)
    dev = resolve_device(device, features)
    x = _as_tensor(features, dev)
    if normalize:
        x = F.normalize(x, dim=1)
    n = x.shape[0]
    nn, _, gram, _ = blocked_knn(x, k1, block_size=block_size)
    expanded = expanded_reciprocal_sets(nn, min(k1, n), min(half_k(k1) + 1, k1, n))
    ip = pattern_values(expanded, nn, gram, lambda missing: _gather_dots(x, missing))
    neg_d2 = -(np.float32(2.0) - np.float32(2.0) * ip)
    # Row-wise softmax over each expanded set (every row holds at least the sample itself).
    starts = expanded.indptr[:-1]
    lengths = np.diff(expanded.indptr)
    row_max = np.maximum.reduceat(neg_d2, starts)
    e = np.exp(neg_d2 - np.repeat(row_max, lengths))
    weights = e / np.repeat(np.add.reduceat(e, starts), lengths)
    v = sp.csr_matrix((weights.astype(np.float32), expanded.indices, expanded.indptr), shape=(n, n))
    return query_expansion(v, nn, k2)


def jaccard_distance(
    features: np.ndarray | torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    *,
    normalize: bool = True,
    device: str | torch.device | None = None,
    block_size: int = 2048,
) -> np.ndarray | torch.Tensor:
    """Dense N x N Jaccard distance of the clustering variant (SPEC 2.6), for DBSCAN(metric='precomputed').

    ``features`` [N, D] are L2-normalised inside (``normalize=False`` if they already are and you want them
    used bit-for-bit). NumPy in gives a NumPy float32 array out; a torch tensor in gives a float32 tensor on
    the same device. Pairs whose expanded sets never meet have distance exactly 1.

    Equal to the reference formulation (:func:`vireid.clustering.reference.jaccard_distance_dense`) to
    float32 rounding (|diff| < 1e-5), given the same kNN order; the kNN itself is exact (float32 GEMM),
    so it can only differ from faiss where two neighbours' distances tie to the last float32 bit.

    Example::

        >>> d = jaccard_distance(np.random.rand(100, 16).astype("float32"), k1=10, k2=3)
        >>> d.shape
        (100, 100)
    """
    dev = resolve_device(device, features)
    v = clustering_weights(features, k1, k2, normalize=normalize, device=dev, block_size=block_size)
    n = v.shape[0]
    out = torch.empty((n, n), dtype=torch.float32, device=dev)
    for r0, r1, s in min_sums_symmetric_upper(v, device=dev):
        out[r0:r1] = (1.0 - s / (2.0 - s)).clamp_(min=0.0)
    _mirror_upper(out, block_size)
    if isinstance(features, torch.Tensor):
        return out
    return out.cpu().numpy()


def _mirror_upper(out: torch.Tensor, block: int) -> None:
    """Copy the upper triangle (diagonal included) of a square matrix onto its lower triangle, in place."""
    n = out.shape[0]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        diag = out[i0:i1, i0:i1]
        out[i0:i1, i0:i1] = torch.triu(diag) + torch.triu(diag, 1).T
        for j0 in range(i1, n, block):
            j1 = min(j0 + block, n)
            out[j0:j1, i0:i1] = out[i0:i1, j0:j1].T


def jaccard_distance_sparse(
    features: np.ndarray | torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    *,
    normalize: bool = True,
    device: str | torch.device | None = None,
    block_size: int = 2048,
) -> sp.csr_matrix:
    """The clustering Jaccard distance restricted to entries ``<= eps``, as an N x N scipy CSR matrix.

    Holds exactly the pairs DBSCAN(eps) treats as neighbours (scikit-learn's radius test is ``d <= eps``),
    with the same values as :func:`jaccard_distance`; the (near-)zero self-distance of every sample is
    always stored explicitly, even when it is exactly 0. Columns are sorted within each row. DBSCAN on this
    graph gives the same labels as on the dense matrix (see :func:`vireid.clustering.dbscan_sparse`).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    dev = resolve_device(device, features)
    v = clustering_weights(features, k1, k2, normalize=normalize, device=dev, block_size=block_size)
    n = v.shape[0]
    rows_parts: list[np.ndarray] = []
    cols_parts: list[np.ndarray] = []
    data_parts: list[np.ndarray] = []
    for r0, r1, s in min_sums_symmetric_upper(v, device=dev):
        d = (1.0 - s / (2.0 - s)).clamp_(min=0.0)
        keep = (s > 0) & (d <= eps)
        diag = torch.arange(r1 - r0, device=dev)
        keep[diag, diag + r0] = True
        keep[:, :r0] = False  # only j >= i was computed
        rr, cc = torch.nonzero(keep, as_tuple=True)
        rows_parts.append(rr.cpu().numpy() + r0)
        cols_parts.append(cc.cpu().numpy())
        data_parts.append(d[rr, cc].cpu().numpy())
    r = np.concatenate(rows_parts)
    c = np.concatenate(cols_parts)
    vals = np.concatenate(data_parts)
    off = r != c
    r, c, vals = np.concatenate([r, c[off]]), np.concatenate([c, r[off]]), np.concatenate([vals, vals[off]])
    order = np.lexsort((c, r))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))])
    return sp.csr_matrix((vals[order], c[order], indptr), shape=(n, n))
