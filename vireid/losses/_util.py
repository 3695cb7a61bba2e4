"""Shared helpers for the loss functions: a float32 region that autocast cannot lower, and batch masks.

Every loss in :mod:`vireid.losses` computes in float32 (or float64 when given float64, for gradient checks): distance
matrices, softmax weights and logs lose too much precision in fp16/bf16. Under ``torch.autocast`` a matmul would be
silently lowered even with float32 inputs, so the helpers below switch autocast off for the duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device``'s type inside the block (no-op where autocast is not supported)."""
    try:
        ctx: contextlib.AbstractContextManager = torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def as_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or unchanged when it is already float32/float64 (float64 keeps gradcheck exact)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_pair(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``features`` is [N, D] and ``labels`` is [N]."""
    if features.dim() != 2:
        raise ValueError(f"{name}: features must be [N, D], got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}: labels must be [N] with N = {features.shape[0]} (the number of feature rows), "
            f"got shape {tuple(labels.shape)}"
        )


def group_means(features: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean feature of every distinct key (``keys`` [N], or [N, K] for composite keys such as (identity, camera)).

    Returns ``(unique_keys [G] or [G, K], centres [G, D], inverse [N])`` with ``centres[inverse[i]]`` the centre of
    sample i's group; groups are in ascending key order. Gradients flow into every member (the centres are batch
    statistics, not learned parameters).
    """
    if keys.dim() == 2:
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True, dim=0)
    else:
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    g = uniq.shape[0]
    sums = features.new_zeros((g, features.shape[1])).index_add(0, inverse, features)
    counts = torch.bincount(inverse, minlength=g).to(features.dtype)
    return uniq, sums / counts.unsqueeze(1), inverse
