"""Identity classification: cross-entropy with the two label-smoothing conventions in use, and Circle-softmax logits."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._util import as_float, full_precision

__all__ = ["cross_entropy", "circle_logits"]


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    convention: Literal["torch", "fastreid"] = "torch",
) -> torch.Tensor:
    """Mean identity cross-entropy ``−Σ_c t_c · log softmax(z)_c`` over the batch, optionally label-smoothed.

    With ``ε = label_smoothing`` and ``C`` classes the target ``t`` for a sample of class ``y`` is

    * ``convention="torch"`` (default; identical to ``F.cross_entropy(label_smoothing=ε)``):
      ``t_y = 1 − ε + ε/C``, ``t_c = ε/C`` for ``c ≠ y`` (ε spread uniformly over all C classes);
    * ``convention="fastreid"`` (fast-reid's ``cross_entropy_loss``, hence what the AML code trains with, ε = 0.1):
      ``t_y = 1 − ε``, ``t_c = ε/(C − 1)`` for ``c ≠ y`` (ε spread over the other classes only).

    The two differ by O(ε/C) (on AML's ~1,000+ pseudo classes, negligibly); ε = 0 gives plain cross-entropy for
    both. fast-reid divides the summed loss by the number of non-zero per-sample losses; with ε > 0 no per-sample
    loss is exactly 0, so that is the mean used here. Computed in float32 whatever the autocast state.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"cross_entropy: expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    with full_precision(logits.device):
        z = as_float(logits)
        if convention == "torch" or label_smoothing == 0.0:
            if convention not in ("torch", "fastreid"):
                raise ValueError(f"cross_entropy: convention must be 'torch' or 'fastreid', got {convention!r}")
            return F.cross_entropy(z, labels, label_smoothing=label_smoothing)
        if convention != "fastreid":
            raise ValueError(f"cross_entropy: convention must be 'torch' or 'fastreid', got {convention!r}")
        num_classes = z.shape[1]
        if num_classes < 2:
            raise ValueError("cross_entropy: the fastreid smoothing convention needs at least 2 classes")
        log_p = F.log_softmax(z, dim=1)
        target = torch.full_like(log_p, label_smoothing / (num_classes - 1))
        target.scatter_(1, labels.unsqueeze(1), 1.0 - label_smoothing)
        return -(target * log_p).sum(dim=1).mean()


def circle_logits(cosine: torch.Tensor, labels: torch.Tensor, scale: float = 64.0,
                  margin: float = 0.35) -> torch.Tensor:
    """Circle-softmax logits (Sun et al., CVPR 2020, classification form), as fast-reid's ``CircleSoftmax`` builds them.

    ``cosine`` [N, C] are the cosines ``s`` between L2-normalised features and L2-normalised class weights (the
    ``classifier="circle"`` head returns them); feed the result to :func:`cross_entropy`. With ``m = margin``::

        target class  y:  α_p = max(0, 1 + m − s_y),  Δ_p = 1 − m,   logit_y = scale · α_p · (s_y − Δ_p)
        other classes c:  α_n = max(0, s_c + m),      Δ_n = m,       logit_c = scale · α_n · (s_c − Δ_n)

    ``α_p``, ``α_n`` are computed from ``s.detach()`` (as in the reference): they re-weight each similarity by how
    far it is from its optimum (1 + m for the target, −m for the others) but are not themselves differentiated, so
    ``∂logit/∂s = scale · α``. Labels are needed at training time only; at test time use the cosines themselves.
    Computed in float32.
    """
    if cosine.dim() != 2 or labels.dim() != 1 or labels.shape[0] != cosine.shape[0]:
        raise ValueError(
            f"circle_logits: expected cosine [N, C] and labels [N], got {tuple(cosine.shape)} and {tuple(labels.shape)}"
        )
    with full_precision(cosine.device):
        s = as_float(cosine)
        sd = s.detach()
        alpha_p = (1.0 + margin - sd).clamp(min=0.0)
        alpha_n = (sd + margin).clamp(min=0.0)
        logit_p = scale * alpha_p * (s - (1.0 - margin))
        logit_n = scale * alpha_n * (s - margin)
        is_target = F.one_hot(labels, num_classes=s.shape[1]).to(torch.bool)
        return torch.where(is_target, logit_p, logit_n)
