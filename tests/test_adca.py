"""ADCA (docs/recipes/adca.md): CMA votes and greedy matching, memory aggregation, dual memories -- hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vireid.losses.adca import (
    CMAMatch,
    DualClusterMemory,
    aggregate_memories,
    cma_match,
    cma_votes,
)


def _at(*degrees: float) -> np.ndarray:
    """Unit 2-d features at these angles: the similarity of two of them is the cosine of their angle difference."""
    r = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def _brute_votes(fr: np.ndarray, fi: np.ndarray, lr: list[int], li: list[int], thr: float) -> np.ndarray:
    """The reference's counting written as the plainest double loop over sample pairs (outliers never vote)."""
    out = np.zeros((max(lr) + 1, max(li) + 1), dtype=np.int64)
    for i, a in enumerate(fr):
        for j, b in enumerate(fi):
            if lr[i] >= 0 and li[j] >= 0 and float(a @ b) >= thr:
                out[lr[i], li[j]] += 1
    return out


# RGB: r0 at 0 and 10 degrees, r1 at 90 and 100, one outlier at 200 (next to IR cluster 2, but it never votes)
F_RGB = _at(0, 10, 90, 100, 200)
L_RGB = [0, 0, 1, 1, -1]
# IR: c0 at 5, c1 at 50 and 95, an outlier at 0 (next to r0, never votes), c2 at 170
F_IR = _at(5, 50, 95, 0, 170)
L_IR = [0, 1, 1, -1, 2]


def test_votes_by_hand() -> None:
    votes, best = cma_votes(F_RGB, F_IR, L_RGB, L_IR, threshold=0.5)
    # pairs with angle <= 60 deg (cos >= 0.5), outliers excluded:
    # r0-c0: (0,5) (10,5) = 2; r0-c1: (0,50) (10,50) = 2 [95 is 95/85 deg away]; r1-c1: (90,50) (90,95)
    # (100,50) (100,95) = 4; r1-c0: 85/95 deg = 0; c2 (170): 170/160/80/70 deg from the RGB clusters = 0
    np.testing.assert_array_equal(votes, [[2, 2, 0], [0, 4, 0]])
    np.testing.assert_array_equal(votes, _brute_votes(F_RGB, F_IR, L_RGB, L_IR, 0.5))
    np.testing.assert_allclose(best[0, :2], [math.cos(math.radians(5)), math.cos(math.radians(40))], rtol=1e-6)
    assert best[1, 1] == pytest.approx(math.cos(math.radians(5)), rel=1e-6)
    assert np.isneginf(best[1, 0]) and np.isneginf(best[0, 2])
    # blocks of 2 RGB rows give the same numbers
    v2, b2 = cma_votes(F_RGB, F_IR, L_RGB, L_IR, threshold=0.5, block_size=2)
    np.testing.assert_array_equal(v2, votes)
    np.testing.assert_array_equal(b2, best)


def test_threshold_is_inclusive_and_changes_votes() -> None:
    # a similarity of exactly 0.5 counts (the reference keeps S >= 0.5), 0.4999 does not
    fr = np.array([[1.0, 0.0]], dtype=np.float32)
    fi = np.array([[0.5, 0.0], [0.4999, 0.0]], dtype=np.float32)
    votes, _ = cma_votes(fr, fi, [0], [0, 1], threshold=0.5)
    np.testing.assert_array_equal(votes, [[1, 0]])
    votes, _ = cma_votes(fr, fi, [0], [0, 1], threshold=0.3)
    np.testing.assert_array_equal(votes, [[1, 1]])


def test_match_greedy_by_votes() -> None:
    m = cma_match(F_RGB, F_IR, L_RGB, L_IR)
    # (r1, c1) has 4 votes and goes first; r0's two candidates tie on 2 votes, c0 holds the closer pair (5 deg
    # against 40 deg) so (r0, c0) is next; (r0, c1) is then blocked twice over
    np.testing.assert_array_equal(m.rgb, [1, 0])
    np.testing.assert_array_equal(m.ir, [1, 0])
    np.testing.assert_array_equal(m.votes, [4, 2])
    np.testing.assert_allclose(m.similarity, [math.cos(math.radians(5))] * 2, rtol=1e-6)


def test_match_ties_broken_by_closest_pair_not_by_id() -> None:
    # one sample per cluster, every pair has 1 vote:
    # r0 at 0, r1 at 45; c0 at 40, c1 at 10 -> angles r0-c0 40, r0-c1 10, r1-c0 5, r1-c1 35.
    # Reference order = descending best similarity: (r1,c0) 5deg, (r0,c1) 10deg, (r1,c1), (r0,c0) -> accepts
    # (r1, c0) then (r0, c1). Visiting ties by id would have taken (r0, c0) and (r1, c1) instead.
    m = cma_match(_at(0, 45), _at(40, 10), [0, 1], [0, 1])
    np.testing.assert_array_equal(m.rgb, [1, 0])
    np.testing.assert_array_equal(m.ir, [0, 1])


def test_match_is_greedy_not_an_optimal_assignment() -> None:
    # r0 (1 sample at 0 deg) links c0 (5 samples around 20 deg: 5 votes) and c1 (4 samples around -40: 4 votes);
    # r1 (1 sample at 60 deg) links only c0 (40 deg away: 5 votes, tie with r0-c0 but a worse best similarity).
    # Greedy: (r0, c0) first, then r1's only partner is taken and (r0, c1) is blocked -> one pair; a maximum
    # weight assignment would pair r0-c1 and r1-c0 (9 votes).
    fr = _at(0, 60)
    fi = _at(19, 20, 21, 22, 18, -40, -41, -39, -42)
    li = [0] * 5 + [1] * 4
    votes, _ = cma_votes(fr, fi, [0, 1], li)
    np.testing.assert_array_equal(votes, [[5, 4], [5, 0]])
    m = cma_match(fr, fi, [0, 1], li)
    np.testing.assert_array_equal(m.rgb, [0])
    np.testing.assert_array_equal(m.ir, [0])


def test_no_votes_no_match() -> None:
    m = cma_match(_at(0), _at(90), [0], [0])
    assert len(m) == 0
    mem_r, mem_i = torch.eye(2), torch.eye(2)
    aggregate_memories(mem_r, mem_i, m)
    torch.testing.assert_close(mem_r, torch.eye(2))


def test_aggregate_by_hand_not_renormalised_ir_unchanged() -> None:
    rgb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ir = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    m = CMAMatch(rgb=np.array([0, 2]), ir=np.array([0, 1]), votes=np.array([1, 1]), similarity=np.ones(2, np.float32))
    aggregate_memories(rgb, ir, m, weight=0.1)
    # 0.1 (1, 0) + 0.9 (0, 1) = (0.1, 0.9); 0.1 (0.6, 0.8) + 0.9 (1, 0) = (0.96, 0.08); row 1 unmatched
    torch.testing.assert_close(rgb, torch.tensor([[0.1, 0.9], [0.0, 1.0], [0.96, 0.08]]))
    assert float(rgb[0].norm()) == pytest.approx(math.sqrt(0.82))  # < 1: left for the momentum update to fix
    torch.testing.assert_close(ir, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_aggregate_rejects_stale_match() -> None:
    m = CMAMatch(rgb=np.array([3]), ir=np.array([0]), votes=np.array([1]), similarity=np.ones(1, np.float32))
    with pytest.raises(ValueError, match="reset them"):
        aggregate_memories(torch.eye(2), torch.eye(2), m)


def test_dual_memory_defaults_are_adca_run_script_values() -> None:
    mem = DualClusterMemory(8)
    assert (mem.rgb.temperature, mem.rgb.momentum) == (0.05, 0.1)
    assert (mem.ir.temperature, mem.ir.momentum) == (0.05, 0.1)


def test_dual_memory_loss_and_update_by_hand() -> None:
    mem = DualClusterMemory(2, temperature=0.5, momentum=0.1)
    mem.reset(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 3.0]]))  # rgb e1, e2; ir e2
    mem.aggregate(CMAMatch(rgb=np.array([0]), ir=np.array([0]), votes=np.array([1]),
                           similarity=np.ones(1, np.float32)))  # rgb row 0 -> (0.1, 0.9)
    f_rgb = torch.tensor([[3.0, 4.0]], requires_grad=True)  # normalised (0.6, 0.8), label 0
    f_ir = torch.tensor([[1.0, 0.0]], requires_grad=True)   # label 0 (IR's only cluster)
    terms = mem(f_rgb, torch.tensor([0]), f_ir, torch.tensor([0]))
    # RGB logits / 0.5: (0.6*0.1 + 0.8*0.9, 0.8) / 0.5 = (1.56, 1.6); IR: one cluster -> CE 0
    assert float(terms["mem_rgb"].detach()) == pytest.approx(-1.56 + math.log(math.exp(1.56) + math.exp(1.6)), rel=1e-6)
    assert float(terms["mem_ir"].detach()) == pytest.approx(0.0, abs=1e-7)
    (terms["mem_rgb"] + terms["mem_ir"]).backward()
    # momentum 0.1: rgb row 0 = normalise(0.1 (0.1, 0.9) + 0.9 (0.6, 0.8)) = (0.55, 0.81) / 0.979081
    np.testing.assert_allclose(mem.rgb.memory.numpy(), [[0.561752, 0.827310], [0.0, 1.0]], atol=1e-5)
    # ir row 0 = normalise(0.1 (0, 1) + 0.9 (1, 0)) = (0.9, 0.1) / 0.905539
    np.testing.assert_allclose(mem.ir.memory.numpy(), [[0.993884, 0.110432]], atol=1e-5)
