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


# --------------------------------------------------------------------------------------------------------------------
# the plug-in (vireid/methods/adca.py)

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from vireid.errors import DataError  # noqa: E402
from vireid.methods.adca import (  # noqa: E402
    ADCA,
    ADCAReclusterer,
    ADCASettings,
    DualPseudoLabelSampler,
    cma_association,
    oracle_cma,
)
from vireid.methods.base import Batch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class _FirstTwo(torch.nn.Module):
    """A 'network' whose BN feature is the first two input values of each image (one learnable scale)."""

    feature_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, modality: torch.Tensor):
        return SimpleNamespace(bn=self.scale * x.flatten(1)[:, :2])


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_recipes_state_the_official_run_scripts() -> None:
    from vireid.config import load_config

    sysu = load_config(REPO / "configs/adca/sysu.yaml")
    regdb = load_config(REPO / "configs/adca/regdb.yaml")
    for cfg, eps, iters in ((sysu, 0.6, 200), (regdb, 0.3, 100)):
        m, t = cfg.method, cfg.train
        assert (m.name, m.stages, m.eps, m.min_samples, m.k1, m.k2) == ("adca", 2, eps, 4, 30, 6)
        assert (m.temperature, m.momentum, m.cma_threshold, m.cma_weight) == (0.05, 0.1, 0.5, 0.1)
        assert (m.rgb_ids, m.ir_ids, m.num_instances, m.neck_init_std) == (8, 16, 16, 0.01)
        assert (t.optimizer, t.lr, t.weight_decay, t.epochs, t.steps_per_epoch) == ("adam", 3.5e-4, 5e-4, 50, iters)
        assert (t.schedule, t.milestones, t.gamma, t.validation) == ("step", [20, 40], 0.1, "none")
        assert (cfg.data.height, cfg.data.width) == (288, 144)
        mc = cfg.model
        assert (mc.arch, mc.specific_stages, mc.last_stride, mc.non_local, mc.pooling, mc.gem_p,
                mc.gem_learnable, mc.neck, mc.neck_init) == ("resnet50", 0, 1, False, "gem", 3.0, False, "bnneck",
                                                             "normal")
        assert (cfg.augment.erasing, cfg.augment.adaptive_gray, cfg.eval.flip, cfg.eval.feature) == (0.5, 0.5, True,
                                                                                                     "bn")
    assert sysu.data.dataset == "sysu_mm01" and sysu.eval.protocol == "sysu"
    assert regdb.data.trials == list(range(1, 11)) and regdb.eval.protocol == "regdb"


def test_settings_refuse_bad_values() -> None:
    from vireid.config import load_config
    from vireid.errors import ConfigError

    for bad, field in (("method.stages=3", "method.stages"), ("method.cma_weight=1.5", "method.cma_weight"),
                       ("method.rgb_ids=0", "method.rgb_ids"), ("method.momentum=1", "method.momentum")):
        with pytest.raises(ConfigError, match=field):
            load_config(REPO / "configs/adca/sysu.yaml", [bad])
    with pytest.raises(ConfigError, match="sampler section is not used by method adca"):
        load_config(REPO / "configs/adca/sysu.yaml", ["sampler.num_ids=4"])


def test_training_step_is_both_memories_on_their_own_modality_by_hand() -> None:
    mem = DualClusterMemory(2, temperature=0.5, momentum=0.1)
    mem.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    method = ADCA(_FirstTwo(), mem, num_rgb=4, num_ir=4, height=4, width=2)
    x = torch.zeros(4, 3, 4, 2)
    feats = [(3.0, 4.0), (0.0, 2.0), (1.0, 0.0), (0.0, -1.0)]  # view 1, view 2 (RGB), IR, IR
    for i, (a, b) in enumerate(feats):
        x[i, 0, 0, 0], x[i, 0, 0, 1] = a, b
    batch = Batch(x, torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]), torch.full((4,), -1))
    terms = method.training_step(batch)
    # RGB rows (0.6, 0.8) and (0, 1), label 0, memory e1, e2, tau 0.5: logits (1.2, 1.6) and (0, 2)
    rgb = (_ce([1.2, 1.6], 0) + _ce([0.0, 2.0], 0)) / 2
    # IR rows (1, 0) label 1 and (0, -1) label 0, memory (1, 1)/sqrt2, (1, -1)/sqrt2: logits ±sqrt2
    s = math.sqrt(2.0)
    ir = (_ce([s, s], 1) + _ce([-s, s], 0)) / 2
    assert float(terms["mem_rgb"].detach()) == pytest.approx(rgb, rel=1e-6)
    assert float(terms["mem_ir"].detach()) == pytest.approx(ir, rel=1e-6)
    assert float(terms["loss"].detach()) == pytest.approx(rgb + ir, rel=1e-6)
    terms["loss"].backward()
    # each memory moves with its own rows only, in batch order: rgb row 0 <- (0.6, 0.8) then (0, 1)
    r0 = np.array([0.1, 0.0]) + 0.9 * np.array([0.6, 0.8])
    r0 /= np.linalg.norm(r0)
    r0 = 0.1 * r0 + 0.9 * np.array([0.0, 1.0])
    np.testing.assert_allclose(mem.rgb.memory.numpy(), [r0 / np.linalg.norm(r0), [0.0, 1.0]], atol=1e-5)
    # ir row 0 (1, 1)/sqrt2 <- (0, -1) (label 0); ir row 1 (1, -1)/sqrt2 <- (1, 0) (label 1)
    ir0 = 0.1 * np.array([1.0, 1.0]) / s + 0.9 * np.array([0.0, -1.0])
    ir1 = 0.1 * np.array([1.0, -1.0]) / s + 0.9 * np.array([1.0, 0.0])
    np.testing.assert_allclose(mem.ir.memory.numpy(), [ir0 / np.linalg.norm(ir0), ir1 / np.linalg.norm(ir1)],
                               atol=1e-5)


def test_make_batch_is_two_rgb_views_then_ir_labels_repeated() -> None:
    method = ADCA(_FirstTwo(), DualClusterMemory(2), num_rgb=2, num_ir=2, height=8, width=4)
    rgb = torch.randint(0, 255, (2, 3, 8, 4), dtype=torch.uint8)
    ir = torch.randint(0, 255, (3, 3, 8, 4), dtype=torch.uint8)
    batch = method.make_batch(rgb, ir, torch.tensor([5, 6]), torch.tensor([1, 2, 3]), torch.Generator().manual_seed(0))
    assert batch.labels.tolist() == [5, 6, 5, 6, 1, 2, 3]
    assert batch.modalities.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch.images.shape == (7, 3, 8, 4)
    # the second RGB view is channel-exchanged: all three channels equal
    ex = batch.images[2:4]
    assert torch.equal(ex[:, 0], ex[:, 1]) and torch.equal(ex[:, 1], ex[:, 2])


def test_dual_sampler_draws_each_modality_from_its_own_labels() -> None:
    # RGB: 3 clusters of 4 (+2 outliers); IR: 4 clusters of 3; cameras alternate
    lr = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1])
    li = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    s = DualPseudoLabelSampler(np.arange(14) % 2, np.arange(12) % 3, rgb_ids=2, ir_ids=3, num_instances=4, seed=0,
                               rank=0, world_size=1)
    s.set_labels(lr, li, steps=5)
    batches = list(s)
    assert len(batches) == len(s) == 5
    for r, i in batches:
        assert r.shape == (8,) and i.shape == (12,)
        assert (lr[r] >= 0).all() and (li[i] >= 0).all()           # outliers never drawn
        assert all(len(set(lr[r[k:k + 4]])) == 1 for k in range(0, 8, 4))  # groups of K share a pseudo label
        assert len(set(lr[r[::4]])) == 2 and len(set(li[i[::4]])) == 3    # distinct identities per batch
    assert [b[0].tolist() for b in batches] == [b[0].tolist() for b in s]  # deterministic
    s.set_epoch(1)
    assert [b[0].tolist() for b in batches] != [b[0].tolist() for b in s]
    s.set_labels(lr, li, steps=None)  # one pass over the IR clusters: 4 // 3
    assert len(s) == 1
    with pytest.raises(DataError, match="method.ir_ids"):
        s.set_labels(lr, np.where(li < 2, li, -1), steps=5)


def test_association_for_diagnostics_follows_the_cma_pairs() -> None:
    lr, li = np.array([0, 1, 2, -1, 1]), np.array([0, 1, -1, 1])
    match = CMAMatch(rgb=np.array([2]), ir=np.array([0]), votes=np.array([3]), similarity=np.ones(1, np.float32))
    a = cma_association(lr, li, match)
    # rgb 2 -> ir 0; unmatched rgb 0, 1 -> 2, 3 (after the two IR clusters)
    assert a.labels_rgb.tolist() == [2, 3, 0, -1, 3] and a.labels_ir.tolist() == [0, 1, -1, 1]
    assert (a.num_clusters, a.clusters_rgb, a.clusters_ir) == (4, 3, 2)
    assert cma_association(lr, li, None).labels_rgb.tolist() == [2, 3, 4, -1, 3]


def test_oracle_cma_pairs_true_ids_and_scores_them_by_hand() -> None:
    # RGB: id 7 at (1, 0) twice, id 9 at (0, 1); IR: id 9 at (0, 1), id 7 at (1, 0), id 8 at (0.6, 0.8)
    # votes (cosine >= 0.5): rgb 7 -> ir 7: 2 x 1.0, rgb 7 -> ir 8: 2 x 0.6, rgb 9 -> ir 9: 1 x 1.0, rgb 9 -> ir 8:
    # 1 x 0.8. Greedy by votes, then best similarity: (7, 7) [2, 1.0], (7, 8) skipped, (9, 9) [1, 1.0], (9, 8)
    # skipped -> 2 pairs, both right.
    f_rgb = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    f_ir = np.array([[0, 1], [1, 0], [0.6, 0.8]], np.float32)
    t_rgb, t_ir = np.array([7, 7, 9]), np.array([9, 7, 8])
    assert oracle_cma(f_rgb, f_ir, t_rgb, t_ir) == {"oracle_cma_pairs": 2.0, "oracle_cma_precision": 1.0}
    # IR ids 7 and 9 swap places: rgb 7 -> ir 9 [2, 1.0], (rgb 7 -> ir 8 [2, 0.6] skipped), rgb 9 -> ir 7 [1, 1.0],
    # (rgb 9 -> ir 8 [1, 0.8] skipped) -> 2 pairs, both wrong
    f_ir_swapped = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    assert oracle_cma(f_rgb, f_ir_swapped, t_rgb, t_ir) == {"oracle_cma_pairs": 2.0, "oracle_cma_precision": 0.0}
    # nothing reaches the threshold: no pair, precision undefined
    out = oracle_cma(f_rgb, f_ir, t_rgb, t_ir, threshold=1.5)
    assert out["oracle_cma_pairs"] == 0.0 and math.isnan(out["oracle_cma_precision"])


def _grouped(centres: np.ndarray, per: int, rng: np.random.Generator) -> np.ndarray:
    x = np.repeat(centres, per, axis=0) + 0.01 * rng.standard_normal((len(centres) * per, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_reclusterer_memories_cma_and_resume_by_hand() -> None:
    """Three identities, four images per modality each: RGB near e_g, IR near normalise(e_g + 0.5 e_{g+3}). The
    Jaccard + DBSCAN clusters are the identities; memories are the normalised means; stage 2's CMA pairs cluster g
    with g (cosine 0.89 >= 0.5, cross-identity 0) and moves M_rgb[g] to 0.1 M_rgb[g] + 0.9 M_ir[g]."""
    rng = np.random.default_rng(0)
    eye = np.eye(6, dtype=np.float32)
    f_rgb = _grouped(eye[:3], 4, rng)
    f_ir = _grouped(eye[:3] + 0.5 * eye[3:], 4, rng)
    mods = np.array([0] * 12 + [1] * 12)
    feats = np.concatenate([f_rgb, f_ir])
    calls = []

    def extract(model, cache, modalities, *, flip, feature):
        calls.append(feature)
        assert not flip and np.array_equal(modalities, mods)
        return feats

    settings = ADCASettings(eps=0.6, min_samples=2, k1=4, k2=2)
    mem = DualClusterMemory(6, temperature=settings.temperature, momentum=settings.momentum)
    model = _FirstTwo()
    model.feature_dim = 6
    method = ADCA(model, mem, num_rgb=12, num_ir=12, height=4, width=2)
    sampler = DualPseudoLabelSampler(np.zeros(12), np.ones(12), 2, 2, 4, 0, 0, 1)
    fetch = SimpleNamespace(labels=None)
    truth = np.concatenate([np.repeat([10, 11, 12], 4)] * 2)
    hook = ADCAReclusterer(method, sampler, fetch, None, mods, truth, settings, cma=True, steps=3, phase="stage2",
                           device=torch.device("cpu"), extract=extract)
    rows = []
    hook.bind(rows.append, lambda: 7)
    hook(0)
    assert calls == ["bn", "bn"]  # the image and its mirror image
    expect = np.repeat([0, 1, 2], 4)
    assert method.labels_rgb.tolist() == expect.tolist() and method.labels_ir.tolist() == expect.tolist()
    assert fetch.labels.tolist() == np.concatenate([expect, expect]).tolist() and len(sampler) == 3
    m_ir = np.stack([f_ir[4 * g:4 * g + 4].mean(0) for g in range(3)])
    m_ir /= np.linalg.norm(m_ir, axis=1, keepdims=True)
    m_rgb = np.stack([f_rgb[4 * g:4 * g + 4].mean(0) for g in range(3)])
    m_rgb /= np.linalg.norm(m_rgb, axis=1, keepdims=True)
    np.testing.assert_allclose(mem.ir.memory.numpy(), m_ir, atol=1e-6)
    np.testing.assert_allclose(mem.rgb.memory.numpy(), 0.1 * m_rgb + 0.9 * m_ir, atol=1e-6)  # not renormalised
    (row,) = rows
    assert (row["kind"], row["phase"], row["epoch"], row["global_step"]) == ("cluster", "stage2", 0, 7)
    assert (row["cma_pairs"], row["match_precision"], row["ari_rgb"], row["ari_ir"]) == (3.0, 1.0, 1.0, 1.0)
    assert (row["oracle_cma_pairs"], row["oracle_cma_precision"]) == (3.0, 1.0)
    # resumed in the same epoch: the saved labels and memories are used, nothing is re-extracted
    before = mem.rgb.memory.clone()
    hook(0)
    assert calls == ["bn", "bn"] and torch.equal(mem.rgb.memory, before) and len(rows) == 1
    # stage 1 (no CMA): the RGB memory is its own normalised means
    hook1 = ADCAReclusterer(method, sampler, fetch, None, mods, None, settings, cma=False, steps=3, phase="stage1",
                            device=torch.device("cpu"), extract=extract)
    hook1(1)
    np.testing.assert_allclose(mem.rgb.memory.numpy(), m_rgb, atol=1e-6)


def test_the_untrained_model_tested_is_the_one_stage1_starts_from() -> None:
    """results.json's "untrained" row is ADCA's own initialisation (BNNeck weight ~ N(1, 0.01)), not the generic
    model: section draw (fast-reid's N(1, 0.02))."""
    from types import SimpleNamespace

    from vireid.build import model_from_config
    from vireid.config import load_config
    from vireid.methods.adca import _build_model, adca_plan

    cfg = load_config(REPO / "configs/adca/sysu.yaml", ["model.arch=resnet18_half", "model.pretrained=none"])
    ctx = SimpleNamespace(seed=3, model=cfg.model, build_model=lambda n: model_from_config(cfg.model, n))
    plan = adca_plan(cfg.method, ctx)
    assert plan.untrained_model is not None
    untrained, start = plan.untrained_model(), _build_model(cfg.method, ctx)
    a, b = untrained.state_dict(), start.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    w = untrained.neck.bn.weight.detach()
    assert abs(float(w.mean()) - 1.0) < 0.005 and 0.007 < float(w.std()) < 0.013  # std 0.01, not 0.02
