"""Deterministic seeding and capture/restore of every random number generator a training run touches.

Why: the same config and seed on CPU must give the same numbers, and a run resumed from a checkpoint must continue
with exactly the random streams it would have had. So a checkpoint stores the state of Python's ``random``,
NumPy's global generator, torch's CPU (and CUDA) generators and the trainer's augmentation ``torch.Generator``.

All states are converted to tensors, lists and numbers, so a checkpoint holding them loads with
``torch.load(weights_only=True)`` (no pickled NumPy objects).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = True, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch (CPU + all GPUs); optionally ask for deterministic kernels and fix threads.

    ``deterministic`` turns on ``torch.use_deterministic_algorithms`` (``warn_only``: ops without a deterministic
    implementation warn instead of failing), disables the cuDNN autotuner and sets ``CUBLAS_WORKSPACE_CONFIG`` when
    it is not set yet (it only takes effect if CUDA has not been initialised). ``threads`` fixes the number of
    intra-op CPU threads: floating-point reductions split over a different number of threads can round differently.
    Call it before building the model so that the initial weights depend only on ``seed``.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def make_generator(seed: int, rank: int = 0) -> torch.Generator:
    """The augmentation generator (CPU, as :mod:`vireid.data.transforms` requires) of one process.

    Ranks get different streams (the seed is mixed with the rank) so that the shards of a distributed batch are not
    augmented with the same pattern; rank 0 of a distributed run uses the same stream as a single process.
    """
    return torch.Generator().manual_seed(int(seed) + 1_000_003 * int(rank))


def get_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every generator's state as tensors / lists / numbers (safe for ``torch.load(weights_only=True)``)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [str(np_name), np.asarray(np_keys).astype(np.int64).tolist(), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_initialized() else [],
        "generator": generator.get_state() if generator is not None else None,
    }
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore the states captured by :func:`get_rng_state` (the augmentation generator in place)."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((int(py_version), tuple(int(v) for v in py_internal), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.uint32), int(np_pos), int(np_has_gauss),
                         float(np_gauss)))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:  # another number of visible GPUs: the current device takes the first saved state
            torch.cuda.set_rng_state(cuda[0].cpu())
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"].cpu())
