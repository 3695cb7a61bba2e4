"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), the original numpy formulation, sparse and chunked.

SPEC 2.5. This is the *test-time re-ranking* variant. It is not the clustering Jaccard distance
(:func:`vireid.clustering.jaccard_distance`, SPEC 2.6), which takes one fewer neighbour for the same k1
and weights neighbours by a softmax of ``2 - 2 x.y``; the two are kept under different names on purpose.

What is computed (over all Q + G samples, queries first):

* ``A`` = squared Euclidean distances; ``M[i, j] = A[j, i] / max_k A[k, i]`` (the reference divides each
  column by its maximum, then transposes; A is symmetric, so row i is scaled by its own maximum);
* initial ranks = stable argsort of M's rows (only the first ``max(k1 + 1, k2)`` are ever used);
* ``R(i)`` = k-reciprocal set within the first ``k1 + 1`` ranks (the sample itself included),
  expanded by ``R_half(j)`` (first ``round(k1 / 2) + 1`` ranks) of each member j when
  ``|R_half(j) ∩ R(i)| > 2/3 |R_half(j)|``;
* ``V[i, j] = exp(-M[i, j])`` over the expanded set, rows normalised to sum 1;
* local query expansion: ``V[i] <- mean of V over i's first k2 ranks`` (skipped when k2 == 1);
* ``d_J(i, j) = 1 - s / (2 - s)``, ``s = sum_k min(V[i, k], V[j, k])``;
* result = ``(1 - lambda) d_J + lambda M`` restricted to query rows and gallery columns.

The dense reference (:func:`vireid.evaluation.rerank_reference.rerank_dense`) holds about five N x N
matrices and argsorts all of them. Here the kNN comes from a blocked symmetric GEMM, V is a CSR matrix
(a few dozen non-zeros per row), and the Jaccard numerator is an inverted-index join chunked over queries,
so memory is O(N D + Q G + N k^2). Results equal the dense formulation to float32 rounding (|diff| <= 1e-5
in practice; the only larger differences can come from two neighbours whose distances tie to the last
float32 bit, where the rank order is not determined by the data).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from vireid.clustering.kreciprocal import (
    _gather_dots,
    _stable_topk_from_candidates,
    blocked_knn,
    expanded_reciprocal_sets,
    half_k,
    min_sums,
    pattern_values,
    query_expansion,
    resolve_device,
)

__all__ = ["k_reciprocal_rerank", "k_reciprocal_rerank_distances"]


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _finish(
    nn: np.ndarray,
    pattern_m: np.ndarray,
    expanded: sp.csr_matrix,
    original_qg: torch.Tensor,
    num_query: int,
    k2: int,
    lambda_value: float,
    device: torch.device,
) -> np.ndarray:
    """From the expanded sets and their M values to the final [Q, G] distance (shared by both entry points)."""
    n = expanded.shape[0]
    lengths = np.diff(expanded.indptr)
    w = np.exp(-pattern_m).astype(np.float32)
    sums = np.add.reduceat(w, expanded.indptr[:-1]) if expanded.nnz else np.zeros(n, np.float32)
    w = w / np.repeat(sums.astype(np.float32), lengths)
    v = sp.csr_matrix((w, expanded.indices, expanded.indptr), shape=(n, n))
    v = query_expansion(v, nn, k2)
    lam = np.float32(lambda_value)
    out = original_qg
    out *= lam
    keep = np.float32(1.0 - lambda_value)
    for r0, r1, s in min_sums(v, np.arange(num_query), np.arange(num_query, n), device=device):
        jac = 1.0 - s / (2.0 - s)
        out[r0:r1] += jac * keep
    return out.cpu().numpy()


@torch.no_grad()
def k_reciprocal_rerank(
    query_features: np.ndarray | torch.Tensor,
    gallery_features: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    normalize: bool = True,
    device: str | torch.device | None = None,
    block_size: int = 2048,
) -> np.ndarray:
    """Re-ranked query x gallery distance [Q, G] (float32 NumPy), from raw features.

    ``normalize=True`` (default) L2-normalises the features first, as every protocol in SPEC 2 does
    before taking Euclidean distances, so raw model outputs can be passed; with ``normalize=False`` the
    features are used as given. Runs on ``device`` (default: the input tensor's device, else CUDA when
    available, else CPU). Peak memory is about ``(Q + G) x D`` features + the ``Q x G`` output + a few
    ``block_size^2`` blocks; no (Q + G)^2 matrix is ever formed.

    Example::

        >>> q = np.random.rand(5, 8).astype("float32"); g = np.random.rand(30, 8).astype("float32")
        >>> k_reciprocal_rerank(q, g, k1=5, k2=2).shape
        (5, 30)
    """
    _check_params(k1, k2, lambda_value)
    dev = resolve_device(device, query_features)
    q = torch.as_tensor(query_features).detach().to(device=dev, dtype=torch.float32)
    g = torch.as_tensor(gallery_features).detach().to(device=dev, dtype=torch.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or len(q) == 0 or len(g) == 0:
        raise ValueError(
            f"query and gallery features must be non-empty [Q, D] and [G, D], got {tuple(q.shape)} and {tuple(g.shape)}"
        )
    x = torch.cat([q, g], dim=0)
    del q, g
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf")
    if normalize:
        x = F.normalize(x, dim=1)
    n, nq = x.shape[0], len(query_features)
    original_qg = torch.empty((nq, n - nq), dtype=torch.float32, device=dev)

    def keep_query_gallery(i0: int, i1: int, j0: int, j1: int, d: torch.Tensor) -> None:
        # rows i0:i1 x cols j0:j1, and (j0 >= i0) its transpose: keep the query-row, gallery-column parts.
        for (a0, a1, b0, b1, block) in ((i0, i1, j0, j1, d), (j0, j1, i0, i1, d.T)):
            r1, c0 = min(a1, nq), max(b0, nq)
            if a0 < r1 and c0 < b1:
                original_qg[a0:r1, c0 - nq : b1 - nq] = block[: r1 - a0, c0 - b0 :]

    nn, nn_d, _, rowmax = blocked_knn(x, max(k1 + 1, k2), block_size=block_size, sink=keep_query_gallery)
    expanded = expanded_reciprocal_sets(nn, min(k1 + 1, n), min(half_k(k1) + 1, n))
    sq = (x * x).sum(dim=1).cpu().numpy()

    def sq_distances(missing: sp.csr_matrix) -> np.ndarray:
        rows = np.repeat(np.arange(n), np.diff(missing.indptr))
        dots = _gather_dots(x, missing)
        return np.maximum((sq[rows] + sq[missing.indices]) - np.float32(2.0) * dots, np.float32(0.0))

    a_vals = pattern_values(expanded, nn, nn_d, sq_distances)
    rows = np.repeat(np.arange(n), np.diff(expanded.indptr))
    pattern_m = a_vals / rowmax[rows]
    original_qg /= torch.from_numpy(rowmax[:nq]).to(dev)[:, None]
    return _finish(nn, pattern_m, expanded, original_qg, nq, k2, lambda_value, dev)


@torch.no_grad()
def k_reciprocal_rerank_distances(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    device: str | torch.device | None = None,
    block_size: int = 2048,
) -> np.ndarray:
    """Re-ranking from precomputed (non-squared) Euclidean distances, the original paper's signature.

    The distances are squared (float32) and assembled into the (Q + G)^2 matrix the caller already holds
    the parts of; everything after that is sparse and chunked as in :func:`k_reciprocal_rerank`.
    """
    _check_params(k1, k2, lambda_value)
    dev = resolve_device(device)
    nq, ng = q_g_dist.shape
    if q_q_dist.shape != (nq, nq) or g_g_dist.shape != (ng, ng):
        raise ValueError(
            f"distance shapes disagree: q_g {q_g_dist.shape}, q_q {q_q_dist.shape}, g_g {g_g_dist.shape}"
        )
    a = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    a = np.power(a, 2).astype(np.float32)
    n = a.shape[0]
    colmax = a.max(axis=0)
    k = min(max(k1 + 1, k2), n)
    nn = np.empty((n, k), dtype=np.int64)
    for i0 in range(0, n, block_size):
        i1 = min(i0 + block_size, n)
        m_rows = torch.from_numpy(np.ascontiguousarray((a[:, i0:i1] / colmax[i0:i1]).T)).to(dev)
        kk = min(k + 1, n)
        vals, idx = torch.topk(m_rows, kk, dim=1, largest=False, sorted=False)
        _, top, _, tie = _stable_topk_from_candidates(vals, idx, vals, k)
        for r in torch.nonzero(tie).flatten().tolist():
            top[r] = torch.argsort(m_rows[r], stable=True)[:k]
        nn[i0:i1] = top.cpu().numpy()
    expanded = expanded_reciprocal_sets(nn, min(k1 + 1, n), min(half_k(k1) + 1, n))
    rows = np.repeat(np.arange(n), np.diff(expanded.indptr))
    pattern_m = a[expanded.indices, rows] / colmax[rows]
    original_qg = torch.from_numpy(np.ascontiguousarray((a[nq:, :nq] / colmax[:nq]).T)).to(dev)
    return _finish(nn, pattern_m, expanded, original_qg, nq, k2, lambda_value, dev)
