"""Metric-learning losses on a batch: AGW's weighted regularised triplet and the batch-hard triplet.

Both work on the whole batch at once (all modalities, labels shared), as the reference code does: every sample is an
anchor, positives are the samples with its label, negatives the rest.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._util import as_float, check_pair, full_precision

__all__ = ["pairwise_euclidean", "weighted_regularized_triplet", "batch_hard_triplet"]


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
        dist = pairwise_euclidean(x)
        is_pos = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(dist.dtype)
        is_neg = 1.0 - is_pos
        dist_ap = dist * is_pos
        dist_an = dist * is_neg
        w_ap = _masked_softmax_weights(dist_ap, is_pos, softmax_mode)
        w_an = _masked_softmax_weights(-dist_an, is_neg, softmax_mode)
        d_p = (dist_ap * w_ap).sum(dim=1)
        d_n = (dist_an * w_an).sum(dim=1)
        return F.softplus(d_p - d_n).mean()


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
