"""Metrics: hand-computed tiny cases for every definition of SPEC 2, then randomised cases against the loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vireid.errors import FeaturesError
from vireid.evaluation.metrics import (
    evaluate_ranking,
    evaluate_trials,
    feature_distance_fn,
    pair_keys,
    pairwise_distance,
)
from vireid.evaluation.reference import reference_metrics

METHODS = ("fast", "sort")
# NumPy arrays are evaluated by the NumPy backend, torch tensors by the torch one: every hand case runs on both
BACKENDS = ("numpy", "torch")


def ev(d, qp, gp, qk=None, gk=None, backend="numpy", **kw):
    d = np.asarray(d, dtype=np.float32)
    return evaluate_ranking(d if backend == "numpy" else torch.from_numpy(d), np.asarray(qp), np.asarray(gp),
                            None if qk is None else np.asarray(qk), None if gk is None else np.asarray(gk), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_standard_cmc_ap_inp_by_hand(method, backend):
    # gallery in distance order: pids 2, 1, 3, 1, 2 ; query pid 1
    # kept ranks (0-based) of the matches: 1 and 3
    # standard CMC: first match at rank 1 -> cmc = [0, 1, 1, ...]
    # AP = (1/2 + 2/4) / 2 = 0.5 ; INP = 2 matches / (last match at 1-based rank 4) = 0.5
    r = ev([[0.1, 0.2, 0.3, 0.4, 0.5]], [1], [2, 1, 3, 1, 2], method=method, backend=backend)
    assert r.cmc.tolist() == [0.0] + [1.0] * 19
    assert r.mAP == pytest.approx(0.5)
    assert r.mINP == pytest.approx(0.5)
    assert r.rank.tolist() == [1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_identity_level_cmc_differs_from_standard(method, backend):
    # gallery in distance order: pids 2, 2, 3, 1 ; query pid 1
    # standard: first match at kept rank 3 -> cmc[0..2] = 0, cmc[3:] = 1
    # identity-level: distinct pids in order 2, 3, 1 -> the query id is at rank 2 -> cmc[0..1] = 0, cmc[2:] = 1
    # AP = 1/4 ; INP = 1/4 (the same in both)
    d, qp, gp = [[0.1, 0.2, 0.3, 0.4]], [1], [2, 2, 3, 1]
    std = ev(d, qp, gp, cmc="standard", method=method, backend=backend)
    idl = ev(d, qp, gp, cmc="identity", method=method, backend=backend)
    assert std.cmc[:5].tolist() == [0, 0, 0, 1, 1]
    assert idl.cmc[:5].tolist() == [0, 0, 1, 1, 1]
    assert std.mAP == idl.mAP == pytest.approx(0.25)
    assert std.mINP == pytest.approx(0.25)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_removal_rule_by_hand(method, backend):
    # distance order = index order; pids 1, 2, 1, 1 ; query pid 1 with removal key 7; gallery keys 7, 0, 0, 7
    # removed: gallery 0 and 3 -> kept = [pid 2, pid 1] -> the match is at kept rank 1
    # AP = 1/2, INP = 1/2, cmc = [0, 1, ...]
    d, qp, gp = [[0.1, 0.2, 0.3, 0.4]], [1], [1, 2, 1, 1]
    r = ev(d, qp, gp, [7], [7, 0, 0, 7], method=method, backend=backend)
    assert r.cmc[:3].tolist() == [0, 1, 1]
    assert r.mAP == pytest.approx(0.5) and r.mINP == pytest.approx(0.5)
    # without removal the matches sit at ranks 0, 2, 3: AP = (1/1 + 2/3 + 3/4) / 3, INP = 3/4
    r = ev(d, qp, gp, [-1], [-2, -2, -2, -2], method=method, backend=backend)
    assert r.cmc[0] == 1
    assert r.mAP == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert r.mINP == pytest.approx(0.75)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_same_pid_same_camera_keys(method, backend):
    # query (pid 5, cam 1); gallery (5, 1) removed, (5, 2) kept, (6, 1) kept
    qp, qc = np.array([5]), np.array([1])
    gp, gc = np.array([5, 6, 5]), np.array([1, 1, 2])
    keys = pair_keys(np.r_[qp, gp], np.r_[qc, gc])
    assert keys[0] == keys[1] and len(set(keys[1:].tolist())) == 3
    # distance order = index order -> kept: (6, 1), (5, 2): match at kept rank 1
    r = ev([[0.1, 0.2, 0.3]], qp, gp, keys[:1], keys[1:], method=method, backend=backend)
    assert r.rank.tolist() == [1] and r.mAP == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_invalid_query_excluded(method, backend):
    # query 0 (pid 1): match at rank 0 -> AP 1, INP 1
    # query 1 (pid 9): no gallery image of pid 9 -> invalid
    # query 2 (pid 2): its only match is removed (keys 3 == 3) -> invalid
    # -> 1 valid query: cmc = [1, ...], mAP = mINP = 1
    d = [[0.1, 0.2], [0.1, 0.2], [0.1, 0.2]]
    r = ev(d, [1, 9, 2], [1, 2], [-1, -1, 3], [0, 3], method=method, backend=backend)
    assert r.num_valid == 1 and r.num_query == 3
    assert r.valid.tolist() == [True, False, False]
    assert r.cmc.tolist() == [1.0] * 20
    assert r.mAP == 1.0 and r.mINP == 1.0
    assert np.isnan(r.ap[1]) and np.isnan(r.ap[2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_invalid_query_quirk(method, backend):
    # identity-level, 3 queries: q0 found at identity rank 0, q1 at identity rank 1, q2 invalid (pid 9).
    # reference numerator: rows [1,1,...], [0,1,...], [0,0,...] (the invalid row is all zeros);
    # divisor: 2 valid queries -> cmc[0] = 1/2, cmc[1:] = 1. Identical to ignoring q2, as SPEC 2.1 says.
    d = [[0.1, 0.2], [0.2, 0.1], [0.1, 0.2]]
    gp = [1, 2]
    r_q = ev(d, [1, 1, 9], gp, cmc="identity", invalid_query_quirk=True, method=method, backend=backend)
    r_n = ev(d, [1, 1, 9], gp, cmc="identity", invalid_query_quirk=False, method=method, backend=backend)
    assert r_q.cmc[:3].tolist() == [0.5, 1.0, 1.0]
    np.testing.assert_array_equal(r_q.cmc, r_n.cmc)
    ref = reference_metrics(np.asarray(d), np.array([1, 1, 9]), np.array(gp), cmc="identity",
                            invalid_query_quirk=True)
    np.testing.assert_allclose(r_q.cmc, ref["cmc"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_ties_use_gallery_index_order(method, backend):
    # all distances equal -> stable order = gallery index order
    # pids 2, 1, 1 (query 1): matches at ranks 1, 2 -> AP = (1/2 + 2/3)/2 = 7/12, INP = 2/3, first rank 1
    r = ev([[0.5, 0.5, 0.5]], [1], [2, 1, 1], method=method, backend=backend)
    assert r.rank.tolist() == [1]
    assert r.mAP == pytest.approx(7 / 12) and r.mINP == pytest.approx(2 / 3)
    # pids 1, 2, 1: matches at ranks 0, 2 -> AP = (1 + 2/3)/2 = 5/6, INP = 2/3
    r = ev([[0.5, 0.5, 0.5]], [1], [1, 2, 1], method=method, backend=backend)
    assert r.rank.tolist() == [0] and r.mAP == pytest.approx(5 / 6)
    # -0.0 ties with +0.0: pids 2, 1 at distances 0.0, -0.0 -> stable order keeps pid 2 first -> rank 1
    r = ev([[0.0, -0.0]], [1], [2, 1], method=method, backend=backend)
    assert r.rank.tolist() == [1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_identity_ties(method, backend):
    # distances 0.3, 0.1, 0.1, 0.2 -> stable order: g1 (0.1), g2 (0.1), g3 (0.2), g0 (0.3)
    # pids 1, 3, 2, 3 (query 2): distinct ids in order 3, 2, 1 -> identity rank 1 (id 3 wins the tie by index)
    r = ev([[0.3, 0.1, 0.1, 0.2]], [2], [1, 3, 2, 3], cmc="identity", method=method, backend=backend)
    assert r.rank.tolist() == [1]
    # pids 1, 2, 3, 3 (query 2): order 2, 3, 1 -> identity rank 0 (id 3 ties at 0.1 but comes later)
    r = ev([[0.3, 0.1, 0.1, 0.2]], [2], [1, 2, 3, 3], cmc="identity", method=method, backend=backend)
    assert r.rank.tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_max_rank_padding(method, backend):
    # 3 gallery images, max_rank 20: curve padded with its last value
    # query pid 1 found at rank 2 -> cmc = [0, 0, 1, 1, ..., 1] (20 values)
    r = ev([[0.1, 0.2, 0.3]], [1], [2, 3, 1], method=method, backend=backend)
    assert len(r.cmc) == 20 and r.cmc.tolist() == [0, 0] + [1] * 18
    assert ev([[0.1, 0.2, 0.3]], [1], [2, 3, 1], max_rank=5, method=method,
              backend=backend).cmc.tolist() == [0, 0, 1, 1, 1]


def test_summary_in_percent():
    r = ev([[0.1, 0.2, 0.3, 0.4, 0.5]], [1], [2, 1, 3, 1, 2])
    s = r.summary()
    assert s["rank1"] == 0.0 and s["rank5"] == 100.0 and s["mAP"] == pytest.approx(50.0)
    assert len(s["cmc"]) == 20 and s["num_query"] == 1 and s["num_gallery"] == 5


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cmc", ["standard", "identity"])
def test_random_against_reference(seed, cmc):
    rng = np.random.default_rng(seed)
    Q, G, ids = int(rng.integers(1, 70)), int(rng.integers(1, 120)), int(rng.integers(1, 12))
    qp, gp = rng.integers(0, ids, Q), rng.integers(0, ids, G)
    if seed % 3 == 0:  # many exact ties
        d = rng.integers(0, 4, (Q, G)).astype(np.float32)
    elif seed % 3 == 1:
        d = rng.random((Q, G)).astype(np.float32)
    else:
        d = rng.random((Q, G))  # float64
    qk, gk = (rng.integers(0, 3, Q), rng.integers(0, 3, G)) if seed % 2 else (None, None)
    ref = reference_metrics(d, qp, gp, qk, gk, cmc=cmc, invalid_query_quirk=bool(seed % 2))
    if ref["num_valid"] == 0:
        with pytest.raises(FeaturesError, match="no valid query"):
            evaluate_ranking(d, qp, gp, qk, gk, cmc=cmc)
        return
    for method in METHODS:
        for budget, dist in ((1e-4, d), (512, d), (512, torch.from_numpy(d))):  # one row per chunk, one chunk; torch
            r = evaluate_ranking(dist, qp, gp, qk, gk, cmc=cmc, invalid_query_quirk=bool(seed % 2), method=method,
                                 memory_budget_mb=budget)
            np.testing.assert_allclose(r.cmc * 100, ref["cmc"] * 100, atol=1e-4)
            assert r.mAP * 100 == pytest.approx(ref["mAP"] * 100, abs=1e-4)
            assert r.mINP * 100 == pytest.approx(ref["mINP"] * 100, abs=1e-4)
            np.testing.assert_array_equal(r.rank, ref["rank"])
            np.testing.assert_allclose(r.ap, ref["ap"], equal_nan=True)


def test_feature_callable_equals_matrix_and_torch_input():
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    qp, gp = rng.integers(0, 5, 30), rng.integers(0, 5, 50)
    full = pairwise_distance(qf, gf)  # NumPy in, NumPy out
    full_t = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf))  # torch in, torch out
    assert isinstance(full, np.ndarray) and isinstance(full_t, torch.Tensor)
    # normalised features: d = sqrt(2 - 2 cos)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    expected = np.sqrt(np.maximum(2 - 2 * qn.astype(np.float64) @ gn.T, 0))
    np.testing.assert_allclose(full, expected, atol=1e-5)
    np.testing.assert_allclose(full_t.numpy(), expected, atol=1e-5)
    a = evaluate_ranking(feature_distance_fn(qf, gf, device="cpu"), qp, gp, memory_budget_mb=0.01)
    b = evaluate_ranking(full, qp, gp)
    c = evaluate_ranking(full, torch.from_numpy(qp), gp)
    d = evaluate_ranking(feature_distance_fn(torch.from_numpy(qf), torch.from_numpy(gf)), qp, gp,
                         memory_budget_mb=0.01)
    for x in (b, c, d):
        np.testing.assert_array_equal(a.rank, x.rank)
        assert a.mAP == pytest.approx(x.mAP, abs=1e-12)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(FeaturesError, match="gallery pids must be a 1-D array of length 2"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2, 3])
    with pytest.raises(FeaturesError, match="must hold integers"):
        evaluate_ranking(np.zeros((1, 2)), np.array([1.0]), np.array([1, 2]))
    with pytest.raises(FeaturesError, match="NaN or infinite"):
        evaluate_ranking(np.array([[np.nan, 0.1]]), np.array([1]), np.array([1, 2]))
    with pytest.raises(FeaturesError, match="no valid query"):
        evaluate_ranking(np.zeros((1, 2)), np.array([7]), np.array([1, 2]))
    with pytest.raises(FeaturesError, match="NaN or infinite"):
        feature_distance_fn(np.full((2, 3), np.inf, np.float32), np.ones((2, 3), np.float32))


def test_half_precision_and_device_argument():
    # float16 distances are upcast exactly: same order, same ties (pids 2, 1, 1 at 0.1, 0.2, 0.2 -> ranks 1, 2)
    d = torch.tensor([[0.1, 0.2, 0.2]], dtype=torch.float16)
    for x in (d, d.bfloat16(), d.float()):
        r = evaluate_ranking(x, [1], [2, 1, 1], device="cpu")
        assert r.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


# ---------------------------------------------------------------------------------------------------------------
# several trials sharing the queries (evaluate_trials): the union path against the loop, trial by trial


def multishot(rng: np.random.Generator, n_ids: int, shots: int, trials: int):
    """A SYSU-multi-shot-shaped case: gallery folders (pid, cam) in a fixed order, each trial takes ``shots`` images
    of every folder in a trial-specific order (like rand_perm_cam). Union columns are shuffled, so the union's
    column order is not the trials' order; some columns are in no trial."""
    folders = [(p, c) for c in (1, 2, 4, 5) for p in range(n_ids) if rng.random() < 0.8]
    sizes = rng.integers(1, 2 * shots + 1, len(folders))
    perm = rng.permutation(int(sizes.sum()))
    starts = np.r_[0, np.cumsum(sizes)]
    gp = np.empty(perm.size, np.int64)
    gc = np.empty(perm.size, np.int64)
    for (p, c), a, b in zip(folders, starts[:-1], starts[1:]):
        gp[perm[a:b]], gc[perm[a:b]] = p, c
    cols = [np.concatenate([perm[a:b][rng.permutation(b - a)[:shots]] for a, b in zip(starts[:-1], starts[1:])])
            for _ in range(trials)]
    return gp, gc, cols


def no_fallback(monkeypatch):
    from vireid.evaluation import metrics

    def boom(*args, **kwargs):
        raise AssertionError("the union path fell back to per-trial evaluation")

    monkeypatch.setattr(metrics, "_per_trial", boom)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cmc", ["standard", "identity"])
def test_trials_union_against_reference(monkeypatch, seed, cmc):
    rng = np.random.default_rng(100 + seed)
    # 12-20 trials: the per-trial counters need more than one int64 lane (at most 9 trials of 7 bits each)
    gp, gc, cols = multishot(rng, n_ids=int(rng.integers(2, 9)), shots=int(rng.integers(1, 5)),
                             trials=int(rng.integers(2, 7)) if seed % 4 else int(rng.integers(12, 21)))
    Q, U = int(rng.integers(5, 60)), gp.size
    qp = rng.integers(0, gp.max() + 3, Q)  # some query ids have no gallery image: invalid queries
    qc = rng.choice([3, 6], Q)
    if seed % 3 == 0:  # many exact ties (between matches and other identities too)
        d = rng.integers(0, 4, (Q, U)).astype(np.float32)
    elif seed % 3 == 1:  # ties, and -0.0 (ties with 0.0)
        d = (rng.integers(0, 40, (Q, U)) / 8).astype(np.float32)
        d[(d == 0) & (rng.random((Q, U)) < 0.5)] = -0.0
    else:  # any finite values are distances here, negative ones too
        d = rng.standard_normal((Q, U), dtype=np.float32)
    if seed % 2:  # SYSU location rule: cam3 queries lose every cam2 image
        qk, gk = np.where(qc == 3, 2, -1), np.where(gc == 2, 2, -2)
    else:  # same pid and same camera removed (cam 3 plays cam 1 here so that it triggers)
        keys = pair_keys(np.r_[qp, gp], np.r_[np.where(qc == 3, 1, qc), gc])
        qk, gk = keys[:Q], keys[Q:]
    refs = [reference_metrics(d[:, c], qp, gp[c], qk, gk[c], cmc=cmc, invalid_query_quirk=bool(seed % 2))
            for c in cols]
    if any(r["num_valid"] == 0 for r in refs):
        qp[0], qk[0] = gp[cols[0][0]], -7  # make query 0 valid in every trial (its id is in every trial)
        refs = [reference_metrics(d[:, c], qp, gp[c], qk, gk[c], cmc=cmc, invalid_query_quirk=bool(seed % 2))
                for c in cols]
    kw = dict(cmc=cmc, invalid_query_quirk=bool(seed % 2))
    per_trial = evaluate_trials(d, cols, qp, gp, qk, gk, method="per-trial", **kw)
    no_fallback(monkeypatch)
    for budget in (1e-3, 512):  # one query row per chunk, and one chunk
        union = evaluate_trials(d, cols, qp, gp, qk, gk, method="union", memory_budget_mb=budget, **kw)
        assert len(union) == len(cols)
        for r, p, ref, c in zip(union, per_trial, refs, cols):
            np.testing.assert_array_equal(r.rank, ref["rank"])
            np.testing.assert_allclose(r.ap, ref["ap"], equal_nan=True, atol=1e-12)
            np.testing.assert_allclose(r.inp, ref["inp"], equal_nan=True, atol=1e-12)
            np.testing.assert_allclose(r.cmc * 100, ref["cmc"] * 100, atol=1e-4)
            assert r.mAP * 100 == pytest.approx(ref["mAP"] * 100, abs=1e-4)
            assert r.mINP * 100 == pytest.approx(ref["mINP"] * 100, abs=1e-4)
            assert r.num_valid == ref["num_valid"] and r.num_gallery == c.size
            np.testing.assert_array_equal(r.rank, p.rank)


def test_trials_union_breaks_ties_in_each_trials_order(monkeypatch):
    # union columns: 0 = pid 1, 1 = pid 2, 2 = pid 1; every distance equal (a three-way tie)
    # trial 0 lists [1, 0] and trial 1 lists [1, 2]: pid 2 first in both, so the stable order is (pid 2, pid 1) and
    # the query (pid 1) is found at rank 1 in each trial: AP = 1/2, INP = 1/2, identity rank 1.
    # (Sorting the union by column would put column 0, pid 1, first: rank 0 -- wrong for trial 0.)
    d = np.full((1, 3), 0.5, np.float32)
    no_fallback(monkeypatch)
    for cmc in ("standard", "identity"):
        res = evaluate_trials(d, [np.array([1, 0]), np.array([1, 2])], [1], [1, 2, 1], cmc=cmc, method="union")
        for r in res:
            assert r.rank.tolist() == [1] and r.mAP == pytest.approx(0.5) and r.mINP == pytest.approx(0.5)
            assert r.cmc[:2].tolist() == [0.0, 1.0] and r.num_gallery == 2


def test_trials_inconsistent_orders_fall_back_exactly():
    # trial 0 lists [1, 0] (pid 2 first), trial 1 lists [0, 1] (pid 1 first): no single tie order serves both,
    # so the trials are evaluated one by one. Equal distances: query pid 1 at rank 1 in trial 0, rank 0 in trial 1.
    d = np.full((1, 2), 0.5, np.float32)
    res = evaluate_trials(d, [np.array([1, 0]), np.array([0, 1])], [1], [1, 2], method="union")
    assert [r.rank.tolist() for r in res] == [[1], [0]]
    assert [r.mAP for r in res] == [pytest.approx(0.5), 1.0]
    # a column listed twice in one trial is two gallery entries (pid 1 twice after pid 2: AP = (1/2 + 2/3) / 2)
    res = evaluate_trials(d, [np.array([1, 0, 0]), np.array([1, 0])], [1], [1, 2], method="union")
    assert res[0].mAP == pytest.approx((1 / 2 + 2 / 3) / 2) and res[0].num_gallery == 3
    assert res[1].mAP == pytest.approx(0.5)


def test_trials_bad_inputs():
    d = np.zeros((2, 3), np.float32)
    with pytest.raises(FeaturesError, match="trial 1: gallery columns must be a non-empty 1-D integer array in 0..2"):
        evaluate_trials(d, [np.array([0, 1]), np.array([0, 3])], [1, 2], [1, 2, 3])
    with pytest.raises(FeaturesError, match="trial 0: gallery columns"):
        evaluate_trials(d, [np.array([], np.int64)], [1, 2], [1, 2, 3])
    for method in ("union", "per-trial"):  # trial 1 holds only pid 3, which no query has
        with pytest.raises(FeaturesError, match="trial 1: no valid query"):
            evaluate_trials(d, [np.array([0, 1]), np.array([2])], [1, 2], [1, 2, 3], method=method)
    with pytest.raises(FeaturesError, match="NaN or infinite"):
        evaluate_trials(np.full((2, 3), np.nan, np.float32), [np.array([0, 1])], [1, 2], [1, 2, 3])


# ---------------------------------------------------------------------------------------------------------------
# the blocked path of evaluate_trials (blocks of queries, every trial at once) and its distance rows on demand


def no_per_trial(monkeypatch):
    from vireid.evaluation import metrics

    def boom(*args, **kwargs):
        raise AssertionError("the blocked path fell back to per-trial evaluation")

    monkeypatch.setattr(metrics, "_per_trial", boom)


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("cmc", ["standard", "identity"])
def test_trials_blocked_against_reference(monkeypatch, seed, cmc):
    rng = np.random.default_rng(300 + seed)
    gp, gc, cols = multishot(rng, n_ids=int(rng.integers(2, 9)), shots=int(rng.integers(1, 4)),
                             trials=int(rng.integers(1, 7)))
    if seed % 5 == 0:  # a column listed twice in a trial is two gallery entries
        cols[0] = np.r_[cols[0], cols[0][:2]]
    Q, U = int(rng.integers(1, 50)), gp.size
    qp = rng.integers(0, gp.max() + 3, Q)  # some query ids have no gallery image: invalid queries
    qc = rng.choice([3, 6], Q)
    kind = seed % 4
    if kind == 0:  # many exact ties, between matches and other identities too
        d = rng.integers(0, 4, (Q, U)).astype(np.float32)
    elif kind == 1:  # ties, and -0.0 (ties with 0.0)
        d = (rng.integers(0, 40, (Q, U)) / 8).astype(np.float32)
        d[(d == 0) & (rng.random((Q, U)) < 0.5)] = -0.0
    elif kind == 2:  # any finite values are distances here, negative ones too
        d = rng.standard_normal((Q, U), dtype=np.float32)
    else:
        d = rng.random((Q, U), dtype=np.float32)
    if seed % 3 == 0:
        qk = gk = None
    elif seed % 3 == 1:  # SYSU location rule: cam3 queries lose every cam2 image
        qk, gk = np.where(qc == 3, 2, -1), np.where(gc == 2, 2, -2)
    else:  # same pid and same camera removed
        keys = pair_keys(np.r_[qp, gp], np.r_[np.where(qc == 3, 1, qc), gc])
        qk, gk = keys[:Q], keys[Q:]
    quirk = bool(seed % 2)
    refs = [reference_metrics(d[:, c], qp, gp[c], qk, None if gk is None else gk[c], cmc=cmc,
                              invalid_query_quirk=quirk) for c in cols]
    if any(r["num_valid"] == 0 for r in refs):
        qp[0] = gp[cols[0][0]]  # make query 0 valid in every trial (its id is in every trial, nothing removed)
        if qk is not None:
            qk[0] = -7
        refs = [reference_metrics(d[:, c], qp, gp[c], qk, None if gk is None else gk[c], cmc=cmc,
                                  invalid_query_quirk=quirk) for c in cols]
    per_trial = evaluate_trials(d, cols, qp, gp, qk, gk, method="per-trial", cmc=cmc, invalid_query_quirk=quirk)
    no_per_trial(monkeypatch)
    for budget in (1e-3, 512):  # one query row per block, and one block
        res = evaluate_trials(d, cols, qp, gp, qk, gk, method="blocked", memory_budget_mb=budget, cmc=cmc,
                              invalid_query_quirk=quirk, assume_finite=kind in (0, 3))
        assert len(res) == len(cols)
        for r, p, ref, c in zip(res, per_trial, refs, cols):
            np.testing.assert_array_equal(r.rank, ref["rank"])
            np.testing.assert_allclose(r.ap, ref["ap"], equal_nan=True, atol=1e-12)
            np.testing.assert_allclose(r.inp, ref["inp"], equal_nan=True, atol=1e-12)
            np.testing.assert_allclose(r.cmc * 100, ref["cmc"] * 100, atol=1e-4)
            assert r.num_valid == ref["num_valid"] and r.num_gallery == c.size
            # the same numbers as the per-trial path, to the bit
            np.testing.assert_array_equal(r.rank, p.rank)
            np.testing.assert_array_equal(r.ap, p.ap)
            np.testing.assert_array_equal(r.inp, p.inp)
            assert r.mAP == p.mAP and r.mINP == p.mINP and r.cmc.tolist() == p.cmc.tolist()


def test_trials_blocked_breaks_ties_in_each_trials_order(monkeypatch):
    # every distance equal: trial 0 lists [1, 0] (pid 2 first), trial 1 lists [0, 1] (pid 1 first) -- no single
    # order serves both, which the blocked path does not need: rank 1 in trial 0, rank 0 in trial 1
    d = np.full((1, 2), 0.5, np.float32)
    no_per_trial(monkeypatch)
    for cmc in ("standard", "identity"):
        res = evaluate_trials(d, [np.array([1, 0]), np.array([0, 1])], [1], [1, 2], cmc=cmc, method="blocked")
        assert [r.rank.tolist() for r in res] == [[1], [0]]
        assert [r.mAP for r in res] == [pytest.approx(0.5), 1.0]


def test_trials_distance_rows_on_demand(monkeypatch):
    """A distance callable (rows on demand, e.g. feature_rows_distance_fn) gives the matrix's results by every
    path; the blocked path asks for blocks of rows only, the others for the whole matrix."""
    from vireid.evaluation.metrics import feature_rows_distance_fn, l2_normalize

    rng = np.random.default_rng(5)
    feats = rng.normal(size=(90, 16)).astype(np.float32)
    pids = rng.integers(0, 6, 90)
    query, gallery = np.arange(0, 30), np.arange(30, 90)
    cols = [rng.permutation(60)[:25] for _ in range(4)]
    fn = feature_rows_distance_fn(feats, query, gallery)
    full = feature_distance_fn(l2_normalize(feats[query]), l2_normalize(feats[gallery]), normalize=False)(0, 30)
    np.testing.assert_array_equal(fn(0, 30), full)  # bit for bit
    np.testing.assert_array_equal(fn(7, 19), full[7:19])
    calls = []

    def rows(a, b):
        calls.append((a, b))
        return fn(a, b)

    rows.shape = fn.shape
    for method in ("blocked", "union", "per-trial", "auto"):
        calls.clear()
        got = evaluate_trials(rows, cols, pids[query], pids[gallery], cmc="identity", method=method,
                              memory_budget_mb=0.01)
        want = evaluate_trials(full, cols, pids[query], pids[gallery], cmc="identity", method=method,
                               memory_budget_mb=0.01)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.rank, w.rank)
            np.testing.assert_array_equal(g.ap, w.ap)
        if method == "blocked":
            assert len(calls) > 2 and max(b - a for a, b in calls) < 30  # blocks, never the whole matrix
    bad = feats.copy()
    bad[3, 2] = np.nan
    with pytest.raises(FeaturesError, match="query features have NaN or infinite values in 1 rows"):
        feature_rows_distance_fn(bad, query, gallery)
    nan_rows = np.full((3, 4), np.nan, np.float32)

    def nan_fn(a, b):
        return nan_rows[a:b]

    nan_fn.shape = (3, 4)
    for method in ("blocked", "per-trial"):
        with pytest.raises(FeaturesError, match="NaN or infinite"):
            evaluate_trials(nan_fn, [np.array([0, 1])], [1, 2, 1], [1, 2, 3, 1], method=method)


def test_unit_rows_equal_l2_normalize_bit_for_bit():
    from vireid.evaluation.metrics import l2_normalize, unit_rows

    rng = np.random.default_rng(2)
    x = rng.normal(size=(700, 300)).astype(np.float32)  # several blocks of rows
    x[3] = 0.0  # stays zero
    x[4] *= np.float32(1e-30)
    x[5] *= np.float32(1e20)  # the float32 norm overflows: a zero row, finite
    rows = rng.integers(0, 700, 900)
    with np.errstate(over="ignore"):
        out, sq = unit_rows(x, rows)
        want = l2_normalize(x[rows])
    np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(sq, np.einsum("ij,ij->i", want, want))
    x[6, 1] = np.inf
    x[7, 0] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        out, sq = unit_rows(x, np.arange(10))
    assert (~np.isfinite(sq)).nonzero()[0].tolist() == [6, 7]  # exactly the rows that are not finite


def test_progress_bar_passes_items_through_off_a_terminal():
    import sys

    from vireid.evaluation.metrics import progress_bar

    items = [1, 2, 3]
    if not sys.stderr.isatty():  # pytest captures stderr: the items themselves, tqdm not involved
        assert progress_bar(items, desc="x") is items
    assert list(progress_bar(items, desc="x")) == items
