"""Weighted sum of named loss terms, with switched-off terms skipped (and, via :func:`enabled`, never computed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["combine", "enabled"]


def enabled(weights: Mapping[str, float], name: str) -> bool:
    """True when term ``name`` has a non-zero weight; a missing weight means off.

    Lets a method skip *computing* a switched-off term (e.g. the whole synergy encoder when λ_div = λ_t = 0), which
    is what makes an ablation run as cheap as the smaller model.
    """
    return float(weights.get(name, 0.0)) != 0.0


def combine(
    terms: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    known: Iterable[str] | None = None,
    return_logs: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``total = Σ_name weights[name] · terms[name]`` over the terms whose weight is non-zero.

    * A weight of 0, or no weight at all, switches the term off: it is left out of the total (no gradient, no log)
      and need not be in ``terms`` (see :func:`enabled`).
    * ``known``: the full set of term names the caller defines. A weight whose name is not known raises ValueError
      listing the known names (catches config typos such as ``wrt`` vs ``triplet``). Without ``known``, the keys of
      ``terms`` are the known names, plus any name whose weight is 0 (a switched-off term that was not computed).
    * A term with a non-zero weight that is missing from ``terms`` raises ValueError.

    Returns ``(total, logs)``: ``total`` is a scalar tensor (float32 zero on the terms' device when every term is
    off); ``logs`` holds each enabled term's unweighted value and ``"loss"`` (the total) as Python floats, read back
    from the device in one transfer. That transfer synchronises with the GPU; a caller that logs elsewhere (or only
    every k steps) passes ``return_logs=False`` and gets ``{}`` with no synchronisation.
    """
    names = set(known) if known is not None else set(terms)
    if known is not None:
        extra = sorted(set(terms) - names)
        if extra:
            raise ValueError(f"combine: terms {extra} are not among the known terms {sorted(names)}")
    for name, w in weights.items():
        if name in names:
            continue
        if known is None and float(w) == 0.0:
            continue
        raise ValueError(f"combine: unknown loss term {name!r} in weights; known terms: {sorted(names | set(terms))}")
    active: list[tuple[str, float, torch.Tensor]] = []
    for name, w in weights.items():
        w = float(w)
        if w == 0.0:
            continue
        if name not in terms:
            raise ValueError(f"combine: term {name!r} has weight {w} but was not computed (terms: {sorted(terms)})")
        t = terms[name]
        if t.dim() != 0:
            raise ValueError(f"combine: term {name!r} must be a scalar tensor, got shape {tuple(t.shape)}")
        active.append((name, w, t))
    if not active:
        device = next(iter(terms.values())).device if terms else torch.device("cpu")
        return torch.zeros((), device=device), ({"loss": 0.0} if return_logs else {})
    total = sum((w * t.float() for _, w, t in active[1:]), active[0][1] * active[0][2].float())
    if not return_logs:
        return total, {}
    values = torch.stack([t.detach().float() for _, _, t in active] + [total.detach()]).tolist()
    logs = {name: v for (name, _, _), v in zip(active, values)}
    logs["loss"] = values[-1]
    return total, logs
