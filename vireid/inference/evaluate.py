"""A model's features of a sample list, evaluated with a protocol plan: what testing and validation share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vireid.checkpoints import TestSettings
from vireid.data.cache import ImageCache
from vireid.evaluation.protocols import ProtocolPlan, evaluate_protocol
from vireid.inference.extract import extract_features

__all__ = ["evaluate_samples"]


def evaluate_samples(model: torch.nn.Module, cache: ImageCache, modalities: Sequence[int], plan: ProtocolPlan,
                     settings: TestSettings, device: torch.device, *,
                     progress: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Extract the features of every ``cache`` row (``modalities`` aligned with them) with the test-time
    ``settings`` and evaluate ``plan`` on them; returns (summary, features)."""
    feats = extract_features(model, cache, list(modalities), batch_size=settings.batch_size, device=device,
                             flip=settings.flip, feature=settings.feature, progress=progress)  # type: ignore[arg-type]
    return evaluate_protocol(feats, plan, device=str(device)).summary(), feats
