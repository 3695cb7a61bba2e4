"""Batched feature extraction from an image cache: the features every protocol and the features file consume.

Features are what the model returns in eval mode (L2-normalised; ``bn`` after the BNNeck is the reported one,
``pooled`` before it). With ``flip`` the L2-normalised features of each image and its mirror image are averaged and
re-normalised (CAJ / AML test-time augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vireid.data.cache import ImageCache, batch_to_tensor
from vireid.data.transforms import normalize, to_float


@torch.no_grad()
def extract_features(
    model: nn.Module,
    cache: ImageCache,
    modalities: Sequence[int] | np.ndarray,
    *,
    rows: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    flip: bool = False,
    feature: Literal["bn", "pooled"] = "bn",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Features [len(rows), D] float32 of cache rows ``rows`` (default: all), each fed with its modality.

    ``modalities`` is aligned with the cache rows (0 visible, 1 infrared): the two-stream model routes each image
    through its modality's stem. The model is put in eval mode and left there.
    """
    device = torch.device(device)
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows, dtype=np.int64)
    mods = np.asarray(modalities, dtype=np.int64)
    model.eval()
    out: list[np.ndarray] = []
    starts = range(0, len(rows), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="extracting features", unit="batch", leave=False)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for a in starts:
        idx = rows[a:a + batch_size]
        x = normalize(to_float(batch_to_tensor(cache.batch(np.sort(idx)), device=device).contiguous()))
        order = np.argsort(np.argsort(idx))  # cache.batch reads sorted rows (faster memmap access); undo it
        x = x[torch.from_numpy(order).to(device)]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        m = torch.from_numpy(mods[idx]).to(device)
        with autocast:
            f = _features(model, x, m, feature)
            if flip:
                f = F.normalize(f + _features(model, torch.flip(x, dims=[3]), m, feature), dim=1)
        out.append(f.float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _features(model: nn.Module, x: torch.Tensor, modality: torch.Tensor, feature: str) -> torch.Tensor:
    result = model(x, modality)
    return F.normalize(getattr(result, feature).float(), dim=1)
