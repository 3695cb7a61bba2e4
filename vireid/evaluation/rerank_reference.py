"""Straightforward dense k-reciprocal re-ranking (SPEC 2.5), the independent baseline for tests and benchmarks.

Follows the published NumPy formulation (michuanhaohao/reid-strong-baseline, utils/re_ranking.py @ 061be381, the
code behind published "+re-ranking" numbers) step by step with dense (Q + G)^2 matrices and per-sample loops:
column-max normalisation of the squared distances (line 46), full argsort ranks (line 48), k-reciprocal sets and the
2/3 expansion (lines 51-69), ``exp(-d)`` weights normalised per row (lines 70-71), local query expansion with
``np.mean`` (lines 73-78), Jaccard through an inverted index (lines 80-93), and the final
``(1 - lambda) d_J + lambda d`` mix (line 95).

``precision="float16"`` (default) holds V, the expanded V and the Jaccard distance in float16 arrays, as the
published code does (lines 47, 74, 84, 87): NumPy then does the arithmetic. ``precision="float32"`` uses float32
arrays instead. The argsort is stable, so that ties are broken by the lower index (the published quicksort leaves
them unspecified). Slow and memory hungry by design; use :func:`vireid.evaluation.rerank.k_reciprocal_rerank` for
real work.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rerank_dense", "rerank_dense_from_features", "squared_distances"]


def _k_reciprocal(ranks: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = ranks[i, : k + 1]
    backward = ranks[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def rerank_dense(
    squared_dist: np.ndarray, num_query: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
    precision: str = "float16",
) -> np.ndarray:
    """Re-ranked [Q, G] distance from the full (Q + G)^2 matrix of squared distances (queries first)."""
    if precision not in ("float16", "float32"):
        raise ValueError(f"precision must be 'float16' or 'float32', got {precision!r}")
    vtype = np.float16 if precision == "float16" else np.float32
    original = squared_dist.astype(np.float32)
    original = np.transpose(original / np.max(original, axis=0))
    n = original.shape[0]
    ranks = np.argsort(original, axis=1, kind="stable").astype(np.int32)
    half = int(np.around(k1 / 2.0))
    v = np.zeros(original.shape, dtype=vtype)
    for i in range(n):
        members = _k_reciprocal(ranks, i, k1)
        expanded = members
        for cand in members:
            cand_set = _k_reciprocal(ranks, cand, half)
            if len(np.intersect1d(cand_set, members)) > 2.0 / 3.0 * len(cand_set):
                expanded = np.append(expanded, cand_set)
        expanded = np.unique(expanded)
        weight: np.ndarray = np.exp(-original[i, expanded])  # float32
        v[i, expanded] = weight / np.sum(weight)  # stored in V's dtype
    original = original[:num_query]
    if k2 != 1:
        v_qe = np.zeros(v.shape, dtype=vtype)
        for i in range(n):
            v_qe[i, :] = np.mean(v[ranks[i, :k2], :], axis=0)
        v = v_qe
    inverted = [np.where(v[:, k] != 0)[0] for k in range(n)]
    jaccard = np.zeros(original.shape, dtype=vtype)
    for i in range(num_query):
        s: np.ndarray = np.zeros(n, dtype=vtype)
        for k in np.where(v[i, :] != 0)[0]:
            rows = inverted[k]
            s[rows] = s[rows] + np.minimum(v[i, k], v[rows, k])
        jaccard[i] = 1 - s / (2 - s)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return np.asarray(final[:num_query, num_query:], dtype=np.float32)


def squared_distances(x: np.ndarray) -> np.ndarray:
    """Full matrix of squared Euclidean distances ``(|x|^2 + |y|^2) - 2 x.y``, clamped at 0, float32."""
    x = np.asarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    return np.maximum((sq[:, None] + sq[None, :]) - np.float32(2.0) * (x @ x.T), np.float32(0.0))


def rerank_dense_from_features(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    normalize: bool = True,
    precision: str = "float16",
) -> np.ndarray:
    """:func:`rerank_dense` on L2-normalised (when ``normalize``) features, distances computed densely."""
    x = np.concatenate([query_features, gallery_features]).astype(np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return rerank_dense(squared_distances(x), len(query_features), k1, k2, lambda_value, precision)
