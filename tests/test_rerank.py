"""k-reciprocal re-ranking (SPEC 2.5): the sparse NumPy implementation vs the dense published formulation.

The reference (:mod:`vireid.evaluation.rerank_reference`) is the published re_ranking of reid-strong-baseline step
by step (dense matrices, per-sample loops, float16 V and Jaccard arrays as utils/re_ranking.py:47/74/84/87 hold
them, NumPy doing the arithmetic). Where the inputs make every distance exact (dyadic unit vectors, integer
features), both sides see the same bits whatever the BLAS, so the results must be *identical*; the ties such
inputs are full of are broken by the lower index on both sides (the published quicksort leaves their order open:
the reference's tie range).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _features import clustered
from vireid.evaluation.features import validate_features
from vireid.evaluation.metrics import evaluate_ranking
from vireid.evaluation.protocols import build_protocol, evaluate_protocol
from vireid.evaluation.rerank import (
    k_reciprocal_rerank,
    k_reciprocal_rerank_distances,
    round_f16,
)
from vireid.evaluation.rerank_reference import (
    rerank_dense,
    rerank_dense_from_features,
    squared_distances,
)


def dyadic_cross_modal(n_ids: int, per: int, dim: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RegDB-shaped features with exact arithmetic: entries +-1/16 (unit norm for dim 256), so every dot product is a
    multiple of 1/256 and exact in float32 in any summation order. Each identity has a sign pattern; each modality
    flips a fixed set of 48 of its signs, each image 24 more at random. Returns ([visible; thermal] features, pids)."""
    rng = np.random.default_rng(seed)
    centres = rng.choice([-1.0, 1.0], (n_ids, dim))
    out = []
    for _modality in range(2):
        shift = np.ones((n_ids, dim))
        for p in range(n_ids):
            shift[p, rng.choice(dim, 48, replace=False)] = -1.0
        for p in range(n_ids):
            for _ in range(per):
                f = centres[p] * shift[p]
                f[rng.choice(dim, 24, replace=False)] *= -1.0
                out.append(f)
    pids = np.tile(np.repeat(np.arange(n_ids), per), 2)
    return (np.asarray(out) / np.sqrt(dim)).astype(np.float32), pids


@pytest.fixture(scope="module")
def qg() -> tuple[np.ndarray, np.ndarray]:
    x = clustered(480, 32, 24, 0.7, seed=1)
    return x[:110], x[110:]


def test_round_f16_is_the_float16_cast() -> None:
    rng = np.random.default_rng(0)
    halves = np.unique(rng.random(200_000).astype(np.float16)).astype(np.float64)
    mids = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)  # exact halfway cases: ties to even
    x = np.concatenate([
        rng.random(100_000).astype(np.float32) * 2, mids, -mids,
        (rng.random(10_000) * 2.0**-14).astype(np.float32),  # float16 subnormals
        np.float32([0.0, -0.0, 1.0, 2.0, 6.1e-5, 5.9e-8, 2.0**-25]),
    ])
    np.testing.assert_array_equal(round_f16(x.copy()), x.astype(np.float16).astype(np.float32))


def test_reference_holds_v_and_jaccard_in_float16() -> None:
    # the reference's float16 arrays: its output's Jaccard part is a float16 value times f16(0.7), rounded to
    # float16: (final - 0.3 M) / 1 must be float16-representable up to the float32 addition
    x = clustered(120, 16, 8, 0.7, seed=3)
    a = squared_distances(x / np.linalg.norm(x, axis=1, keepdims=True))
    nq = 30
    m = (a / a.max(axis=0)).T[:nq, nq:]
    for precision, representable in (("float16", True), ("float32", False)):
        out = rerank_dense(a, nq, precision=precision)
        jac = out - m * np.float32(0.3)
        close = np.abs(jac - jac.astype(np.float16).astype(np.float32)) <= 2e-7
        assert close.all() == representable, precision


def _agree_up_to_gemm_rounding(a: np.ndarray, b: np.ndarray, precision: str) -> None:
    """Two re-rankings of the same float features whose distance GEMMs ran in other block shapes. A BLAS may sum a
    dot product in another order for another shape (OpenBLAS on AVX2 does: ~1% of entries move by 1-2 float32 ulps),
    so the bits need not match; exact inputs (dyadic features) must match bit for bit (tests below). Allowed: float32
    ulps everywhere, and in float16 mode a rare flipped float16 rounding (one float16 ulp, < 2e-3 near 1); the
    ranked lists stay the same."""
    diff = np.abs(a - b)
    if precision == "float32":
        assert diff.max() <= 1e-6, diff.max()
    else:
        assert diff.max() <= 2e-3 and np.mean(diff > 1e-6) < 1e-3, (diff.max(), np.mean(diff > 1e-6))
    same_rank = np.argsort(a, axis=1, kind="stable") == np.argsort(b, axis=1, kind="stable")
    assert same_rank.mean() >= 0.999, same_rank.mean()


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_equals_dense_reference(qg: tuple[np.ndarray, np.ndarray], precision: str) -> None:
    q, g = qg
    fast = k_reciprocal_rerank(q, g, block_size=96, precision=precision)
    ref = rerank_dense_from_features(q, g, precision=precision)
    assert fast.shape == (len(q), len(g)) and fast.dtype == np.float32
    _agree_up_to_gemm_rounding(fast, ref, precision)
    # re-ranking actually moved things: not just lambda x original distance
    assert np.abs(ref - 0.3 * ref.max()).max() > 0.1


def test_default_is_float16_and_differs_from_float32(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    d16, d32 = k_reciprocal_rerank(q, g), k_reciprocal_rerank(q, g, precision="float32")
    np.testing.assert_array_equal(d16, k_reciprocal_rerank(q, g, precision="float16"))
    diff = np.abs(d16 - d32)
    # float16 keeps 11 significant bits: V and the Jaccard term move by up to a few 1e-4, in most entries
    assert np.mean(diff > 0) > 0.5 and 1e-5 < diff.max() < 5e-3


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (10, 1, 0.3), (5, 3, 0.0), (30, 10, 0.5)])
def test_parameters_match_reference_exactly(k1: int, k2: int, lam: float) -> None:
    x, _ = dyadic_cross_modal(12, 10, seed=k1)
    q, g = x[:120], x[120:]
    for precision in ("float16", "float32"):
        fast = k_reciprocal_rerank(q, g, k1, k2, lam, precision=precision, block_size=64)
        ref = rerank_dense_from_features(q, g, k1, k2, lam, precision=precision)
        np.testing.assert_array_equal(fast, ref)


def test_parameters_change_output(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    base = k_reciprocal_rerank(q, g)
    for kw in ({"k1": 10}, {"k2": 1}, {"lambda_value": 0.6}):
        assert np.abs(base - k_reciprocal_rerank(q, g, **kw)).max() > 0.01, kw


def test_lambda_one_is_column_max_normalised_squared_distance(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    x = np.concatenate([q, g])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = squared_distances(x)
    expected = (d / d.max(axis=0)).T[: len(q), len(q):]
    assert np.abs(k_reciprocal_rerank(q, g, lambda_value=1.0) - expected).max() < 1e-6


def test_precomputed_distances_path() -> None:
    x, _ = dyadic_cross_modal(10, 8, seed=4)
    nq = 80
    dist = np.sqrt(squared_distances(x))
    for precision in ("float16", "float32"):
        fast = k_reciprocal_rerank_distances(dist[:nq, nq:], dist[:nq, :nq], dist[nq:, nq:], precision=precision)
        ref = rerank_dense(np.power(dist, 2).astype(np.float32), nq, precision=precision)
        np.testing.assert_array_equal(fast, ref)


def test_torch_input_and_chunking_do_not_change_numbers(qg: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = qg
    a = k_reciprocal_rerank(torch.from_numpy(q), torch.from_numpy(g), block_size=1000)
    b = k_reciprocal_rerank(q, g, block_size=37)
    assert isinstance(a, np.ndarray)
    _agree_up_to_gemm_rounding(a, b, "float16")
    # exact features: every product is exact, so the block size cannot change a bit
    x, _ = dyadic_cross_modal(12, 10, seed=4)
    exact = [k_reciprocal_rerank(torch.from_numpy(x[:120]), torch.from_numpy(x[120:]), block_size=1000),
             k_reciprocal_rerank(x[:120], x[120:], block_size=37), k_reciprocal_rerank(x[:120], x[120:], block_size=7)]
    np.testing.assert_array_equal(exact[0], exact[1])
    np.testing.assert_array_equal(exact[0], exact[2])


def test_torch_gemm_blocks_agree_with_numpy() -> None:
    # the GPU path computes the GEMM blocks in torch (here on the CPU, to exercise the code); exact features make
    # every product exact, so the blocks and the whole re-ranking agree bit for bit
    from vireid.evaluation.rerank import _Gram, _rerank

    x, _ = dyadic_cross_modal(8, 6, seed=2)
    g_np, g_t = _Gram(x, None), _Gram(x, torch.device("cpu"))
    cols = np.array([3, 17, 40, 41, 90])
    np.testing.assert_array_equal(g_np.block(5, 9, cols), g_t.block(5, 9, cols))
    np.testing.assert_array_equal(g_np.block(0, 96, slice(10, 60)), g_t.block(0, 96, slice(10, 60)))
    np.testing.assert_array_equal(_rerank(g_t, 48, 20, 6, 0.3, "float16", 40), k_reciprocal_rerank(x[:48], x[48:]))


def test_exact_ties_broken_like_stable_argsort() -> None:
    # small integer features: every distance is exact, so duplicated rows give exact ties
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=(60, 4)).astype(np.float32)
    for precision in ("float16", "float32"):
        fast = k_reciprocal_rerank(x[:15], x[15:], k1=6, k2=3, normalize=False, block_size=16, precision=precision)
        ref = rerank_dense(squared_distances(x), 15, k1=6, k2=3, precision=precision)
        np.testing.assert_array_equal(fast, ref)


@pytest.mark.slow  # the dense reference on 4,120 samples: ~15 s on 2 busy cores
def test_regdb_sized_case_equals_published_arithmetic() -> None:
    """2,060 visible x 2,060 thermal (RegDB's test split: 206 ids x 10 images per modality), dyadic features:
    our default equals the dense float16 reference bit for bit, so Rank-1 and mAP are equal; through
    evaluate_protocol too (the path of ``vireid evaluate --rerank``). float32 differs where float16 rounds."""
    x, pids = dyadic_cross_modal(206, 10, seed=7)
    n = len(pids) // 2
    ref = rerank_dense_from_features(x[:n], x[n:])
    ours = k_reciprocal_rerank(x[:n], x[n:])
    np.testing.assert_array_equal(ours, ref)
    r_ref = evaluate_ranking(ref, pids[:n], pids[n:])
    r_ours = evaluate_ranking(ours, pids[:n], pids[n:])
    assert r_ours.cmc.tolist() == r_ref.cmc.tolist() and r_ours.mAP == r_ref.mAP
    # the protocol path: RegDB v2i, re-ranked (float16 by default)
    paths = [f"{'Visible' if m == 0 else 'Thermal'}/{p + 1}/{'v' if m == 0 else 't'}_{k:05d}_{p + 1}.bmp"
             for m in (0, 1) for p in range(206) for k in range(10)]
    fs = validate_features(x, pids, np.repeat([1, 2], n), np.repeat([0, 1], n), np.array(paths))
    res = evaluate_protocol(fs.features, build_protocol("regdb", fs), rerank=True).per_trial[0]
    q = np.nonzero(fs.modalities == 0)[0]
    g = np.nonzero(fs.modalities == 1)[0]
    expected = evaluate_ranking(rerank_dense_from_features(fs.features[q], fs.features[g]), fs.pids[q], fs.pids[g])
    assert res.cmc.tolist() == expected.cmc.tolist() and res.mAP == expected.mAP
    # float32: a different arithmetic, a different matrix (but the same neighbour sets)
    ours32 = k_reciprocal_rerank(x[:n], x[n:], precision="float32")
    assert np.mean(ours32 != ours) > 0.5 and np.abs(ours32 - ours).max() < 5e-3


def test_bad_arguments() -> None:
    q = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="lambda"):
        k_reciprocal_rerank(q, q, lambda_value=2.0)
    with pytest.raises(ValueError, match="Q, D"):
        k_reciprocal_rerank(q, np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="precision"):
        k_reciprocal_rerank(q, q, precision="bfloat16")
