"""Straightforward dense k-reciprocal re-ranking (SPEC 2.5), the independent baseline for tests/benchmarks.

Follows the original numpy formulation step by step with dense (Q + G)^2 float32 matrices and per-sample
loops: column-max normalisation of the squared distances, full argsort ranks, k-reciprocal sets and the 2/3
expansion, ``exp(-d)`` weights normalised per row, local query expansion, Jaccard through an inverted index,
and the final ``(1 - lambda) d_J + lambda d`` mix. Slow and memory hungry by design; use
:func:`vireid.evaluation.rerank.k_reciprocal_rerank` for real work. The argsort is stable so that ties are
broken by the lower index (the original's quicksort leaves them unspecified).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rerank_dense", "rerank_dense_from_features"]


def _k_reciprocal(ranks: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = ranks[i, : k + 1]
    backward = ranks[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def rerank_dense(
    squared_dist: np.ndarray, num_query: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-ranked [Q, G] distance from the full (Q + G)^2 matrix of squared distances (queries first)."""
    original = squared_dist.astype(np.float32)
    original = np.transpose(original / np.max(original, axis=0))
    n = original.shape[0]
    ranks = np.argsort(original, axis=1, kind="stable").astype(np.int32)
    half = int(np.around(k1 / 2.0))
    v = np.zeros_like(original, dtype=np.float32)
    for i in range(n):
        members = _k_reciprocal(ranks, i, k1)
        expanded = members
        for cand in members:
            cand_set = _k_reciprocal(ranks, cand, half)
            if len(np.intersect1d(cand_set, members)) > 2.0 / 3.0 * len(cand_set):
                expanded = np.append(expanded, cand_set)
        expanded = np.unique(expanded)
        weight = np.exp(-original[i, expanded])
        v[i, expanded] = weight / np.sum(weight)
    original = original[:num_query]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i, :] = np.mean(v[ranks[i, :k2], :], axis=0)
        v = v_qe
    inverted = [np.where(v[:, k] != 0)[0] for k in range(n)]
    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(num_query):
        s = np.zeros(n, dtype=np.float32)
        for k in np.where(v[i, :] != 0)[0]:
            rows = inverted[k]
            s[rows] = s[rows] + np.minimum(v[i, k], v[rows, k])
        jaccard[i] = 1.0 - s / (2.0 - s)
    final = jaccard * np.float32(1.0 - lambda_value) + original * np.float32(lambda_value)
    return final[:num_query, num_query:]


def squared_distances(x: np.ndarray) -> np.ndarray:
    """Full matrix of squared Euclidean distances ``(|x|^2 + |y|^2) - 2 x.y``, clamped at 0, float32."""
    x = np.asarray(x, dtype=np.float32)
    sq = (x * x).sum(axis=1)
    return np.maximum((sq[:, None] + sq[None, :]) - np.float32(2.0) * (x @ x.T), np.float32(0.0))


def rerank_dense_from_features(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """:func:`rerank_dense` on L2-normalised (when ``normalize``) features, distances computed densely."""
    x = np.concatenate([query_features, gallery_features]).astype(np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return rerank_dense(squared_distances(x), len(query_features), k1, k2, lambda_value)
