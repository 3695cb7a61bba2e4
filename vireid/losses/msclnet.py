"""MSCLNet's training losses (Zhang et al., "Modality Synergy Complement Learning with Cascaded Aggregation for
Visible-Infrared Person Re-Identification", ECCV 2022; SPEC section 5).

No public code exists for this paper, so every function below is our reading of the printed equations. Each
docstring says what was read, what was decided where the paper is silent or looks wrong, and which parameter gives
the alternative, so the paper's ablation (Table 1) can be re-run with either reading. The identity loss L_t of the
synergy module is plain :func:`vireid.losses.cross_entropy` on each modality's logits.

Centres (identity, sub-class) are means over the current batch, differentiable in every member; they are not
learned parameters or memories. "Sub-class" = (identity, camera), as in the paper's cascaded aggregation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._util import as_float, check_pair, full_precision, group_means

__all__ = [
    "modality_diversity",
    "local_complement",
    "global_complement",
    "subclass_center",
    "intra_center",
    "inter_center",
]


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p‖q) = Σ_k p_k (log p_k − log q_k)`` per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def modality_diversity(
    f_v: torch.Tensor,
    f_r: torch.Tensor,
    labels_v: torch.Tensor | None = None,
    labels_r: torch.Tensor | None = None,
    *,
    pairing: Literal["row", "identity"] = "row",
    direction: Literal["v_r", "r_v", "symmetric"] = "v_r",
    max_kl: float | None = None,
) -> torch.Tensor:
    """Modality-diversity loss ``L_div = −KL(softmax f̂^v ‖ softmax f̂^r)`` (maximises the KL: keeps the two
    modality-specific representations from collapsing onto each other).

    Reading and choices:

    * ``f̂`` — the paper's hat marks the instance-normalised modality features; pass the pooled, instance-normalised
      visible and infrared features [N, D]. The softmax is over the feature dimension (each feature vector is turned
      into a distribution over its D channels).
    * Pairing (``pairing``): ``"row"`` (default) pairs ``f_v[i]`` with ``f_r[i]``. The AGW-family sampler draws, for
      each identity, the same number of RGB and IR images in the same order, so row i of the RGB half and row i of
      the IR half are the same person. ``"identity"`` instead compares per-identity mean features (identities present
      in both modalities; ``labels_v``/``labels_r`` required), for batches that are not row-paired.
    * KL direction (``direction``): ``"v_r"`` = KL(P_v‖P_r) as printed; ``"r_v"`` the reverse; ``"symmetric"`` the
      mean of the two.
    * Reduction: mean over pairs (``batchmean``) — the paper gives none; the mean keeps λ_div = 0.5 independent of
      the batch size.
    * Bound (``max_kl``): as printed the loss is unbounded below (the KL grows without limit as the features scale
      up). ``max_kl=None`` (default) is the printed form; a float clamps each pair's KL at ``max_kl`` so the loss
      lies in ``[−max_kl, 0]`` and pairs already that far apart stop receiving gradient.

    Computed in float32.
    """
    if pairing == "row":
        if f_v.shape != f_r.shape or f_v.dim() != 2:
            raise ValueError(
                f"modality_diversity: row pairing needs f_v and f_r of the same shape [N, D], got "
                f"{tuple(f_v.shape)} and {tuple(f_r.shape)}"
            )
    elif pairing == "identity":
        if labels_v is None or labels_r is None:
            raise ValueError("modality_diversity: pairing='identity' needs labels_v and labels_r")
        check_pair(f_v, labels_v, "modality_diversity (visible)")
        check_pair(f_r, labels_r, "modality_diversity (infrared)")
    else:
        raise ValueError(f"modality_diversity: pairing must be 'row' or 'identity', got {pairing!r}")
    if direction not in ("v_r", "r_v", "symmetric"):
        raise ValueError(f"modality_diversity: direction must be 'v_r', 'r_v' or 'symmetric', got {direction!r}")
    with full_precision(f_v.device):
        a, b = as_float(f_v), as_float(f_r)
        if pairing == "identity":
            a, b = _common_identity_centres(a, b, labels_v, labels_r)  # type: ignore[arg-type]
            if a.shape[0] == 0:
                return (f_v.sum() + f_r.sum()).float() * 0.0
        log_v, log_r = F.log_softmax(a, dim=1), F.log_softmax(b, dim=1)
        if direction == "v_r":
            kl = _kl_rows(log_v, log_r)
        elif direction == "r_v":
            kl = _kl_rows(log_r, log_v)
        else:
            kl = 0.5 * (_kl_rows(log_v, log_r) + _kl_rows(log_r, log_v))
        if max_kl is not None:
            kl = kl.clamp(max=max_kl)
        return -kl.mean()


def local_complement(
    parts_v: torch.Tensor,
    parts_s: torch.Tensor,
    variant: Literal["as_printed", "corrected"] = "as_printed",
) -> torch.Tensor:
    """Fine-grained complement loss between the part features of the visible and the synergistic branch.

    ``parts_v``, ``parts_s``: [N, P, D] (P horizontal stripes, 6 in the paper). With ``c_ip = cos(b^v_ip, b^s_ip)``
    and ``sqrt(2 − 2c)`` the Euclidean distance between the L2-normalised parts::

        as_printed:  L_local = mean_i Σ_p [ c_ip + sqrt(2 − 2·c_ip) ]
        corrected:   L_local = mean_i Σ_p [ (1 − c_ip) + sqrt(2 − 2·c_ip) ]

    Why a corrected variant: as printed the two terms pull in opposite directions — ``+c`` rewards *dissimilar*
    parts while ``sqrt(2 − 2c)`` rewards similar ones. On c ∈ [−1, 1], ``g(c) = c + sqrt(2 − 2c)`` has its maximum at
    c = 0.5 and minima at both ends, so descent drives parts with c > 0.5 together and parts with c < 0.5 apart. The
    module's stated purpose (the synergistic features complement and align with each modality's parts) needs both
    terms to pull together; ``1 − c`` has the gradient of ``−c`` and makes the loss non-negative with minimum 0 at
    c = 1. ``as_printed`` stays the default so the published equation is what runs unless chosen otherwise.

    ``2 − 2c`` is clamped at 1e-12 before the square root (its derivative is infinite at c = 1). Computed in float32.
    """
    if parts_v.shape != parts_s.shape or parts_v.dim() != 3:
        raise ValueError(
            f"local_complement: parts must both be [N, P, D], got {tuple(parts_v.shape)} and {tuple(parts_s.shape)}"
        )
    if variant not in ("as_printed", "corrected"):
        raise ValueError(f"local_complement: variant must be 'as_printed' or 'corrected', got {variant!r}")
    with full_precision(parts_v.device):
        a, b = as_float(parts_v), as_float(parts_s)
        c = F.cosine_similarity(a, b, dim=2, eps=1e-8)
        dist = (2.0 - 2.0 * c).clamp(min=1e-12).sqrt()
        first = c if variant == "as_printed" else 1.0 - c
        return (first + dist).sum(dim=1).mean()


def _common_identity_centres(
    f_a: torch.Tensor, f_b: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-identity mean features of two sets, restricted to identities present in both, in ascending label order."""
    ids_a, c_a, _ = group_means(f_a, labels_a)
    ids_b, c_b, _ = group_means(f_b, labels_b)
    in_b = torch.isin(ids_a, ids_b)
    in_a = torch.isin(ids_b, ids_a)
    return c_a[in_b], c_b[in_a]  # both in ascending label order, so row k is the same identity


def global_complement(
    f_s: torch.Tensor, f_r: torch.Tensor, labels_s: torch.Tensor, labels_r: torch.Tensor
) -> torch.Tensor:
    """Coarse-grained complement loss: ``L_global = mean_y ‖C^s_y − C^r_y‖²``.

    ``C^s_y`` / ``C^r_y`` are the batch means of identity y's synergistic features ``f_s`` and infrared features
    ``f_r``; the mean runs over the identities present in both sets (0 when there are none). Squared Euclidean on
    the features as given (no normalisation; the paper gives none). Computed in float32.
    """
    check_pair(f_s, labels_s, "global_complement (synergistic)")
    check_pair(f_r, labels_r, "global_complement (infrared)")
    with full_precision(f_s.device):
        c_s, c_r = _common_identity_centres(as_float(f_s), as_float(f_r), labels_s, labels_r)
        if c_s.shape[0] == 0:
            return (as_float(f_s).sum() + as_float(f_r).sum()) * 0.0
        return (c_s - c_r).pow(2).sum(dim=1).mean()


def _check_cams(f: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor, name: str) -> None:
    check_pair(f, labels, name)
    if cams.shape != labels.shape:
        raise ValueError(f"{name}: cams must be [N] like labels, got {tuple(cams.shape)}")
    if bool((cams < 0).any()):
        raise ValueError(
            f"{name}: camera ids are needed for sub-classes (identity, camera) but some are -1 (unknown); "
            "pass rgb_cams/ir_cams to make_batch"
        )


def _subclasses(f: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor):
    """Sub-class (identity, camera) keys [G, 2], centres [G, D] and each sample's sub-class index [N]."""
    return group_means(f, torch.stack([labels, cams], dim=1))


def _identity_centres(
    f: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor | None, id_center: str
) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """Identity ids [I] and centres [I, D]: mean of the identity's sub-class centres, or of its samples."""
    if id_center == "subclass_mean":
        if cams is None:
            raise ValueError("id_center='subclass_mean' needs camera ids (cams)")
        sub = _subclasses(f, labels, cams)
        keys, c_sub, _ = sub
        ids, c_id, _ = group_means(c_sub, keys[:, 0])
        return ids, c_id, sub
    if id_center == "sample_mean":
        ids, c_id, _ = group_means(f, labels)
        return ids, c_id, None
    raise ValueError(f"id_center must be 'subclass_mean' or 'sample_mean', got {id_center!r}")


def subclass_center(f: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """First cascade level: ``L_sub = mean_i ‖f_i − C_(y_i, cam_i)‖²``.

    ``C_(y, k)`` is the batch mean of the features of identity y seen by camera k (a "sub-class"). Pulls each sample
    to its sub-class centre. The centre is differentiable; since ``Σ_i (f_i − C) = 0`` within a sub-class this gives
    the same gradient as a detached centre. Computed in float32.
    """
    _check_cams(f, labels, cams, "subclass_center")
    with full_precision(f.device):
        x = as_float(f)
        _, c_sub, inverse = _subclasses(x, labels, cams)
        return (x - c_sub[inverse]).pow(2).sum(dim=1).mean()


def intra_center(
    f: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    id_center: Literal["subclass_mean", "sample_mean"] = "subclass_mean",
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Second cascade level: ``L_intra = mean_y Σ_{k ∈ cams(y)} ‖C_(y,k) − C_y‖²``.

    Pulls the sub-class (identity, camera) centres of an identity towards that identity's centre ``C_y``.

    * ``C_y`` (``id_center``): ``"subclass_mean"`` (default) = the mean of the identity's sub-class centres, the
      cascade read literally (samples → sub-class centres → identity centre; every camera counts equally however
      many images it has); ``"sample_mean"`` = the mean of the identity's samples.
    * Reduction over identities (``reduction``): the paper sums over an identity's sub-classes but does not say how
      identities combine; ``"mean"`` (default) keeps the unit weight independent of the number of identities per
      batch, ``"sum"`` sums them.

    An identity seen by a single camera contributes 0. Computed in float32.
    """
    _check_cams(f, labels, cams, "intra_center")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"intra_center: reduction must be 'mean' or 'sum', got {reduction!r}")
    with full_precision(f.device):
        x = as_float(f)
        keys, c_sub, _ = _subclasses(x, labels, cams)
        if id_center == "subclass_mean":
            ids, c_id, sub_to_id = group_means(c_sub, keys[:, 0])
        elif id_center == "sample_mean":
            ids, c_id, _ = group_means(x, labels)
            sub_to_id = torch.searchsorted(ids, keys[:, 0].contiguous())
        else:
            raise ValueError(f"intra_center: id_center must be 'subclass_mean' or 'sample_mean', got {id_center!r}")
        per_sub = (c_sub - c_id[sub_to_id]).pow(2).sum(dim=1)
        per_id = per_sub.new_zeros(ids.shape[0]).index_add(0, sub_to_id, per_sub)
        return per_id.mean() if reduction == "mean" else per_id.sum()


def inter_center(
    f: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor | None = None,
    margin: float | None = 1.0,
    id_center: Literal["subclass_mean", "sample_mean"] | None = None,
) -> torch.Tensor:
    """Third cascade level: push identity centres apart.

    As printed, ``L_inter = −mean_{i<j} ‖C_i − C_j‖²`` over the pairs of identities in the batch. That is unbounded
    below: the network can lower it forever by scaling the features up, swamping every other term. We bound it with
    a hinge on the squared distance::

        margin m (default 1.0):  L_inter = mean_{i<j} max(0, m − ‖C_i − C_j‖²)
        margin None:             L_inter = −mean_{i<j} ‖C_i − C_j‖²        (as printed, unbounded)

    (Clamping the printed term, ``−mean min(‖C_i − C_j‖², m)``, equals the hinge minus the constant m: same
    gradients, so only the hinge is offered.) ``m`` is in squared feature units — for L2-normalised features squared
    distances lie in [0, 4]; for raw features choose it from their scale.

    Identity centres ``C_y`` (``id_center``): default ``"subclass_mean"`` when ``cams`` are given (the cascade: mean
    of the identity's sub-class centres, as :func:`intra_center`), else ``"sample_mean"``. Fewer than two identities
    in the batch give 0. Computed in float32.
    """
    if cams is not None:
        _check_cams(f, labels, cams, "inter_center")
    else:
        check_pair(f, labels, "inter_center")
    if margin is not None and margin < 0:
        raise ValueError(f"inter_center: margin must be >= 0 or None (as printed), got {margin}")
    mode = id_center or ("subclass_mean" if cams is not None else "sample_mean")
    with full_precision(f.device):
        x = as_float(f)
        _, c_id, _ = _identity_centres(x, labels, cams, mode)
        n = c_id.shape[0]
        if n < 2:
            return x.sum() * 0.0
        iu = torch.triu_indices(n, n, offset=1, device=x.device)
        d2 = (c_id[iu[0]] - c_id[iu[1]]).pow(2).sum(dim=1)
        if margin is None:
            return -d2.mean()
        return F.relu(margin - d2).mean()
