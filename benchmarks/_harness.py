"""Shared pieces of the benchmarks that time each method in its own process (fair peak RSS per method)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def make_features(n: int, dim: int, ids: int, seed: int = 0) -> np.ndarray:
    """Random features clustered around ``ids`` identity centres (so k-reciprocal sets are non-trivial)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim)).astype(np.float32)
    labels = rng.integers(0, ids, n)
    return centres[labels] + 1.0 * rng.normal(size=(n, dim)).astype(np.float32)


def timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` and report its seconds and this process's peak RSS before/after (MB), as the worker's stats."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result, {"seconds": seconds, "peak_mb": peak / 1024, "base_mb": base / 1024}


def print_stats(stats: dict[str, float]) -> None:
    """The worker's last stdout line, read back by :func:`run_worker`."""
    print(json.dumps(stats))


def run_worker(script: str, *args: str) -> dict[str, float]:
    """Run ``script --worker ...`` in a fresh Python process and return the stats it printed last."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])
