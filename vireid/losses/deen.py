"""DEEN's two expansion losses (Zhang & Wang, CVPR 2023), as the official code computes them.

Source: ZYK100/LLCM ``DEEN/loss.py`` (``CPMLoss``) and ``DEEN/model.py`` (``loss_ort``) @ 886e27c; the recipe card
``docs/recipes/deen.md`` gives the lines. Both act on the *pooled* features (before the BNNeck) of the expanded batch
``[original; expansion_1; ...]`` that :class:`vireid.models.deen.DEENModel` returns in training mode.

* :func:`center_pair_mining` -- the center-guided pair mining loss (CPM) between the original embeddings and one
  expansion of them.
* :func:`expansion_orthogonality` -- the orthogonality ("diversity") term between the expansions.
* :func:`deen_expansion_terms` -- both over a whole DEEN batch, summed over the expansions as ``train.py`` does.

Identity cross-entropy and the batch-hard triplet loss of DEEN are :func:`vireid.losses.cross_entropy` and
:func:`vireid.losses.batch_hard_triplet` (margin 0.3) on all rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import as_float, check_pair, full_precision, group_means
from .metric import pairwise_euclidean

__all__ = ["center_pair_mining", "deen_expansion_terms", "expansion_orthogonality"]


def _modality_centres(features: torch.Tensor, labels: torch.Tensor, modalities: torch.Tensor,
                      modality: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = modalities == modality
    uniq, centres, _ = group_means(features[rows], labels[rows])
    return uniq, centres


def _nearest_other(centres: torch.Tensor) -> torch.Tensor:
    """For every centre, the distance to the nearest *other* centre (the reference's ``dist[i][mask == 0].min()``)."""
    d = pairwise_euclidean(centres)
    eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    return d.masked_fill(eye, float("inf")).min(dim=1).values


def center_pair_mining(
    original: torch.Tensor,
    expanded: torch.Tensor,
    labels: torch.Tensor,
    modalities: torch.Tensor,
    margin: float = 0.2,
) -> torch.Tensor:
    """Center-guided pair mining loss between ``original`` embeddings and one ``expanded`` copy of them.

    ``original`` and ``expanded`` are [N, D] with row i of ``expanded`` the expansion of row i of ``original``;
    ``labels`` and ``modalities`` (0 visible, 1 infrared) describe the rows. Per identity y present in the batch
    (both modalities must hold the same identities, at least two of them) take the four centres (means over that
    identity's rows)::

        A_y: original visible     B_y: original infrared     C_y: expanded visible     D_y: expanded infrared

    With Euclidean distances d (:func:`vireid.losses.pairwise_euclidean`), ``sg`` = stop-gradient, ``m = margin`` and
    ``r(v) = mean_y max(0, v_y + m)``::

        L_v = r(d(B,C) − sg d(A,C)) + ½ [ r(d(B,C) − min_{y'≠y} d(C_y, C_y')) + r(d(B,C) − min_{y'≠y} d(A_y, A_y')) ]
        L_i = r(d(A,D) − sg d(B,D)) + ½ [ r(d(A,D) − min_{y'≠y} d(D_y, D_y')) + r(d(A,D) − min_{y'≠y} d(B_y, B_y')) ]
        CPM = (L_v + L_i) / 2

    i.e. the expansion of a visible identity must land nearer that identity's *infrared* centre than its own
    visible source, and nearer than the closest other identity (and symmetrically for infrared). This is the
    official ``CPMLoss``: it splits the batch into four quarters and each quarter into consecutive per-identity
    groups, and because its label mask compares the sorted *unique* labels with themselves, the "positive" and
    "negative" pairs reduce to the same identity (``max``/``min`` over one entry) and to the nearest other centre,
    as written above. Here the centres are grouped by label and modality instead of by position, which gives the
    same value whenever the reference's positional grouping is valid (P identities x K images, the same identity
    order in both modalities) and stays correct for any row order. Computed in float32.
    """
    check_pair(original, labels, "center_pair_mining")
    if expanded.shape != original.shape:
        raise ValueError(f"center_pair_mining: expanded {tuple(expanded.shape)} and original "
                         f"{tuple(original.shape)} must have the same shape")
    if modalities.shape != labels.shape:
        raise ValueError(f"center_pair_mining: modalities must be [N] like labels, got {tuple(modalities.shape)}")
    with full_precision(original.device):
        orig, exp = as_float(original), as_float(expanded).to(as_float(original).dtype)
        ids_v, a = _modality_centres(orig, labels, modalities, 0)
        ids_i, b = _modality_centres(orig, labels, modalities, 1)
        _, c = _modality_centres(exp, labels, modalities, 0)
        _, d = _modality_centres(exp, labels, modalities, 1)
        if ids_v.shape != ids_i.shape or not torch.equal(ids_v, ids_i):
            raise ValueError("center_pair_mining: the visible and infrared rows must hold the same identities "
                             f"(got {ids_v.numel()} visible and {ids_i.numel()} infrared identities)")
        if ids_v.numel() < 2:
            raise ValueError("center_pair_mining: needs at least two identities in the batch (the nearest other "
                             "identity's centre is part of the loss)")

        def pair(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            """Distance between the centres of the same identity: the diagonal of the reference's matrix."""
            return (x.pow(2).sum(1) + y.pow(2).sum(1) - 2.0 * (x * y).sum(1)).clamp(min=1e-12).sqrt()

        def hinge(v: torch.Tensor) -> torch.Tensor:
            return F.relu(v + margin).mean()

        ap_v = pair(b, c)
        loss_v = hinge(ap_v - pair(a, c).detach()) + 0.5 * (hinge(ap_v - _nearest_other(c))
                                                             + hinge(ap_v - _nearest_other(a)))
        ap_i = pair(a, d)
        loss_i = hinge(ap_i - pair(b, d).detach()) + 0.5 * (hinge(ap_i - _nearest_other(d))
                                                             + hinge(ap_i - _nearest_other(b)))
        return (loss_v + loss_i) / 2


def expansion_orthogonality(pooled: torch.Tensor, branches: int) -> torch.Tensor:
    """DEEN's orthogonality term between the expansions of each sample (the model's ``loss_ort``).

    ``pooled`` is the whole DEEN batch ``[branches * B, D]`` (original block first, then the expansions). With
    ``e_k`` the k-th expansion block::

        L_ort = Σ_i Σ_{1 ≤ j < k ≤ E} <e_j[i], e_k[i]>  /  (branches · B)

    (raw inner products of the pooled features, no normalisation; the divisor is the number of rows of the whole
    batch, as the official ``.sum() / xp.size(0)``). The pooled features follow a ReLU, so every product is >= 0 and
    the term pushes each sample's expansions towards orthogonal, i.e. diverse, embeddings. 0 with one expansion.
    Computed in float32.
    """
    if pooled.dim() != 2:
        raise ValueError(f"expansion_orthogonality: pooled must be [N, D], got shape {tuple(pooled.shape)}")
    if branches < 2 or pooled.shape[0] % branches:
        raise ValueError(f"expansion_orthogonality: {pooled.shape[0]} rows do not split into {branches} >= 2 blocks")
    with full_precision(pooled.device):
        x = as_float(pooled)
        blocks = torch.chunk(x, branches, dim=0)[1:]
        total = x.new_zeros(())
        for j in range(len(blocks)):
            for k in range(j + 1, len(blocks)):
                total = total + (blocks[j] * blocks[k]).sum()
        return total / x.shape[0]


def deen_expansion_terms(pooled: torch.Tensor, labels: torch.Tensor, modalities: torch.Tensor, branches: int,
                         margin: float = 0.2) -> dict[str, torch.Tensor]:
    """The CPM and orthogonality terms of a DEEN batch, unweighted: ``{"cpm": Σ_k CPM(original, e_k), "ort": ...}``.

    ``pooled`` [branches * B, D] is the model's pooled output; ``labels`` and ``modalities`` [B] describe the
    *original* rows (every expansion block has the same). ``train.py`` sums CPM over the expansions before weighting
    it (``(cpm(ft1, ft2) + cpm(ft1, ft3)) * lambda_1``).
    """
    if pooled.dim() != 2 or pooled.shape[0] != branches * labels.shape[0]:
        raise ValueError(f"deen_expansion_terms: pooled {tuple(pooled.shape)} must have branches x B = "
                         f"{branches} x {labels.shape[0]} rows")
    blocks = torch.chunk(pooled, branches, dim=0)
    cpm = blocks[0].new_zeros((), dtype=torch.float32)
    for expanded in blocks[1:]:
        cpm = cpm + center_pair_mining(blocks[0], expanded, labels, modalities, margin)
    return {"cpm": cpm, "ort": expansion_orthogonality(pooled, branches)}
