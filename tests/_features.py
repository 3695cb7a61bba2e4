"""Synthetic feature sets for the re-ranking and clustering tests."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    """``n`` float32 points around ``clusters`` Gaussian centres, so k-reciprocal sets are non-trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32)
