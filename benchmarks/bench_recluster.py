"""Benchmark: AML's per-epoch re-clustering at SYSU-MM01 scale (SPEC 6), ours vs the dense formulation, CPU.

22,258 RGB + 11,909 IR features (the SYSU-MM01 training counts), D = 4,096 (the ``[model1 || model2]``
concatenation), clustered random features from the harness around 395 identity centres (SYSU-MM01's training ids;
RGB and IR rows share the centres). Methods, each in its own subprocess for a fair peak RSS:

* ``ours_dbscan``: :func:`vireid.clustering.cluster_cross_modal` (method "dbscan": sparse Jaccard k1 30 / k2 6 +
  DBSCAN eps 0.4 / min_samples 4 on the radius graph, per modality, then the Ward/Hungarian association);
* ``ours_kmeans``: the same with method "kmeans" (cosine k-means, K = 400 per modality, 20 iterations, faiss);
* ``dense``: the straightforward formulation -- the dense reference Jaccard
  (:func:`vireid.clustering.reference.jaccard_distance_dense`: faiss kNN, Python loops, N x N matrices) +
  ``sklearn.cluster.DBSCAN(metric="precomputed")`` on the dense matrix, then the same :func:`associate`.

Prints seconds, the speed ratio to ``dense``, peak RSS and its rise above the worker's baseline (the RSS with
imports done and features loaded; the high-water mark is reset there, see :func:`_harness.timed`),
whether the per-modality DBSCAN labels and the associated labels of ``ours_dbscan`` equal ``dense``'s, and the
agreement of each result with the true identities (ARI, match precision). Appends rows to
benchmarks/results/recluster.csv.

The machine may be loaded (it is shared: other jobs compete for the same 2 cores), so seconds are noisy; the
``load_avg`` column records the 1-minute load average at the end of the run. ``--scale 0.1`` runs a quick check on
10% of the samples (and 10% of the identities).

    python benchmarks/bench_recluster.py [--scale 1.0] [--dim 4096] [--methods ours_dbscan,ours_kmeans,dense]
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
RESULTS = Path(__file__).resolve().parent / "results" / "recluster.csv"
N_RGB, N_IR, IDS = 22258, 11909, 395
EPS, MIN_SAMPLES, K1, K2, K = 0.4, 4, 30, 6, 400
METHODS = ("ours_dbscan", "ours_kmeans", "dense")


def worker(method: str, path: str, n_rgb: int, k: int, out: str) -> None:
    import torch  # noqa: F401  (imported before the baseline so every method pays for it)
    import torch.nn.functional as F
    from sklearn.cluster import DBSCAN

    from vireid.clustering import associate, cluster_cross_modal
    from vireid.clustering.reference import jaccard_distance_dense

    x = np.load(path)
    rgb, ir = x[:n_rgb], x[n_rgb:]

    def dense():
        labels = []
        for part in (rgb, ir):
            d = jaccard_distance_dense(part, K1, K2)
            labels.append(DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed").fit_predict(d))
            del d
        xr = F.normalize(torch.from_numpy(rgb), dim=1).numpy()
        xi = F.normalize(torch.from_numpy(ir), dim=1).numpy()
        return associate(xr, labels[0], xi, labels[1])

    fns = {
        "ours_dbscan": lambda: cluster_cross_modal(rgb, ir, method="dbscan", eps=EPS, min_samples=MIN_SAMPLES, k1=K1,
                                                   k2=K2, device="cpu"),
        "ours_kmeans": lambda: cluster_cross_modal(rgb, ir, method="kmeans", k=k, device="cpu"),
        "dense": dense,
    }
    a, stats = timed(fns[method])
    np.savez(out, labels_rgb=a.labels_rgb, labels_ir=a.labels_ir, raw_rgb=a.raw_labels_rgb, raw_ir=a.raw_labels_ir,
             counts=np.array([a.clusters_rgb, a.clusters_ir, a.num_clusters]))
    print_stats(stats)


def true_ids(n: int, dim: int, ids: int, seed: int = 0) -> np.ndarray:
    """The identity of every row of ``make_features(n, dim, ids, seed)`` (same random stream: centres, then ids)."""
    rng = np.random.default_rng(seed)
    rng.normal(size=(ids, dim))
    return rng.integers(0, ids, n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the SYSU-MM01 sample and identity counts")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--worker")
    ap.add_argument("--data")
    ap.add_argument("--n-rgb", type=int)
    ap.add_argument("--k", type=int)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.data, a.n_rgb, a.k, a.out)
        return
    from vireid.clustering import Association, clustering_diagnostics

    methods = [m for m in a.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    n_rgb, n_ir = max(round(N_RGB * a.scale), 8), max(round(N_IR * a.scale), 8)
    ids = max(round(IDS * a.scale), 2)
    k = max(round(K * a.scale), 2)
    truth = true_ids(n_rgb + n_ir, a.dim, ids)
    stats: dict[str, dict[str, float]] = {}
    res: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        x = make_features(n_rgb + n_ir, a.dim, ids=ids)
        # the identity stream reproduced above must be the one make_features used: every row nearest its centre
        centres = np.random.default_rng(0).normal(size=(ids, a.dim)).astype(np.float32)
        probe = np.arange(0, n_rgb + n_ir, max((n_rgb + n_ir) // 200, 1))
        assert (np.argmax(x[probe] @ centres.T - 0.5 * (centres**2).sum(1), axis=1) == truth[probe]).all()
        np.save(path, x)
        del x
        for m in methods:
            out = os.path.join(tmp, m + ".npz")
            stats[m] = run_worker(__file__, m, "--data", path, "--n-rgb", str(n_rgb), "--k", str(k), "--out", out)
            with np.load(out) as z:
                res[m] = {key: z[key] for key in z.files}
            print(m, {kk: round(v, 2) for kk, v in stats[m].items()}, flush=True)
    load = os.getloadavg()[0]
    diag = {}
    for m, r in res.items():
        c = r["counts"]
        assoc = Association(r["labels_rgb"], r["labels_ir"], int(c[2]), int(c[0]), int(c[1]))
        diag[m] = clustering_diagnostics(assoc, truth[:n_rgb], truth[n_rgb:])
    same_raw = same_final = None
    if "ours_dbscan" in res and "dense" in res:
        o, d = res["ours_dbscan"], res["dense"]
        same_raw = bool(np.array_equal(o["raw_rgb"], d["raw_rgb"]) and np.array_equal(o["raw_ir"], d["raw_ir"]))
        same_final = bool(np.array_equal(o["labels_rgb"], d["labels_rgb"])
                          and np.array_equal(o["labels_ir"], d["labels_ir"]))
    ref = stats.get("dense")
    print(f"\nRGB {n_rgb} + IR {n_ir} features, D = {a.dim}, {ids} identities, load avg {load:.1f} (shared machine)")
    print(f"{'method':<12} {'seconds':>9} {'x dense':>8} {'peak MB':>8} {'+MB':>7} {'C_rgb':>6} {'C_ir':>5} "
          f"{'C':>5} {'out_rgb':>8} {'out_ir':>7} {'ARI':>6} {'match_p':>8}")
    for m, s in stats.items():
        g = diag[m]
        ratio = f"{ref['seconds'] / s['seconds']:.2f}" if ref else "-"
        print(f"{m:<12} {s['seconds']:9.2f} {ratio:>8} {s['peak_mb']:8.0f} {s['peak_mb'] - s['base_mb']:7.0f} "
              f"{g['clusters_rgb']:6.0f} {g['clusters_ir']:5.0f} {g['num_clusters']:5.0f} "
              f"{g['outlier_fraction_rgb']:8.3f} {g['outlier_fraction_ir']:7.3f} {g['ari']:6.3f} "
              f"{g['match_precision']:8.3f}")
    if same_raw is not None:
        print(f"DBSCAN labels ours == dense (both modalities): {same_raw}; associated labels equal: {same_final}")
    now = dt.datetime.now().isoformat(timespec="seconds")
    rows = []
    for m, s in stats.items():
        g = diag[m]
        eq = (same_raw, same_final) if m == "ours_dbscan" else ("", "")
        rows.append([now, os.cpu_count(), f"{load:.1f}", n_rgb, n_ir, a.dim, ids, m, f"{s['seconds']:.3f}",
                     f"{s['peak_mb']:.0f}", f"{s['base_mb']:.0f}",
                     f"{ref['seconds'] / s['seconds']:.2f}" if ref else "", *eq, int(g["clusters_rgb"]),
                     int(g["clusters_ir"]), int(g["num_clusters"]), f"{g['outlier_fraction_rgb']:.4f}",
                     f"{g['outlier_fraction_ir']:.4f}", f"{g['ari']:.4f}", f"{g['match_precision']:.4f}"])
    append_rows(RESULTS, ["date", "host_cpus", "load_avg", "n_rgb", "n_ir", "dim", "ids", "method", "seconds",
                          "peak_rss_mb", "baseline_rss_mb", "speedup_vs_dense", "dbscan_labels_equal_dense",
                          "associated_labels_equal_dense", "clusters_rgb", "clusters_ir", "num_clusters",
                          "outlier_fraction_rgb", "outlier_fraction_ir", "ari", "match_precision"], rows)
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
