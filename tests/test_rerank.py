"""k-reciprocal re-ranking (SPEC 2.5): sparse chunked implementation vs the dense original formulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vireid.evaluation.rerank import k_reciprocal_rerank, k_reciprocal_rerank_distances
from vireid.evaluation.rerank_reference import rerank_dense, rerank_dense_from_features, squared_distances
from _features import clustered


@pytest.fixture(scope="module")
def qg() -> tuple[np.ndarray, np.ndarray]:
    x = clustered(480, 32, 24, 0.7, seed=1)
    return x[:110], x[110:]


def test_equals_dense_reference(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    fast = k_reciprocal_rerank(q, g, block_size=96)
    ref = rerank_dense_from_features(q, g)
    assert fast.shape == (len(q), len(g)) and fast.dtype == np.float32
    assert np.abs(fast - ref).max() < 1e-5
    # re-ranking actually moved things: not just lambda x original distance
    assert np.abs(fast - ref).max() < 1e-5 < np.abs(ref - 0.3 * ref.max()).max()


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (10, 1, 0.3), (5, 3, 0.0), (30, 10, 0.5)])
def test_parameters_match_reference(qg: tuple[np.ndarray, np.ndarray], k1: int, k2: int, lam: float) -> None:
    q, g = qg
    fast = k_reciprocal_rerank(q, g, k1, k2, lam)
    assert np.abs(fast - rerank_dense_from_features(q, g, k1, k2, lam)).max() < 1e-5


def test_parameters_change_output(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    base = k_reciprocal_rerank(q, g)
    for kw in (dict(k1=10), dict(k2=1), dict(lambda_value=0.6)):
        assert np.abs(base - k_reciprocal_rerank(q, g, **kw)).max() > 0.01, kw


def test_lambda_one_is_column_max_normalised_squared_distance(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    x = np.concatenate([q, g])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = squared_distances(x)
    expected = (d / d.max(axis=0)).T[: len(q), len(q) :]
    assert np.abs(k_reciprocal_rerank(q, g, lambda_value=1.0) - expected).max() < 1e-6


def test_precomputed_distances_path(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    x = np.concatenate([q, g])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = np.sqrt(squared_distances(x))
    nq = len(q)
    fast = k_reciprocal_rerank_distances(dist[:nq, nq:], dist[:nq, :nq], dist[nq:, nq:], block_size=64)
    ref = rerank_dense(np.power(dist, 2).astype(np.float32), nq)
    assert np.abs(fast - ref).max() < 1e-6


def test_torch_input_and_chunking_do_not_change_numbers(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    a = k_reciprocal_rerank(torch.from_numpy(q), torch.from_numpy(g), block_size=1000)
    b = k_reciprocal_rerank(q, g, block_size=37)
    assert isinstance(a, np.ndarray)
    assert np.abs(a - b).max() < 1e-6


def test_exact_ties_broken_like_stable_argsort() -> None:
    # small integer features: every distance is exact, so duplicated rows give exact ties
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=(60, 4)).astype(np.float32)
    fast = k_reciprocal_rerank(x[:15], x[15:], k1=6, k2=3, normalize=False, block_size=16)
    ref = rerank_dense(squared_distances(x), 15, k1=6, k2=3)
    assert np.abs(fast - ref).max() < 1e-6


def test_bad_arguments() -> None:
    q = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="lambda"):
        k_reciprocal_rerank(q, q, lambda_value=2.0)
    with pytest.raises(ValueError, match="Q, D"):
        k_reciprocal_rerank(q, np.ones((3, 5), np.float32))
