"""Every loss against numbers worked out by hand on tiny inputs, gradient checks, autocast, and switching terms off."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vireid import losses
from vireid.losses import (
    batch_hard_triplet,
    circle_logits,
    combine,
    cross_entropy,
    distance_structure,
    enabled,
    enhanced_squared_difference,
    global_complement,
    inter_center,
    intra_center,
    local_complement,
    modality_diversity,
    pairwise_euclidean,
    similarity_structure,
    subclass_center,
    symmetric_kl,
    weighted_regularized_triplet,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def t(x, dtype=torch.float32, grad=False):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# --------------------------------------------------------------------------------------------- cross-entropy
def test_cross_entropy_without_smoothing_equals_torch():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(7, 5, generator=g), torch.randint(0, 5, (7,), generator=g)
    for conv in ("torch", "fastreid"):
        assert torch.allclose(cross_entropy(z, y, 0.0, convention=conv), F.cross_entropy(z, y), atol=1e-6)


def test_cross_entropy_smoothing_conventions_by_hand():
    # logits [0, ln2, 0] -> softmax [1/4, 1/2, 1/4]; label 1; C = 3.
    z, y = t([[0.0, LN2, 0.0]]), torch.tensor([1])
    # no smoothing: -ln(1/2) = ln2
    assert cross_entropy(z, y).item() == pytest.approx(LN2, abs=1e-6)
    # torch, eps 0.3: target [0.1, 0.8, 0.1] -> 0.1*ln4 + 0.8*ln2 + 0.1*ln4 = 0.4ln2 + 0.8ln2 = 1.2 ln2
    assert cross_entropy(z, y, 0.3).item() == pytest.approx(1.2 * LN2, abs=1e-6)
    # fast-reid, eps 0.3: target [0.15, 0.7, 0.15] -> 0.3*ln4 + 0.7*ln2 = 1.3 ln2
    assert cross_entropy(z, y, 0.3, convention="fastreid").item() == pytest.approx(1.3 * LN2, abs=1e-6)


def test_cross_entropy_torch_convention_matches_torch_smoothing_and_rejects_bad_input():
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    assert torch.allclose(cross_entropy(z, y, 0.1), F.cross_entropy(z, y, label_smoothing=0.1), atol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(z, y, 1.0)
    with pytest.raises(ValueError, match="convention"):
        cross_entropy(z, y, 0.1, convention="timm")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- circle logits
def test_circle_logits_two_classes_by_hand():
    # m = 0.35: Δp = 0.65, Δn = 0.35; αp = max(0, 1.35 - s_y), αn = max(0, s_c + 0.35); scale 1 for readability.
    cos = t([[0.8, 0.1], [-0.5, 0.9], [0.3, -0.6]], grad=True)
    y = torch.tensor([0, 0, 0])
    # row 0: target 0.55*(0.8-0.65) = 0.0825;   other 0.45*(0.1-0.35) = -0.1125
    # row 1: target 1.85*(-0.5-0.65) = -2.1275; other 1.25*(0.9-0.35) = 0.6875
    # row 2: target 1.05*(0.3-0.65) = -0.3675;  other αn = max(0, -0.25) = 0 -> 0
    expected = t([[0.0825, -0.1125], [-2.1275, 0.6875], [-0.3675, 0.0]])
    out = circle_logits(cos, y, scale=1.0, margin=0.35)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(circle_logits(cos, y, scale=64.0), 64 * expected, atol=1e-4)
    # α is detached: d logit / d s = scale * α (not scale * (α + s' dα/ds))
    out.sum().backward()
    assert torch.allclose(cos.grad, t([[0.55, 0.45], [1.85, 1.25], [1.05, 0.0]]), atol=1e-6)
    # label on the other class swaps the roles
    y1 = torch.tensor([1, 1, 1])
    assert circle_logits(cos.detach(), y1, scale=1.0)[0, 1].item() == pytest.approx((1.35 - 0.1) * (0.1 - 0.65))


# --------------------------------------------------------------------------------------------- distances
def test_pairwise_euclidean_and_self_distance_clamp():
    x = t([[0.0, 0.0], [3.0, 4.0]])
    d = pairwise_euclidean(x)
    assert torch.allclose(d, t([[1e-6, 5.0], [5.0, 1e-6]]), atol=1e-9)  # sqrt(1e-12) on the diagonal
    assert torch.allclose(pairwise_euclidean(x, squared=True), t([[1e-12, 25.0], [25.0, 1e-12]]))


# --------------------------------------------------------------------------------------------- WRT
def _wrt_anchor(dp: list[float], dn: list[float]) -> float:
    """One anchor of AGW's WRT in plain Python, reference stabilisation: positive shift = max positive distance,
    negative shift = 0, eps 1e-6 in both denominators; the self-pair is in dp with distance 1e-6."""
    mp = max(dp)
    zp = sum(math.exp(d - mp) for d in dp) + 1e-6
    d_plus = sum(d * math.exp(d - mp) for d in dp) / zp
    zn = sum(math.exp(-d) for d in dn) + 1e-6
    d_minus = sum(d * math.exp(-d) for d in dn) / zn
    return softplus(d_plus - d_minus)


def test_wrt_four_samples_by_hand():
    # 1-d features x = [0, 1, 3, 6], labels [0, 0, 1, 1]; distances d01=1 d02=3 d03=6 d12=2 d13=5 d23=3, self 1e-6.
    x, y = t([[0.0], [1.0], [3.0], [6.0]]), torch.tensor([0, 0, 1, 1])
    s = 1e-6
    per_anchor = [
        _wrt_anchor([s, 1.0], [3.0, 6.0]),  # anchor 0: d+ ≈ e/(1+e) = 0.7311, d- ≈ (3e^-3+6e^-6)/(e^-3+e^-6+1e-6)
        _wrt_anchor([1.0, s], [2.0, 5.0]),  # anchor 1
        _wrt_anchor([s, 3.0], [3.0, 2.0]),  # anchor 2
        _wrt_anchor([3.0, s], [6.0, 5.0]),  # anchor 3
    ]
    # anchor 0 in numbers: d+ = 1/(1 + e^-1) = 0.731058; d- = (0.149361 + 0.014873) / (0.049787 + 0.002479 + 1e-6)
    #   = 0.164234 / 0.052267 = 3.142217; softplus(0.731058 - 3.142217) = softplus(-2.411159) = 0.085913
    assert per_anchor[0] == pytest.approx(0.085913, abs=2e-6)
    expected = sum(per_anchor) / 4
    assert weighted_regularized_triplet(x, y).item() == pytest.approx(expected, abs=1e-6)
    # same geometry, labels permuted with the rows: same loss
    perm = torch.tensor([2, 0, 3, 1])
    assert weighted_regularized_triplet(x[perm], y[perm]).item() == pytest.approx(expected, abs=1e-6)


def test_wrt_reference_stabilisation_collapses_far_negatives_exact_does_not():
    # Two identities 100 apart: Σ exp(-100) << 1e-6, so the reference's negative weights vanish and d- -> 0.
    x, y = t([[0.0], [0.5], [100.0], [100.5]]), torch.tensor([0, 0, 1, 1])
    d_plus = 0.5 * math.exp(0.5) / (1 + math.exp(0.5))  # self (≈0) and the other positive at 0.5
    assert weighted_regularized_triplet(x, y).item() == pytest.approx(softplus(d_plus), abs=1e-5)
    # exact softmax: d- = weighted mean of 99.5..100.5 -> loss ≈ 0
    assert weighted_regularized_triplet(x, y, softmax_mode="exact").item() < 1e-40
    # and on a near batch the two modes agree closely
    g = torch.Generator().manual_seed(2)
    z, lab = torch.randn(8, 3, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert weighted_regularized_triplet(z, lab).item() == pytest.approx(
        weighted_regularized_triplet(z, lab, softmax_mode="exact").item(), abs=1e-4
    )


@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_wrt_gradcheck(mode):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda f: weighted_regularized_triplet(f, y, softmax_mode=mode), (x,))


def test_wrt_single_identity_has_no_negatives():
    # all positives: d- = 0, loss = softplus(d+) with d+ the softmax-weighted positive distance
    x, y = t([[0.0], [2.0]]), torch.tensor([4, 4])
    d_plus = (2.0 * 1.0) / (1.0 + math.exp(-2.0) + 1e-6)  # shift 2: weights e^{-2}, 1
    assert weighted_regularized_triplet(x, y).item() == pytest.approx(softplus(d_plus), abs=1e-5)


# --------------------------------------------------------------------------------------------- CAJ's ESD
def _soft_dp_dn(dp: list[float], dn: list[float], alpha: float = 1.0) -> tuple[float, float]:
    """One anchor's (d+, d-) of CAJ's TripletLoss_ADP (ICCV21_CAJ/loss.py:57-62, 133-136) in plain Python:
    softmax_weights(alpha*D_ap, is_pos) shifts by the largest positive score, softmax_weights(-alpha*D_an, is_neg)
    by 0 (masked entries count as 0); both denominators get + 1e-6. The self-pair is in dp with distance 1e-6."""
    sp = [alpha * d for d in dp]
    mp = max(sp)
    zp = sum(math.exp(v - mp) for v in sp) + 1e-6
    d_plus = sum(d * math.exp(v - mp) for d, v in zip(dp, sp)) / zp
    zn = sum(math.exp(-alpha * d) for d in dn) + 1e-6
    d_minus = sum(d * math.exp(-alpha * d) for d in dn) / zn
    return d_plus, d_minus


def _esd_anchor(dp: list[float], dn: list[float], alpha: float = 1.0, gamma: float = 1.0) -> float:
    """ICCV21_CAJ/loss.py:147-155 for one anchor: diff = min(gamma (d+ - d-)^2, 88); y = -1 if d+ > d- else +1;
    SoftMarginLoss term log(1 + exp(-y diff))."""
    d_plus, d_minus = _soft_dp_dn(dp, dn, alpha)
    diff = min(gamma * (d_plus - d_minus) ** 2, 88.0)
    y = -1.0 if d_plus > d_minus else 1.0
    return softplus(-y * diff)


def test_esd_four_samples_by_hand_both_target_signs():
    # 1-d features x = [0, 1, 3, 6], labels [0, 0, 1, 1]: d01=1 d02=3 d03=6 d12=2 d13=5 d23=3, self 1e-6.
    x, y = t([[0.0], [1.0], [3.0], [6.0]]), torch.tensor([0, 0, 1, 1])
    # anchor 0: d+ = 1/(1 + e^-1) = 0.731058; d- = (3e^-3 + 6e^-6)/(e^-3 + e^-6 + 1e-6) = 0.164234/0.052267 = 3.142217
    #   d+ < d-  -> y = +1; diff = (0.731058 - 3.142217)^2 = 5.813690; term = log(1 + e^-5.813690) = 0.002982
    # anchor 1: d+ = 0.731058; d- = (2e^-2 + 5e^-5)/(e^-2 + e^-5 + 1e-6) = 0.304361/0.142074 = 2.142263
    #   y = +1; diff = 1.411204^2 = 1.991498; term = log(1 + e^-1.991498) = 0.127945
    # anchor 2: positives {self, 6 at 3}: d+ = 3/(1 + e^-3 + 1e-6) = 3/1.049788 = 2.857720;
    #   negatives {0 at 3, 1 at 2}: d- = (3e^-3 + 2e^-2)/(e^-3 + e^-2 + 1e-6) = 0.420032/0.185123 = 2.268929
    #   d+ > d-  -> y = -1; diff = 0.588790^2 = 0.346674; term = log(1 + e^+0.346674) = 0.881432
    # anchor 3: d+ = 2.857720; d- = (6e^-6 + 5e^-5)/(e^-6 + e^-5 + 1e-6) = 5.268370
    #   y = +1; diff = 2.410650^2 = 5.811235; term = log(1 + e^-5.811235) = 0.002989
    # loss = (0.002982 + 0.127945 + 0.881432 + 0.002989) / 4 = 0.253837
    s = 1e-6
    by_hand = [0.002982, 0.127945, 0.881432, 0.002989]
    anchors = [([s, 1.0], [3.0, 6.0]), ([1.0, s], [2.0, 5.0]), ([s, 3.0], [3.0, 2.0]), ([3.0, s], [6.0, 5.0])]
    for (dp, dn), value in zip(anchors, by_hand):
        assert _esd_anchor(dp, dn) == pytest.approx(value, abs=1e-6)
    assert enhanced_squared_difference(x, y).item() == pytest.approx(0.253837, abs=2e-6)
    # the y rule matters: with y = +1 everywhere (no sign flip) anchor 2 would give log(1 + e^-0.346674) = 0.534758
    assert enhanced_squared_difference(x, y).item() != pytest.approx((0.002982 + 0.127945 + 0.534758 + 0.002989) / 4,
                                                                     abs=1e-3)
    # alpha and gamma enter as in the reference (weights softmax(alpha*D), diff = gamma*(d+ - d-)^2)
    expected = sum(_esd_anchor(dp, dn, alpha=2.0, gamma=0.5) for dp, dn in anchors) / 4
    assert enhanced_squared_difference(x, y, alpha=2.0, gamma=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_esd_clamp_at_88_saturates_and_stops_the_gradient():
    # x = [0, 10, 0.5, 10.5], labels [0, 0, 1, 1]: every anchor's positive is ~10 away, its nearest negative 0.5.
    # anchor 0: d+ = 10/(1 + e^-10 + 1e-6) = 9.999536; d- = (0.5e^-0.5 + 10.5e^-10.5)/(e^-0.5 + e^-10.5 + 1e-6)
    #   = 0.500453 -> (d+ - d-)^2 = 9.499083^2 = 90.2326 > 88 -> clamped to 88; d+ > d- -> y = -1 -> log(1 + e^88) = 88
    # anchors 1-3 likewise ((d+ - d-)^2 = 90.2201, 90.2201, 90.2326): loss = 88 exactly, and no gradient at all.
    x = t([[0.0], [10.0], [0.5], [10.5]], grad=True)
    y = torch.tensor([0, 0, 1, 1])
    d_plus, d_minus = _soft_dp_dn([1e-6, 10.0], [0.5, 10.5])
    assert (d_plus - d_minus) ** 2 == pytest.approx(90.2326, abs=1e-4)
    loss = enhanced_squared_difference(x, y)
    assert loss.item() == pytest.approx(88.0, abs=1e-5)
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # the same batch without the square (a WRT-like softplus of the gap) does train: nonzero gradient
    x2 = x.detach().clone().requires_grad_(True)
    enhanced_squared_difference(x2, y, square=False).backward()
    assert x2.grad.abs().sum().item() > 0.1
    # a satisfied anchor beyond the clamp contributes log(1 + e^-88) ~ 0: x = [0, 1, 12, 13] anchor 0 has
    # d+ = 0.731058, d- = (12e^-12 + 13e^-13)/(e^-12 + e^-13 + 1e-6) = 1.03110e-4/9.4039e-6 = 10.9645 -> 104.7 -> 88
    d_plus, d_minus = _soft_dp_dn([1e-6, 1.0], [12.0, 13.0])
    assert d_minus == pytest.approx(10.9645, abs=1e-3)
    assert _esd_anchor([1e-6, 1.0], [12.0, 13.0]) < 1e-38
    x3, y3 = t([[0.0], [1.0], [12.0], [13.0]]), torch.tensor([0, 0, 1, 1])
    expected = sum(_esd_anchor(dp, dn) for dp, dn in [([1e-6, 1.0], [12.0, 13.0]), ([1.0, 1e-6], [11.0, 12.0]),
                                                      ([1e-6, 1.0], [12.0, 11.0]), ([1.0, 1e-6], [13.0, 12.0])]) / 4
    assert enhanced_squared_difference(x3, y3).item() == pytest.approx(expected, abs=1e-7)


def test_esd_without_square_is_wrt_at_unit_alpha_gamma_and_checks_its_arguments():
    g = torch.Generator().manual_seed(5)
    z, lab = torch.randn(8, 3, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # square 0 (loss.py:143-145): SoftMarginLoss(gamma (d- - d+), 1) = mean softplus(gamma (d+ - d-)) = WRT at 1, 1
    assert enhanced_squared_difference(z, lab, square=False).item() == pytest.approx(
        weighted_regularized_triplet(z, lab).item(), abs=1e-6)
    x, y = t([[0.0], [1.0], [3.0], [6.0]]), torch.tensor([0, 0, 1, 1])
    s = 1e-6
    anchors = [([s, 1.0], [3.0, 6.0]), ([1.0, s], [2.0, 5.0]), ([s, 3.0], [3.0, 2.0]), ([3.0, s], [6.0, 5.0])]
    expected = sum(softplus(2.0 * (p - n)) for p, n in (_soft_dp_dn(dp, dn) for dp, dn in anchors)) / 4
    assert enhanced_squared_difference(x, y, gamma=2.0, square=False).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="alpha and gamma must be > 0"):
        enhanced_squared_difference(x, y, alpha=0.0)
    with pytest.raises(ValueError, match="labels must be"):
        enhanced_squared_difference(x, y[:3])


def test_esd_gradcheck_below_the_clamp():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda f: enhanced_squared_difference(f, y), (x,))


# --------------------------------------------------------------------------------------------- batch-hard
def test_batch_hard_margin_and_soft_margin_by_hand():
    x, y = t([[0.0], [1.0], [3.0], [6.0]]), torch.tensor([0, 0, 1, 1])
    # hardest positive / closest negative:
    # a0: d+ 1, d- min(3,6)=3 -> -2 ; a1: d+ 1, d- min(2,5)=2 -> -1 ;
    # a2: d+ 3, d- min(3,2)=2 -> +1 ; a3: d+ 3, d- 5 -> -2
    # margin 0.3: relu(-1.7) + relu(-0.7) + relu(1.3) + relu(-1.7) = 1.3 -> /4 = 0.325
    assert batch_hard_triplet(x, y, margin=0.3).item() == pytest.approx(0.325, abs=1e-6)
    # soft margin: (softplus(-2) + softplus(-1) + softplus(1) + softplus(-2)) / 4
    soft = (2 * softplus(-2) + softplus(-1) + softplus(1)) / 4
    assert soft == pytest.approx(0.470095, abs=1e-6)
    assert batch_hard_triplet(x, y, margin=None).item() == pytest.approx(soft, abs=1e-6)
    # margin 0 is the hinge without margin: only a2 violates, by 1 -> 0.25
    assert batch_hard_triplet(x, y, margin=0.0).item() == pytest.approx(0.25, abs=1e-6)


def test_batch_hard_normalize_features_and_no_negatives():
    # normalised rows: (1,0),(1,0),(0,1),(0,1) with labels [0,1,0,1]:
    # every anchor: hardest positive at sqrt(2), closest negative at 1e-6 (same direction) -> relu(sqrt2 + 0.3 - 1e-6)
    x, y = t([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]]), torch.tensor([0, 1, 0, 1])
    assert batch_hard_triplet(x, y, normalize_features=True).item() == pytest.approx(math.sqrt(2) + 0.3, abs=1e-5)
    assert batch_hard_triplet(x, y).item() != pytest.approx(math.sqrt(2) + 0.3, abs=1e-2)
    # one identity only: no negatives -> 0 (both margin kinds)
    assert batch_hard_triplet(x, torch.zeros(4, dtype=torch.long)).item() == 0.0
    assert batch_hard_triplet(x, torch.zeros(4, dtype=torch.long), margin=None).item() == 0.0


def test_batch_hard_gradcheck_soft_margin():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda f: batch_hard_triplet(f, y, margin=None), (x,))


# --------------------------------------------------------------------------------------------- MSCLNet
# 6 samples, 2 identities x 2 cameras, 2-d features:
#   id 0: cam 0: (0,0) (2,0)   cam 1: (0,4)
#   id 1: cam 0: (10,0)        cam 1: (10,2) (12,2)
# sub-class centres: (0,c0)=(1,0)  (0,c1)=(0,4)  (1,c0)=(10,0)  (1,c1)=(11,2)
F6 = [[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [10.0, 0.0], [10.0, 2.0], [12.0, 2.0]]
L6 = [0, 0, 0, 1, 1, 1]
C6 = [0, 0, 1, 0, 1, 1]


def _six(dtype=torch.float32, grad=False):
    return t(F6, dtype, grad), torch.tensor(L6), torch.tensor(C6)


def test_subclass_center_by_hand():
    f, y, c = _six()
    # squared distances to the sub-class centre: 1, 1, 0, 0, 1, 1 -> 4/6
    assert subclass_center(f, y, c).item() == pytest.approx(4 / 6, abs=1e-6)


def test_intra_center_by_hand():
    f, y, c = _six()
    # subclass_mean: C_0 = mean((1,0),(0,4)) = (0.5,2): 4.25 + 4.25 = 8.5
    #                C_1 = mean((10,0),(11,2)) = (10.5,1): 1.25 + 1.25 = 2.5   -> mean 5.5, sum 11
    assert intra_center(f, y, c).item() == pytest.approx(5.5, abs=1e-5)
    assert intra_center(f, y, c, reduction="sum").item() == pytest.approx(11.0, abs=1e-5)
    # sample_mean: C_0 = (2/3, 4/3): |(1,0)-C_0|² = 17/9, |(0,4)-C_0|² = 68/9 -> 85/9
    #              C_1 = (32/3, 4/3): |(10,0)-C_1|² = 20/9, |(11,2)-C_1|² = 5/9 -> 25/9   -> mean 55/9
    assert intra_center(f, y, c, id_center="sample_mean").item() == pytest.approx(55 / 9, abs=1e-5)
    # an identity seen by one camera only contributes 0
    assert intra_center(f[:2], y[:2], c[:2]).item() == 0.0


def test_inter_center_by_hand():
    f, y, c = _six()
    # with cams (cascade): C_0 = (0.5,2), C_1 = (10.5,1): d² = 100 + 1 = 101
    assert inter_center(f, y, c, margin=None).item() == pytest.approx(-101.0, abs=1e-4)
    assert inter_center(f, y, c, margin=200.0).item() == pytest.approx(99.0, abs=1e-4)
    assert inter_center(f, y, c, margin=1.0).item() == 0.0
    # without cams: sample means (2/3,4/3), (32/3,4/3): d² = 100
    assert inter_center(f, y, margin=None).item() == pytest.approx(-100.0, abs=1e-4)
    assert inter_center(f, y, margin=150.0).item() == pytest.approx(50.0, abs=1e-4)
    # three identities with 1-d centres 0, 1, 3: pair d² 1, 9, 4 -> -14/3; hinge 5: (4 + 0 + 1)/3
    g, yl = t([[0.0], [1.0], [3.0]]), torch.tensor([0, 1, 2])
    assert inter_center(g, yl, margin=None).item() == pytest.approx(-14 / 3, abs=1e-5)
    assert inter_center(g, yl, margin=5.0).item() == pytest.approx(5 / 3, abs=1e-5)
    # a single identity: nothing to push apart
    assert inter_center(g[:1], yl[:1]).item() == 0.0


def test_cascade_needs_known_cameras():
    f, y, c = _six()
    with pytest.raises(ValueError, match="camera"):
        subclass_center(f, y, torch.full_like(c, -1))


def test_cascade_gradchecks():
    f, y, c = _six(torch.float64, grad=True)
    f = (f + 0.1 * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).detach()
    f.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: subclass_center(x, y, c), (f,))
    assert torch.autograd.gradcheck(lambda x: intra_center(x, y, c), (f,))
    assert torch.autograd.gradcheck(lambda x: inter_center(x, y, c, margin=150.0), (f,))


def test_global_complement_by_hand():
    # synergistic: id 0 -> (0,0),(2,0): C=(1,0); id 1 -> (5,5)
    # infrared:    id 0 -> (1,1);        id 1 -> (4,5),(6,5): C=(5,5); id 2 only in IR (ignored)
    fs, ys = t([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]], grad=True), torch.tensor([0, 0, 1])
    fr, yr = t([[1.0, 1.0], [4.0, 5.0], [6.0, 5.0], [9.0, 9.0]]), torch.tensor([0, 1, 1, 2])
    loss = global_complement(fs, fr, ys, yr)  # (|(1,0)-(1,1)|² + 0) / 2 = 0.5
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    loss.backward()  # d/dC_0 = 2(C_0 - C^r_0)/2 = (0,-1), split over 2 members: (0,-0.5) each
    assert torch.allclose(fs.grad, t([[0.0, -0.5], [0.0, -0.5], [0.0, 0.0]]))
    # no identity in common -> 0, still differentiable
    z = global_complement(fs, fr, ys, torch.tensor([7, 8, 8, 9]))
    assert z.item() == 0.0 and z.requires_grad


def test_local_complement_as_printed_and_corrected_by_hand():
    # N=2 samples, P=2 parts, D=2.
    # s0: p0 v=(1,0) s=(1,0): c=1, sqrt(0)->sqrt(1e-12)=1e-6 ; p1 v=(1,0) s=(0,1): c=0, sqrt2
    # s1: p0 v=(1,0) s=(-2,0): c=-1, sqrt4=2 ; p1 v=(3,0) s=(1,1): c=1/sqrt2, sqrt(2-sqrt2)=0.765367
    pv = t([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [3.0, 0.0]]])
    ps = t([[[1.0, 0.0], [0.0, 1.0]], [[-2.0, 0.0], [1.0, 1.0]]])
    r2, c11 = math.sqrt(2), 1 / math.sqrt(2)
    d11 = math.sqrt(2 - r2)
    # as printed: s0 = (1 + 1e-6) + (0 + sqrt2); s1 = (-1 + 2) + (c11 + d11)
    printed = ((1 + 1e-6 + r2) + (1 + c11 + d11)) / 2
    assert printed == pytest.approx(2.443344, abs=1e-6)
    assert local_complement(pv, ps).item() == pytest.approx(printed, abs=1e-5)
    # corrected: s0 = (0 + 1e-6) + (1 + sqrt2); s1 = (2 + 2) + (1 - c11 + d11)
    corrected = ((1e-6 + 1 + r2) + (4 + 1 - c11 + d11)) / 2
    assert corrected == pytest.approx(3.736237, abs=1e-6)
    assert local_complement(pv, ps, variant="corrected").item() == pytest.approx(corrected, abs=1e-5)
    # corrected is ~0 for identical parts (its minimum); as printed it is P = 2 there (c=1 each part)
    assert local_complement(pv, pv, variant="corrected").item() == pytest.approx(0.0, abs=1e-5)
    assert local_complement(pv, pv).item() == pytest.approx(2.0, abs=1e-5)


def test_local_complement_corrected_pulls_parts_together():
    # at c = 0 the printed loss pushes the parts apart (g'(0) = 1 - 1/sqrt2 > 0), the corrected one pulls them together
    ps = t([[[0.0, 1.0]]])
    for variant, sign in (("as_printed", -1.0), ("corrected", 1.0)):
        pv = t([[[1.0, 0.0]]], grad=True)
        local_complement(pv, ps, variant=variant).backward()
        # gradient descent step on pv moves it along -grad; its y-component grows iff -grad_y > 0
        assert sign * (-pv.grad[0, 0, 1].item()) > 0
    pv = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(6))
    ps = torch.randn(3, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert torch.autograd.gradcheck(lambda a: local_complement(a, ps, variant="corrected"), (pv,))


def test_modality_diversity_by_hand():
    # row 0: P = softmax(0, ln3) = (1/4, 3/4), Q = softmax(0, 0) = (1/2, 1/2)
    #   KL(P||Q) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812 ; KL(Q||P) = 1/2 ln2 + 1/2 ln(2/3) = 0.143841
    # row 1: identical rows -> 0
    fv, fr = t([[0.0, LN3], [1.0, 2.0]]), t([[0.0, 0.0], [1.0, 2.0]])
    kl_pq = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    kl_qp = 0.5 * LN2 + 0.5 * math.log(2 / 3)
    assert kl_pq == pytest.approx(0.130812, abs=1e-6) and kl_qp == pytest.approx(0.143841, abs=1e-6)
    assert modality_diversity(fv, fr).item() == pytest.approx(-kl_pq / 2, abs=1e-6)
    assert modality_diversity(fv, fr, direction="r_v").item() == pytest.approx(-kl_qp / 2, abs=1e-6)
    assert modality_diversity(fv, fr, direction="symmetric").item() == pytest.approx(-(kl_pq + kl_qp) / 4, abs=1e-6)
    assert modality_diversity(fv, fr, max_kl=0.1).item() == pytest.approx(-0.05, abs=1e-6)  # row 0 clamped at 0.1
    # identity pairing: visible id 5 rows average to (0, ln3); IR id 5 is (0,0); ids 9 / 3 appear in one modality only
    fv2, yv = t([[0.0, LN3 - 1], [0.0, LN3 + 1], [4.0, 4.0]]), torch.tensor([5, 5, 3])
    fr2, yr = t([[0.0, 0.0], [7.0, 7.0]]), torch.tensor([5, 9])
    assert modality_diversity(fv2, fr2, yv, yr, pairing="identity").item() == pytest.approx(-kl_pq, abs=1e-6)
    with pytest.raises(ValueError, match="labels"):
        modality_diversity(fv2, fr2, pairing="identity")
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(8))
    r = torch.randn(4, 5, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(9))
    assert torch.autograd.gradcheck(lambda a, b: modality_diversity(a, b), (x, r))


# --------------------------------------------------------------------------------------------- AML
def test_symmetric_kl_by_hand_and_teacher_detached():
    # student p = softmax(0, ln3) = (1/4, 3/4), teacher q = (1/2, 1/2): ½(KL(q||p) + KL(p||q)) = ½(0.143841 + 0.130812)
    s, te = t([[0.0, LN3], [2.0, 2.0]], grad=True), t([[0.0, 0.0], [0.0, 0.0]], grad=True)
    loss = symmetric_kl(s, te)  # row 1: both uniform -> 0; summed over the batch
    assert loss.item() == pytest.approx(0.1373265, abs=1e-6)
    assert symmetric_kl(s, te, reduction="mean").item() == pytest.approx(0.1373265 / 2, abs=1e-6)
    loss.backward()
    assert te.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    s.grad = None
    symmetric_kl(s, te, detach_teacher=False).backward()
    assert te.grad is not None and te.grad.abs().sum() > 0
    # nothing detached: symmetric in its arguments
    assert symmetric_kl(s, te, False).item() == pytest.approx(symmetric_kl(te, s, False).item(), abs=1e-7)


def test_similarity_structure_by_hand():
    # student rows (1,0),(0,1): S = I ; teacher rows (1,0),(2,0) -> normalised equal: S = all ones -> Σ diff² = 2
    st, te = t([[1.0, 0.0], [0.0, 1.0]], grad=True), t([[1.0, 0.0], [2.0, 0.0]], grad=True)
    loss = similarity_structure(st, te)
    assert loss.item() == pytest.approx(2.0, abs=1e-6)
    assert similarity_structure(st, te, reduction="mean").item() == pytest.approx(0.5, abs=1e-6)
    loss.backward()
    assert te.grad is None and st.grad is not None
    x = torch.randn(5, 3)
    assert similarity_structure(x, x).item() == pytest.approx(0.0, abs=1e-10)
    assert similarity_structure(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-10)  # scale-free


def test_distance_structure_by_hand():
    # student (1,0),(0,1): off-diagonal D = sqrt2 ; teacher (1,0),(2,0) normalise to the same point: D = 1e-6
    st, te = t([[1.0, 0.0], [0.0, 1.0]], grad=True), t([[1.0, 0.0], [2.0, 0.0]], grad=True)
    loss = distance_structure(st, te)  # 2 * (sqrt2 - 1e-6)² ≈ 4
    assert loss.item() == pytest.approx(2 * (math.sqrt(2) - 1e-6) ** 2, abs=1e-5)
    loss.backward()  # default (stage 2): nothing detached
    assert te.grad is not None
    x = torch.randn(5, 3)
    assert distance_structure(x, x).item() == pytest.approx(0.0, abs=1e-10)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(10))
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(11))
    assert torch.autograd.gradcheck(lambda u, v: distance_structure(u, v), (a, b))


# --------------------------------------------------------------------------------------------- combine
def test_combine_weights_and_switching_off():
    a, b = t(2.0, grad=True), t(3.0, grad=True)
    total, logs = combine({"ce": a, "wrt": b}, {"ce": 1.0, "wrt": 0.5})
    assert total.item() == pytest.approx(3.5) and logs == {"ce": 2.0, "wrt": 3.0, "loss": 3.5}
    total.backward()
    assert a.grad.item() == 1.0 and b.grad.item() == 0.5
    a.grad = b.grad = None
    # weight 0 removes the term: from the total, from the logs, and from the graph
    total, logs = combine({"ce": a, "wrt": b}, {"ce": 1.0, "wrt": 0.0})
    assert total.item() == pytest.approx(2.0) and "wrt" not in logs
    total.backward()
    assert b.grad is None
    # a missing weight also switches it off
    assert combine({"ce": a, "wrt": b}, {"ce": 1.0})[0].item() == pytest.approx(2.0)
    # a switched-off term need not be computed at all
    assert combine({"ce": a}, {"ce": 1.0, "wrt": 0.0})[0].item() == pytest.approx(2.0)
    # no logs requested: same total, nothing read back
    total, logs = combine({"ce": a, "wrt": b}, {"ce": 1.0, "wrt": 0.5}, return_logs=False)
    assert total.item() == pytest.approx(3.5) and logs == {}
    # everything off: zero total
    total, logs = combine({"ce": a}, {"ce": 0.0})
    assert total.item() == 0.0 and logs == {"loss": 0.0}


def test_combine_errors_name_the_known_terms():
    a = t(1.0)
    with pytest.raises(ValueError, match=r"unknown loss term 'wtr'.*\['ce', 'wrt'\]"):
        combine({"ce": a, "wrt": a}, {"ce": 1.0, "wtr": 1.0})
    with pytest.raises(ValueError, match="unknown loss term 'tripet'"):
        combine({"ce": a}, {"ce": 1.0, "tripet": 0.0}, known=["ce", "triplet"])
    with pytest.raises(ValueError, match="not computed"):
        combine({"ce": a}, {"ce": 1.0, "triplet": 1.0}, known=["ce", "triplet"])
    with pytest.raises(ValueError, match="scalar"):
        combine({"ce": torch.ones(2)}, {"ce": 1.0})


def test_enabled():
    w = {"ce": 1.0, "div": 0.0}
    assert enabled(w, "ce") and not enabled(w, "div") and not enabled(w, "absent")


# --------------------------------------------------------------------------------------------- precision
def test_losses_run_in_float32_under_autocast_and_on_half_inputs():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(8, 16, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ref = weighted_regularized_triplet(x.bfloat16().float(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = weighted_regularized_triplet(x.bfloat16(), y)
        ce = cross_entropy(torch.randn(8, 4, generator=g).bfloat16(), y % 4, 0.1)
        hard = batch_hard_triplet(x.bfloat16(), y, margin=None)
    assert out.dtype == torch.float32 and ce.dtype == torch.float32 and hard.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), abs=1e-6)


def test_public_api_is_exported():
    for name in losses.__all__:
        assert callable(getattr(losses, name))
