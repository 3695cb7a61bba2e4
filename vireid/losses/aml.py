"""Mutual-learning terms of AML / CMAM (TCSVT 2024; SPEC section 6): symmetric KL between two networks' class
distributions, and the similarity- and distance-structure losses between their batch feature geometries.

Direction convention: ``student`` receives the gradient; ``teacher`` is detached when ``detach_teacher=True`` (AML
stage 1: knowledge flows model1-RGB → model2-gray and model2-gray → model1-on-gray only). Stage 2 detaches nothing
(``detach_teacher=False``), which makes each term symmetric in its two arguments.

The two stages weigh their KL differently in the reference (wuancong/CMAM @ 21d258fb,
fastreid/modeling/meta_arch/mutual_framework.py): stage 1 ``compute_kl_loss_stage1`` (lines 138-146) halves the sum
of both directions -- :func:`symmetric_kl`; stage 2 adds ``compute_kl_loss_stage2(l1, l2) + compute_kl_loss_stage2(l2,
l1)`` (lines 148-151, 211) without the ½ -- :func:`two_way_kl`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._util import as_float, full_precision
from .metric import pairwise_euclidean

__all__ = ["distance_structure", "similarity_structure", "symmetric_kl", "two_way_kl"]


def _reduce(x: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.mean()
    raise ValueError(f"{name}: reduction must be 'sum' or 'mean', got {reduction!r}")


def symmetric_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    detach_teacher: bool = True,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """``KL_sym(p ← q) = ½ [KL(q‖p) + KL(p‖q)]`` with ``p = softmax(student_logits)``, ``q = softmax(teacher_logits)``.

    ``KL(a‖b) = Σ a (log a − log b)``. ``reduction="sum"`` sums over batch and classes (AML's code, weight 0.1 in
    stage 1, 0.01 in stage 2); ``"mean"`` divides by the batch size. With ``detach_teacher`` no gradient reaches the
    teacher's logits. Temperature 1 (none in the reference). Computed in float32 (log-softmax, never log of softmax).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"symmetric_kl: logits must both be [N, C], got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    with full_precision(student_logits.device):
        t = as_float(teacher_logits)
        if detach_teacher:
            t = t.detach()
        log_p = F.log_softmax(as_float(student_logits), dim=1)
        log_q = F.log_softmax(t.to(log_p.dtype), dim=1)
        per = 0.5 * (log_q.exp() * (log_q - log_p) + log_p.exp() * (log_p - log_q))
        if reduction == "mean":
            return per.sum() / per.shape[0]
        return _reduce(per, reduction, "symmetric_kl")


def two_way_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``KL(q‖p) + KL(p‖q)`` with ``p = softmax(logits_a)``, ``q = softmax(logits_b)``: summed over batch and classes,
    no ½, nothing detached (AML stage 2, weight 0.01, on the two cluster memories' logits ``f·Mᵀ/τ``).

    Twice :func:`symmetric_kl` with ``detach_teacher=False``. Reference: ``compute_kl_loss_stage2(p, q) =
    F.kl_div(log_softmax(p), softmax(q), reduction='none').sum()`` = KL(q‖p), called in both orders and added
    (mutual_framework.py:148-151 and :211 at wuancong/CMAM@21d258fb). Computed in float32 (log-softmax).
    """
    if logits_a.shape != logits_b.shape or logits_a.dim() != 2:
        raise ValueError(
            f"two_way_kl: logits must both be [N, C], got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}"
        )
    with full_precision(logits_a.device):
        log_p = F.log_softmax(as_float(logits_a), dim=1)
        log_q = F.log_softmax(as_float(logits_b).to(log_p.dtype), dim=1)
        return (log_q.exp() * (log_q - log_p) + log_p.exp() * (log_p - log_q)).sum()


def similarity_structure(
    student: torch.Tensor,
    teacher: torch.Tensor,
    detach_teacher: bool = True,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """``Σ_ij (S^t_ij − S^s_ij)²`` with ``S = f̄ f̄ᵀ`` the cosine-similarity matrix of the L2-normalised batch features.

    Transfers the teacher's batch geometry (which samples look alike) without matching features directly, so the two
    networks may live in different feature spaces. AML stage 1: post-BN features, pairs (model1-RGB → model2-gray)
    and (model2-gray → model1-on-gray), weight 0.5, summed. ``reduction="mean"`` averages over the N² entries.
    Zero when student == teacher. Computed in float32.
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"similarity_structure: features must both be [N, D], got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    with full_precision(student.device):
        t = as_float(teacher)
        if detach_teacher:
            t = t.detach()
        s_n = F.normalize(as_float(student), dim=1, eps=1e-12)
        t_n = F.normalize(t.to(s_n.dtype), dim=1, eps=1e-12)
        diff = t_n @ t_n.t() - s_n @ s_n.t()
        return _reduce(diff.pow(2), reduction, "similarity_structure")


def distance_structure(
    student: torch.Tensor,
    teacher: torch.Tensor,
    detach_teacher: bool = False,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """``Σ_ij (D^t_ij − D^s_ij)²`` with ``D`` the Euclidean distance matrix of the L2-normalised batch features.

    AML stage 2 (weight 0.05, nothing detached — hence ``detach_teacher=False`` by default): keeps the two networks'
    batch geometries consistent. ``D`` comes from :func:`~vireid.losses.metric.pairwise_euclidean` (squared distance
    clamped at 1e-12, so the zero diagonal passes no gradient). Zero when student == teacher. Computed in float32.
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"distance_structure: features must both be [N, D], got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    with full_precision(student.device):
        t = as_float(teacher)
        if detach_teacher:
            t = t.detach()
        d_s = pairwise_euclidean(F.normalize(as_float(student), dim=1, eps=1e-12))
        d_t = pairwise_euclidean(F.normalize(t, dim=1, eps=1e-12))
        return _reduce((d_t - d_s).pow(2), reduction, "distance_structure")
