"""Benchmark: sparse k-reciprocal re-ranking vs the dense published formulation (SPEC 2.5), same arithmetic.

Default Q = 1,000, G = 4,000, D = 512 (issue 10 item 5: the sparse path must stay >= 5x faster there), clustered
synthetic features. Both sides compute in ``--precision`` (default float16, the published arithmetic): ours is
:func:`vireid.evaluation.rerank.k_reciprocal_rerank`, the baseline the dense step-by-step formulation
:func:`vireid.evaluation.rerank_reference.rerank_dense_from_features`. Each runs as one whole call, from the raw
features to the [Q, G] matrix, in its own fresh process (one run of this script runs both), so that peak RSS (the
own high-water mark, see _harness.timed) is measured fairly; the RSS after imports and data loading is reported too.
Prints the speed ratio, the peak-memory ratio and the largest difference of the outputs (0 when the two agree bit
for bit), and appends rows to benchmarks/results/rerank.csv (``method`` = sparse-float16, dense-float16, ...).

    python benchmarks/bench_rerank.py [--queries 1000] [--gallery 4000] [--dim 512] [--precision float16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from _harness import append_rows, make_features, print_stats, run_worker, timed

RESULTS = Path(__file__).resolve().parent / "results" / "rerank.csv"


def worker(method: str, path: str, nq: int, out: str, precision: str) -> None:
    from vireid.evaluation.rerank import k_reciprocal_rerank
    from vireid.evaluation.rerank_reference import rerank_dense_from_features

    x = np.load(path)
    fn = k_reciprocal_rerank if method == "sparse" else rerank_dense_from_features
    d, stats = timed(lambda: fn(x[:nq], x[nq:], precision=precision))
    np.save(out, d)
    print_stats(stats)


def run(method: str, path: str, nq: int, out: str, precision: str) -> dict[str, float]:
    return run_worker(__file__, method, "--data", path, "--queries", str(nq), "--out", out, "--precision", precision)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--gallery", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--precision", choices=("float16", "float32"), default="float16")
    ap.add_argument("--worker")
    ap.add_argument("--data")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.data, a.queries, a.out, a.precision)
        return
    n = a.queries + a.gallery
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        np.save(path, make_features(n, a.dim, ids=max(n // 20, 2)))
        stats = {}
        for method in ("sparse", "dense"):
            stats[method] = run(method, path, a.queries, os.path.join(tmp, f"{method}.npy"), a.precision)
            print(method, stats[method], flush=True)
        fast = np.load(os.path.join(tmp, "sparse.npy"))
        ref = np.load(os.path.join(tmp, "dense.npy"))
    diff = np.abs(fast - ref)
    s, d = stats["sparse"], stats["dense"]
    speed = d["seconds"] / s["seconds"]
    mem = (s["peak_mb"] - s["base_mb"]) / max(d["peak_mb"] - d["base_mb"], 1e-9)
    load = os.getloadavg()[0]
    print(
        f"Q+G={n} D={a.dim} {a.precision}: sparse {s['seconds']:.2f} s vs dense {d['seconds']:.2f} s -> "
        f"{speed:.1f}x faster; "
        f"peak RSS above baseline {s['peak_mb'] - s['base_mb']:.0f} MB vs {d['peak_mb'] - d['base_mb']:.0f} MB "
        f"(ratio {mem:.3f}; total {s['peak_mb']:.0f} vs {d['peak_mb']:.0f} MB); max |diff| {diff.max():.2e}, "
        f"entries > 1e-5: {(diff > 1e-5).sum()} of {diff.size}; load avg {load:.1f}"
    )
    now = dt.datetime.now().isoformat(timespec="seconds")
    append_rows(RESULTS, ["date", "host_cpus", "load_avg", "queries", "gallery", "dim", "method", "seconds",
                          "peak_rss_mb", "baseline_rss_mb", "speedup_vs_dense", "mem_ratio_vs_dense",
                          "max_abs_diff", "entries_diff_gt_1e-5"],
                [[now, os.cpu_count(), f"{load:.1f}", a.queries, a.gallery, a.dim, f"{method}-{a.precision}",
                  f"{st['seconds']:.3f}", f"{st['peak_mb']:.0f}", f"{st['base_mb']:.0f}",
                  f"{speed:.2f}" if method == "sparse" else "1.00", f"{mem:.3f}" if method == "sparse" else "1.000",
                  f"{diff.max():.2e}", int((diff > 1e-5).sum())] for method, st in stats.items()])
    print(f"appended to {RESULTS} ({platform.processor() or platform.machine()})")


if __name__ == "__main__":
    main()
