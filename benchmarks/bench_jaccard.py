"""Benchmark: sparse clustering Jaccard distance (+ radius-graph DBSCAN) vs the dense reference (SPEC 2.6).

N = 12,936 samples (the SYSU-MM01 IR training count used in the SPEC's cost note), D = 2048, clustered
synthetic features. Methods, each in its own subprocess for a fair peak RSS:

* ``sparse``: :func:`vireid.clustering.jaccard_distance_sparse` (eps 0.6), what DBSCAN needs;
* ``dense_fast``: :func:`vireid.clustering.jaccard_distance`, the full N x N matrix from the sparse core;
* ``reference``: :func:`vireid.clustering.reference.jaccard_distance_dense` (faiss kNN + loops + dense).

Prints speed ratios, peak memory, the largest difference to the reference, and whether DBSCAN labels on
the sparse graph equal DBSCAN labels on the reference matrix (eps 0.4 and 0.6); appends rows to
benchmarks/results/jaccard.csv.

    python benchmarks/bench_jaccard.py [--n 12936] [--dim 2048]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from _harness import append_rows, make_features, print_stats, run_worker, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
RESULTS = Path(__file__).resolve().parent / "results" / "jaccard.csv"
EPS = 0.6


def worker(method: str, path: str, out: str) -> None:
    import scipy.sparse as sp
    import torch  # noqa: F401

    from vireid.clustering import jaccard_distance, jaccard_distance_sparse
    from vireid.clustering.reference import jaccard_distance_dense

    x = np.load(path)
    fns = {"sparse": lambda: jaccard_distance_sparse(x, 30, 6, EPS), "dense_fast": lambda: jaccard_distance(x, 30, 6),
           "reference": lambda: jaccard_distance_dense(x, 30, 6)}
    d, stats = timed(fns[method])
    if method == "sparse":
        sp.save_npz(out, d)
    else:
        np.save(out, d)
    print_stats(stats)


def run(method: str, path: str, out: str) -> dict[str, float]:
    return run_worker(__file__, method, "--data", path, "--out", out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12936)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--worker")
    ap.add_argument("--data")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.data, a.out)
        return
    import scipy.sparse as sp

    from vireid.clustering import dbscan_sparse, jaccard_distance_sparse

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        x = make_features(a.n, a.dim, ids=max(a.n // 32, 2))
        np.save(path, x)
        stats = {}
        for method in ("sparse", "dense_fast", "reference"):
            suffix = ".npz" if method == "sparse" else ".npy"
            stats[method] = run(method, path, os.path.join(tmp, method + suffix))
            print(method, stats[method], flush=True)
        graph = sp.load_npz(os.path.join(tmp, "sparse.npz"))
        fast = np.load(os.path.join(tmp, "dense_fast.npy"))
        ref = np.load(os.path.join(tmp, "reference.npy"))
        diff = np.abs(fast - ref)
        del fast
        same = {}
        for eps in (0.4, 0.6):
            g = graph if eps == EPS else jaccard_distance_sparse(x, 30, 6, eps)
            same[eps] = bool(np.array_equal(dbscan_sparse(g, eps), dbscan_sparse(ref, eps)))
            print(f"eps {eps}: DBSCAN labels sparse == reference dense: {same[eps]}", flush=True)
    r = stats["reference"]
    load = os.getloadavg()[0]
    summary = (
        f"N={a.n} D={a.dim}: sparse {stats['sparse']['seconds']:.2f} s, dense_fast "
        f"{stats['dense_fast']['seconds']:.2f} s, reference {r['seconds']:.2f} s "
        f"({r['seconds'] / stats['sparse']['seconds']:.1f}x / {r['seconds'] / stats['dense_fast']['seconds']:.1f}x); "
        f"peak RSS above baseline: "
        + ", ".join(f"{m} {s['peak_mb'] - s['base_mb']:.0f} MB" for m, s in stats.items())
        + f"; max |dense_fast - reference| {diff.max():.2e}, entries > 1e-5: {(diff > 1e-5).sum()}; "
        f"graph nnz/row {graph.nnz / a.n:.1f}; load avg {load:.1f}"
    )
    print(summary)
    now = dt.datetime.now().isoformat(timespec="seconds")
    append_rows(RESULTS, ["date", "host_cpus", "load_avg", "n", "dim", "method", "seconds", "peak_rss_mb",
                          "baseline_rss_mb", "speedup_vs_reference", "max_abs_diff_dense", "entries_diff_gt_1e-5",
                          "dbscan_labels_equal_eps0.4", "dbscan_labels_equal_eps0.6"],
                [[now, os.cpu_count(), f"{load:.1f}", a.n, a.dim, method, f"{st['seconds']:.3f}",
                  f"{st['peak_mb']:.0f}", f"{st['base_mb']:.0f}", f"{r['seconds'] / st['seconds']:.2f}",
                  f"{diff.max():.2e}", int((diff > 1e-5).sum()), same[0.4], same[0.6]] for method, st in stats.items()])
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
