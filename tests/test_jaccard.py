"""Clustering Jaccard distance (SPEC 2.6): fast sparse implementation vs the dense reference, and DBSCAN."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from _features import clustered
from vireid.clustering import (
    cluster_dbscan,
    dbscan_sparse,
    jaccard_distance,
    jaccard_distance_sparse,
)
from vireid.clustering.kreciprocal import blocked_knn, expanded_reciprocal_sets, half_k
from vireid.clustering.reference import faiss_knn, jaccard_distance_dense


@pytest.fixture(scope="module")
def feats() -> np.ndarray:
    return clustered(360, 32, 18, 0.6, seed=0)


@pytest.fixture(scope="module")
def dense_ref(feats: np.ndarray) -> np.ndarray:
    return jaccard_distance_dense(feats, k1=20, k2=6)


def test_half_k_rounds_half_to_even() -> None:
    assert [half_k(k) for k in (30, 20, 5, 3, 1)] == [15, 10, 2, 2, 0]


def test_hand_checked_reciprocal_sets_and_two_thirds_rule() -> None:
    # Ranks of 8 samples (first 5 of each row's argsort), built by hand:
    # R(0) = {0,1,2,3,4}; R_half (first 4): R_half(1) = {0,1,2,5} (3 of 4 in R(0): 3 > 8/3, added),
    # R_half(2) = {0,1,2,6} (added), R_half(3) = {0,3,7} (2 of 3: 2 > 2 is false, not added),
    # R_half(4) = {4,5} (1 of 2, not added). So E(0) = {0..6}, 7 excluded.
    nn = np.array(
        [
            [0, 1, 2, 3, 4],
            [1, 0, 2, 5, 6],
            [2, 1, 0, 6, 5],
            [3, 7, 0, 6, 4],
            [4, 0, 5, 6, 7],
            [5, 1, 2, 4, 6],
            [6, 2, 5, 1, 3],
            [7, 3, 6, 5, 4],
        ]
    )
    e = expanded_reciprocal_sets(nn, 5, 4)
    assert e[0].indices.tolist() == [0, 1, 2, 3, 4, 5, 6]
    # R(3): forward {3,7,0,6,4}; 6's first 5 hold 3, 4's first 5 do not -> R(3) = {0,3,6,7}
    r3 = expanded_reciprocal_sets(nn, 5, 1)[3].indices.tolist()
    assert r3 == [0, 3, 6, 7]


def test_expansion_matches_set_based_definition_on_random_ranks() -> None:
    rng = np.random.default_rng(3)
    n, kf, kh = 40, 7, 4
    nn = np.stack([np.concatenate([[i], rng.permutation(np.delete(np.arange(n), i))[: kf - 1]]) for i in range(n)])

    def recip(i: int, m: int) -> set[int]:
        return {int(j) for j in nn[i, :m] if i in nn[j, :m]}

    e = expanded_reciprocal_sets(nn, kf, kh)
    for i in range(n):
        r = recip(i, kf)
        exp = set(r)
        for j in r:
            h = recip(j, kh)
            if len(h & r) > 2.0 / 3.0 * len(h):
                exp |= h
        assert e[i].indices.tolist() == sorted(exp)


def test_knn_matches_faiss_and_stable_ties(feats: np.ndarray) -> None:
    x = torch.nn.functional.normalize(torch.from_numpy(feats), dim=1)
    nn, _, _, _ = blocked_knn(x, 20, block_size=64)
    assert np.array_equal(nn, faiss_knn(x.numpy(), 20))
    # exact ties (duplicated rows) are broken by the lower index
    dup = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    nn, d, _, _ = blocked_knn(torch.from_numpy(dup), 4, block_size=2)
    assert nn[1].tolist() == [1, 2, 4, 0]
    assert nn[4].tolist() == [1, 2, 4, 0]


def test_dense_equals_reference(feats: np.ndarray, dense_ref: np.ndarray) -> None:
    fast = jaccard_distance(feats, k1=20, k2=6, block_size=100)
    assert isinstance(fast, np.ndarray) and fast.dtype == np.float32
    assert np.abs(fast - dense_ref).max() < 1e-5
    assert np.allclose(fast, fast.T, atol=1e-6)
    assert (dense_ref < 1).sum() > 20 * len(feats)  # reciprocal sets are non-trivial


@pytest.mark.parametrize("k1,k2", [(30, 6), (10, 1), (7, 3)])
def test_parameters_match_reference(feats: np.ndarray, k1: int, k2: int) -> None:
    x = feats[:200]
    assert np.abs(jaccard_distance(x, k1=k1, k2=k2) - jaccard_distance_dense(x, k1=k1, k2=k2)).max() < 1e-5


def test_parameters_change_output(feats: np.ndarray) -> None:
    base = jaccard_distance(feats, k1=20, k2=6)
    assert np.abs(base - jaccard_distance(feats, k1=10, k2=6)).max() > 0.05
    assert np.abs(base - jaccard_distance(feats, k1=20, k2=1)).max() > 0.05


def test_torch_in_torch_out(feats: np.ndarray, dense_ref: np.ndarray) -> None:
    out = jaccard_distance(torch.from_numpy(feats), k1=20, k2=6)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert np.abs(out.numpy() - dense_ref).max() < 1e-5


@pytest.mark.parametrize("eps", [0.4, 0.6])
def test_sparse_graph_and_dbscan_labels(feats: np.ndarray, dense_ref: np.ndarray, eps: float) -> None:
    g = jaccard_distance_sparse(feats, k1=20, k2=6, eps=eps)
    assert sp.isspmatrix_csr(g) and g.shape == dense_ref.shape
    dense_fast = jaccard_distance(feats, k1=20, k2=6)
    rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
    assert np.array_equal(g.data, dense_fast[rows, g.indices])
    assert g.nnz == int((dense_fast <= eps).sum())
    assert np.array_equal(g.diagonal(), np.diag(dense_fast))
    assert all(i in g[i].indices for i in range(g.shape[0]))  # self stored explicitly
    labels = dbscan_sparse(g, eps=eps, min_samples=4)
    assert np.array_equal(labels, dbscan_sparse(dense_ref, eps=eps, min_samples=4))
    assert np.array_equal(labels, dbscan_sparse(dense_fast, eps=eps, min_samples=4))
    assert np.array_equal(labels, cluster_dbscan(feats, eps=eps, k1=20, k2=6))
    assert len(set(labels.tolist()) - {-1}) >= 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k1 and k2"):
        jaccard_distance(np.ones((5, 3), np.float32), k1=0)
    with pytest.raises(ValueError, match="NaN"):
        jaccard_distance(np.full((5, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="eps"):
        jaccard_distance_sparse(np.ones((5, 3), np.float32), eps=0)
