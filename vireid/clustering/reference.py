"""Straightforward dense formulation of the clustering Jaccard distance (SPEC 2.6), for tests and benchmarks.

Written from the SPEC text as the public reference codes do it: a faiss exact kNN (IndexFlatL2 on
L2-normalised features, k1 results per sample, the sample itself included), per-sample Python loops over
k-reciprocal sets, and dense N x N matrices for V, the query-expanded V and the distances. It is slow and
needs several N x N float32 matrices; it exists so that the fast implementation in
:mod:`vireid.clustering.jaccard` can be checked against an independent, obviously-correct version.
Ties in the kNN order follow faiss (which sorts by distance, then by index).
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["jaccard_distance_dense", "faiss_knn"]


def faiss_knn(features: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest neighbours (squared L2, self included) of every row, via faiss IndexFlatL2."""
    index = faiss.IndexFlatL2(features.shape[1])
    index.add(features)
    _, ranks = index.search(features, k)
    return ranks


def _reciprocal(ranks: np.ndarray, i: int, k: int) -> np.ndarray:
    """i's k-reciprocal neighbours: j among ranks[i, :k+1] with i among ranks[j, :k+1] (in i's order)."""
    forward = ranks[i, : k + 1]
    backward = ranks[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def jaccard_distance_dense(
    features: np.ndarray | torch.Tensor, k1: int = 30, k2: int = 6, *, normalize: bool = True
) -> np.ndarray:
    """Dense N x N clustering Jaccard distance by the reference recipe (loops, dense matrices, float32)."""
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    x = x.detach().cpu().float()
    if normalize:
        x = F.normalize(x, dim=1)
    xn = np.ascontiguousarray(x.numpy())
    n = xn.shape[0]
    ranks = faiss_knn(xn, min(k1, n))
    half = int(np.around(k1 / 2.0))

    full_sets = [_reciprocal(ranks, i, k1) for i in range(n)]
    half_sets = [_reciprocal(ranks, i, half) for i in range(n)]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = full_sets[i]
        expanded = members
        for cand in members:
            cand_set = half_sets[cand]
            if len(np.intersect1d(cand_set, members)) > 2.0 / 3.0 * len(cand_set):
                expanded = np.append(expanded, cand_set)
        expanded = np.unique(expanded)
        d2 = 2.0 - 2.0 * torch.mm(x[i : i + 1], x[expanded].t())
        v[i, expanded] = F.softmax(-d2, dim=1).view(-1).numpy()

    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i, :] = np.mean(v[ranks[i, :k2], :], axis=0)
        v = v_qe

    inverted = [np.where(v[:, k] != 0)[0] for k in range(n)]
    dist = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        s = np.zeros(n, dtype=np.float32)
        nonzero = np.where(v[i, :] != 0)[0]
        for k in nonzero:
            rows = inverted[k]
            s[rows] += np.minimum(v[i, k], v[rows, k])
        dist[i] = 1.0 - s / (2.0 - s)
    dist[dist < 0] = 0.0
    return dist
