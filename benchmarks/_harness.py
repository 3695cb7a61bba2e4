"""Shared pieces of the benchmarks that time each method in its own process (fair peak RSS per method)."""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def make_features(n: int, dim: int, ids: int, seed: int = 0) -> np.ndarray:
    """Random features clustered around ``ids`` identity centres (so k-reciprocal sets are non-trivial)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim)).astype(np.float32)
    labels = rng.integers(0, ids, n)
    return centres[labels] + 1.0 * rng.normal(size=(n, dim)).astype(np.float32)


def _vm_kb(field: str) -> float | None:
    """``VmHWM`` / ``VmRSS`` of this process in kB from /proc/self/status (None where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux ``/proc/self/clear_refs``); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` and report its seconds and this process's RSS before (``base_mb``) and at its peak (``peak_mb``).

    ``ru_maxrss`` survives ``execve``: a worker started by a big parent starts with the parent's peak, which would
    hide the method's own peak. So on Linux the high-water mark is reset just before ``fn`` and ``VmHWM`` is read
    after it (the base is ``VmRSS`` at that point); elsewhere ``ru_maxrss`` before/after is used.
    """
    own = _reset_peak()
    base_kb = _vm_kb("VmRSS") if own else None
    if base_kb is None:
        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak_kb = _vm_kb("VmHWM") if own else None
    if peak_kb is None:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result, {"seconds": seconds, "peak_mb": peak_kb / 1024, "base_mb": base_kb / 1024}


def append_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Append ``rows`` to the CSV file ``path``, writing ``header`` first when the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerows(rows)


def print_stats(stats: dict[str, float]) -> None:
    """The worker's last stdout line, read back by :func:`run_worker`."""
    print(json.dumps(stats))


def run_worker(script: str, *args: str) -> dict[str, float]:
    """Run ``script --worker ...`` in a fresh Python process and return the stats it printed last."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])
