"""Metric-learning losses on a batch: AGW's weighted regularised triplet, CAJ's enhanced squared difference and the
batch-hard triplet.

All work on the whole batch at once (all modalities, labels shared), as the reference code does: every sample is an
anchor, positives are the samples with its label, negatives the rest.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._util import as_float, check_pair, full_precision

__all__ = ["batch_hard_triplet", "enhanced_squared_difference", "pairwise_euclidean", "weighted_regularized_triplet"]

ESD_CLAMP = 88.0
"""Upper clamp of CAJ's squared difference (ICCV21_CAJ/loss.py:148): ``exp(88)`` is just below float32's maximum."""


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor | None = None, squared: bool = False) -> torch.Tensor:
    """Euclidean distance matrix ``D[i, j] = ‖x_i − y_j‖`` ([N, M]) in float32 (float64 stays float64).

    Computed as ``‖x‖² + ‖y‖² − 2·xyᵀ`` clamped at 1e-12 before the square root, as in the AGW / fast-reid code.
    The clamp keeps the gradient finite on the diagonal: a sample's distance to itself is ``sqrt(1e-12) = 1e-6``,
    not 0, and (being clamped) passes no gradient. With ``squared=True`` the clamped squared distances are returned.
    """
    if y is None:
        y = x
    with full_precision(x.device):
        x = as_float(x)
        y = as_float(y).to(x.dtype)
        d2 = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.t())
        d2 = d2.clamp(min=1e-12)
        return d2 if squared else d2.sqrt()


def _masked_softmax_weights(scores: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Row-wise softmax of ``scores`` restricted to ``mask`` (0 elsewhere).

    ``mode="reference"`` is AGW's ``softmax_weights``: shift by ``max(scores · mask)`` over the *whole* row (masked
    entries count as 0), ``Z = Σ_mask exp(score − shift) + 1e-6``. ``mode="exact"`` shifts by the max over the masked
    entries only and adds no epsilon (an all-masked row gets weights 0).
    """
    if mode == "reference":
        shift = (scores * mask).max(dim=1, keepdim=True).values
        e = torch.exp(scores - shift) * mask
        return e / (e.sum(dim=1, keepdim=True) + 1e-6)
    if mode == "exact":
        neg_inf = torch.finfo(scores.dtype).min
        masked = scores.masked_fill(mask == 0, neg_inf)
        shift = masked.max(dim=1, keepdim=True).values
        e = torch.exp(masked - shift) * mask
        z = e.sum(dim=1, keepdim=True)
        return e / torch.where(z > 0, z, torch.ones_like(z))
    raise ValueError(f"softmax mode must be 'reference' or 'exact', got {mode!r}")


def weighted_regularized_triplet(
    features: torch.Tensor,
    labels: torch.Tensor,
    normalize_features: bool = False,
    softmax_mode: Literal["reference", "exact"] = "reference",
) -> torch.Tensor:
    """AGW's weighted regularised triplet (WRT) loss; no margin to tune.

    With ``D`` the Euclidean distance matrix of the batch (:func:`pairwise_euclidean`), ``P(i)`` the samples sharing
    i's label **including i itself** (distance ``1e-6``, see below) and ``N(i)`` the others::

        w⁺_ij = exp(D_ij)  / Σ_{k∈P(i)} exp(D_ik)      (far positives weigh more)
        w⁻_ij = exp(−D_ij) / Σ_{k∈N(i)} exp(−D_ik)     (close negatives weigh more)
        d⁺_i = Σ_{j∈P(i)} w⁺_ij D_ij,   d⁻_i = Σ_{j∈N(i)} w⁻_ij D_ij
        loss = mean_i softplus(d⁺_i − d⁻_i)            (= SoftMarginLoss(d⁻ − d⁺, 1))

    Details of the reference code reproduced by default (``softmax_mode="reference"``):

    * Self-pairs: the positive mask is ``labels_i == labels_j``, so each anchor is its own positive with distance
      ``sqrt(1e-12) = 1e-6`` (the clamp in the distance), weight ``exp(1e-6)/Z`` — it dilutes d⁺ slightly when an
      identity has few samples in the batch.
    * Stabilisation: the exponent is shifted by the row maximum of ``score · mask`` over the *whole* row (entries
      outside the mask count as 0) and ``Z`` gets ``+ 1e-6``. For positives the shift is the largest positive
      distance, so nothing changes. For negatives the scores are ``−D ≤ 0`` and the masked entries give 0, so the
      shift is 0: when every negative is far away (``Σ exp(−D) ≪ 1e-6``, i.e. distances above ~14 for a batch of 64)
      the ``1e-6`` dominates ``Z``, the negative weights shrink towards 0 and ``d⁻`` collapses towards 0. Published
      AGW numbers include this; ``softmax_mode="exact"`` uses the proper masked max and no epsilon instead.
    * An anchor with no negatives gets ``d⁻ = 0``.

    ``normalize_features`` L2-normalises the rows first (off in AGW: the loss acts on the pooled feature).
    Computed in float32 whatever the autocast state.
    """
    check_pair(features, labels, "weighted_regularized_triplet")
    with full_precision(features.device):
        x = as_float(features)
        if normalize_features:
            x = F.normalize(x, dim=1, eps=1e-12)
        d_p, d_n = _soft_weighted_distances(pairwise_euclidean(x), labels, 1.0, softmax_mode)
        return F.softplus(d_p - d_n).mean()



def _soft_weighted_distances(
    dist: torch.Tensor, labels: torch.Tensor, alpha: float, softmax_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d⁺, d⁻)`` per anchor: distances to the positives / negatives averaged with softmax weights of ``±alpha·D``
    (the WRT weighting; ``alpha = 1`` is WRT's)."""
    is_pos = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(dist.dtype)
    is_neg = 1.0 - is_pos
    dist_ap = dist * is_pos
    dist_an = dist * is_neg
    w_ap = _masked_softmax_weights(dist_ap * alpha, is_pos, softmax_mode)
    w_an = _masked_softmax_weights(-dist_an * alpha, is_neg, softmax_mode)
    return (dist_ap * w_ap).sum(dim=1), (dist_an * w_an).sum(dim=1)


def enhanced_squared_difference(
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    gamma: float = 1.0,
    square: bool = True,
    normalize_features: bool = False,
    softmax_mode: Literal["reference", "exact"] = "reference",
) -> torch.Tensor:
    """CAJ's metric loss, the "enhanced squared difference" (ESD; Ye et al., ICCV 2021, SPEC 4).

    The official CAJ run (``train_ext.py --method adp --alpha 1 --gamma 1 --square 1``) trains with this loss, not
    with WRT. Source: mangye16/Cross-Modal-Re-ID-baseline at commit e817a2672c1e14e8802617acb980a79520ef9545,
    ``ICCV21_CAJ/loss.py:108-161`` (``TripletLoss_ADP``), built at ``ICCV21_CAJ/train_ext.py:229-230`` with the
    defaults of ``train_ext.py:71-76`` (alpha 1, gamma 1, square 1) that ``ICCV21_CAJ/main.sh`` and the README pass
    explicitly. With ``D`` the Euclidean distance matrix of the batch, ``P(i)`` the samples sharing i's label
    (i itself included, distance ``1e-6``) and ``N(i)`` the others::

        w⁺_ij ∝ exp(alpha·D_ij) over P(i),   w⁻_ij ∝ exp(−alpha·D_ij) over N(i)      (as WRT, scaled by alpha)
        d⁺_i = Σ w⁺_ij D_ij,   d⁻_i = Σ w⁻_ij D_ij
        square=True:   diff_i = min(gamma·(d⁺_i − d⁻_i)², 88)
                       y_i = −1 if d⁺_i > d⁻_i else +1           (a tie gives +1)
                       loss = mean_i softplus(−y_i·diff_i)          (= SoftMarginLoss(diff, y))
        square=False:  loss = mean_i softplus(gamma·(d⁺_i − d⁻_i))  (WRT with a temperature; = WRT at alpha = gamma = 1)

    So a violating anchor (d⁺ > d⁻) pays ``softplus(+diff)`` and a satisfied one is rewarded for a *larger* gap with
    ``softplus(−diff)``. Unlike WRT the gradient vanishes at d⁺ = d⁻ (the square's derivative is 0 there).

    Which distance and which feature (as the official code computes them):

    * ``D`` is the plain Euclidean distance, not the squared one: ``pdist_torch`` (``ICCV21_CAJ/loss.py:179-191``)
      takes the square root of the clamped ``‖x‖² + ‖y‖² − 2xyᵀ`` (``clamp(min=1e-12)``, the same as
      :func:`pairwise_euclidean`). The "squared" of the name is the square of ``d⁺ − d⁻``, not of the distance.
    * The feature is the pooled (GeM, before the BNNeck) training feature ``x_pool``: the model returns
      ``(x_pool, classifier(bottleneck(x_pool)))`` in training (``ICCV21_CAJ/model.py:240-243``) and
      ``train_ext.py:305,317`` passes that first output to the loss, un-normalised (``normalize_feature=False``).
      The same feature as AGW's WRT.
    * The softmax weights use the reference stabilisation (``softmax_mode="reference"``, see
      :func:`weighted_regularized_triplet`): far negatives (``Σ exp(−alpha·D) ≪ 1e-6``) collapse ``d⁻`` towards 0.

    Known saturation of the clamp at 88 (``torch.clamp_max(diff_pow, max=88)``, loss.py:148): it keeps
    ``exp(diff)`` inside float32 but also cuts the gradient. An anchor with ``gamma·(d⁺ − d⁻)² > 88``, i.e.
    ``|d⁺ − d⁻| > sqrt(88/gamma) ≈ 9.38`` at gamma 1, contributes a constant: 88 if it violates (d⁺ > d⁻, the
    worst anchors of the batch get *no* gradient) and ``softplus(−88) ≈ 0`` if it is satisfied. A batch whose
    anchors all violate by that much has loss 88 and zero gradient from this term (only CE then trains the model).
    The reference stabilisation makes this easy to reach: once the negatives are farther than ~14 their weights
    collapse, ``d⁻ → 0`` and ``d⁺ − d⁻ ≈ d⁺``, so any anchor whose weighted positive distance exceeds ~9.4 saturates
    (pooled GeM features are not normalised, so such distances are a matter of feature scale). This is our reading of
    the unstable training some users report with ``--square 1``; we reproduce the clamp, and WRT stays selectable.

    ``alpha``, ``gamma`` must be > 0. ``normalize_features`` L2-normalises the rows first (off in CAJ).
    Computed in float32 whatever the autocast state (float64 stays float64).
    """
    check_pair(features, labels, "enhanced_squared_difference")
    if not (alpha > 0 and gamma > 0):
        raise ValueError(f"enhanced_squared_difference: alpha and gamma must be > 0, got alpha={alpha}, gamma={gamma}")
    with full_precision(features.device):
        x = as_float(features)
        if normalize_features:
            x = F.normalize(x, dim=1, eps=1e-12)
        d_p, d_n = _soft_weighted_distances(pairwise_euclidean(x), labels, alpha, softmax_mode)
        if not square:
            return F.softplus(gamma * (d_p - d_n)).mean()
        diff = (gamma * (d_p - d_n).pow(2)).clamp(max=ESD_CLAMP)
        y = torch.where(d_p > d_n, -torch.ones_like(diff), torch.ones_like(diff))
        return F.softplus(-y * diff).mean()

def batch_hard_triplet(
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None = 0.3,
    normalize_features: bool = False,
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) as fast-reid computes it.

    For each anchor i: ``d⁺_i = max_{j: y_j = y_i} D_ij`` (the hardest positive; i itself is in the set with distance
    ``1e-6``, so an anchor without another positive gets ``d⁺ ≈ 0``) and ``d⁻_i = min_{j: y_j ≠ y_i} D_ij``::

        margin m:        loss = mean_i max(0, d⁺_i − d⁻_i + m)     (MarginRankingLoss)
        margin None:     loss = mean_i softplus(d⁺_i − d⁻_i)       (soft margin, SoftMarginLoss; AML stage 1)

    An anchor with no negative in the batch contributes 0 (but still counts in the mean, as in the reference where
    its ``d⁻`` is a huge number). ``D`` is Euclidean (:func:`pairwise_euclidean`); ``normalize_features``
    L2-normalises the rows first (AML uses raw post-BN features, i.e. False). Computed in float32.
    """
    check_pair(features, labels, "batch_hard_triplet")
    if margin is not None and margin < 0:
        raise ValueError(f"batch_hard_triplet: margin must be >= 0 or None (soft margin), got {margin}")
    with full_precision(features.device):
        x = as_float(features)
        if normalize_features:
            x = F.normalize(x, dim=1, eps=1e-12)
        dist = pairwise_euclidean(x)
        is_pos = labels.unsqueeze(0) == labels.unsqueeze(1)
        d_p = dist.masked_fill(~is_pos, float("-inf")).max(dim=1).values
        d_n = dist.masked_fill(is_pos, float("inf")).min(dim=1).values
        has_neg = (~is_pos).any(dim=1)
        d_n = torch.where(has_neg, d_n, d_p)  # finite placeholder; the term is zeroed below
        diff = d_p - d_n
        per_anchor = F.softplus(diff) if margin is None else F.relu(diff + margin)
        return torch.where(has_neg, per_anchor, torch.zeros_like(per_anchor)).mean()
