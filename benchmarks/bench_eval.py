"""Benchmark: vectorised evaluation vs the per-query loop (vireid.evaluation.reference), same data, same run.

Cases (random features with an identity signal, shaped like the real test sets):

  sysu-single   SYSU-MM01 AGW-style: 96 ids, 3,803 IR queries, 301-image RGB gallery, 10 trials
                (ours: build_protocol + evaluate_protocol end to end, distances included)
  sysu-multi    SYSU-MM01 official split, multi-shot: 3,010-image gallery, 10 runs
  regdb         2,060 x 2,060, standard CMC, one trial
  market        3,368 x 15,913, D = 2048, same-pid-same-camera removal, standard CMC: distances + metrics
                (target < 5 s and < 2 GB peak on 2 CPU cores)

Each implementation runs in its own spawned process so its peak resident memory (ru_maxrss, whole process:
Python + NumPy + the inputs) is its own; both are NumPy on the CPU (neither imports torch; the CSV's last column,
named "torch" for history, holds the NumPy version since the NumPy backend). Both sides start from the features and
include the distances in their
seconds: the loop baseline, like the reference scripts, computes one float32 distance matrix per trial (queries x
that trial's gallery, with the same ``pairwise_distance``) and runs the per-query loop on it; ours computes the
queries x union-of-galleries distances once and evaluates every trial from them (``evaluate_trials``: for the
multi-shot galleries, one sort of each query's union row serves all ten trials; ``--also-per-trial`` adds a row
for the per-trial evaluation of the same distances). The loop's metric-only seconds are printed
too ("loop-only"), so the share of the distance computation is visible. Numbers of both are compared
(max |difference| in percentage points over Rank-1/5/10/20, mAP, mINP and every CMC point of every trial).
Both sides get one small untimed warm-up run first. ``--repeat N`` keeps the fastest of N runs of each side.
Writes rows to benchmarks/results/eval.csv.

Run: ``python benchmarks/bench_eval.py [--cases sysu-single sysu-multi regdb market] [--dim 2048] [--repeat 3]
[--also-per-trial] [--also-sort]``.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "eval.csv"
CASES = ("sysu-single", "sysu-multi", "regdb", "market")


def _features(pids: np.ndarray, dim: int, seed: int, noise: float = 4.5) -> np.ndarray:
    """Identity centre + isotropic noise: realistic-ish retrieval (neither chance nor perfect)."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(pids, return_inverse=True)
    centres = rng.standard_normal((len(uniq), dim), dtype=np.float32)
    return centres[inv] + noise * rng.standard_normal((len(pids), dim), dtype=np.float32)


def _sysu_pool(seed: int = 0):
    """A SYSU-MM01-shaped test pool: 96 ids, 3,803 IR images, 301 RGB folders of 20 images each."""
    from vireid.evaluation.protocols import Pool

    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 534), 96, replace=False))
    folders = [(cam, pid) for pid in ids for cam in (1, 2, 4, 5)]
    keep = np.sort(rng.choice(len(folders), 301, replace=False))
    rows = []
    for k in keep:
        cam, pid = folders[k]
        rows += [(f"cam{cam}/{pid:04d}/{n:04d}.jpg", pid, cam, 0) for n in range(1, 21)]
    ir_folders = [(cam, pid) for pid in ids for cam in (3, 6)]
    counts = rng.multinomial(3803 - len(ir_folders), np.ones(len(ir_folders)) / len(ir_folders)) + 1
    for (cam, pid), c in zip(ir_folders, counts):
        rows += [(f"cam{cam}/{pid:04d}/{n:04d}.jpg", pid, cam, 1) for n in range(1, c + 1)]
    rows.sort()
    pool = Pool(np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
                np.array([r[0] for r in rows]))
    return pool


def _rand_perm(pool, runs: int = 10, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = [[np.zeros((0, 0)) for _ in range(533)] for _ in range(6)]
    for cam in (1, 2, 4, 5):
        for pid in np.unique(pool.pids):
            n = int(((pool.camids == cam) & (pool.pids == pid)).sum())
            if n:
                out[cam - 1][pid - 1] = np.stack([rng.permutation(n) + 1 for _ in range(runs)]).astype(float)
    return out


def _build(case: str, dim: int):
    """Return (kind, payload) for a case. kind 'plan': (features, plan); kind 'pair': (qf, gf, qp, gp, qk, gk, cmc)."""
    from vireid.evaluation.metrics import pair_keys
    from vireid.evaluation.protocols import ProtocolPlan, Trial, sysu_agw, sysu_official

    if case in ("sysu-single", "sysu-multi"):
        pool = _sysu_pool(0)
        feats = _features(pool.pids, dim, 1)
        plan = sysu_agw(pool, "all", 10) if case == "sysu-single" else sysu_official(pool, _rand_perm(pool), "all", 10)
        return "plan", (feats, plan)
    if case == "regdb":
        pids = np.repeat(np.arange(206), 10)
        feats = _features(np.r_[pids, pids], dim, 2)
        n = len(pids)
        plan = ProtocolPlan("regdb", [Trial(0, np.arange(n), np.arange(n, 2 * n))], np.r_[pids, pids],
                            np.full(2 * n, -1), np.full(2 * n, -2), cmc="standard", direction="v2i")
        return "plan", (feats, plan)
    # market
    rng = np.random.default_rng(3)
    qp = rng.integers(0, 750, 3368)
    gp = np.r_[rng.integers(0, 750, 15913 - 2798), np.full(2798, 10_000)]  # gallery with distractors
    qc, gc = rng.integers(1, 7, 3368), rng.integers(1, 7, 15913)
    feats = _features(np.r_[qp, gp], dim, 4, noise=5.0)
    keys = pair_keys(np.r_[qp, gp], np.r_[qc, gc])
    return "pair", (feats[:3368], feats[3368:], qp, gp, keys[:3368], keys[3368:], "standard")


def _current_rss_mb() -> float:
    """Resident memory now (not the peak): what the process holds before the timed part."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _summaries(results) -> list[dict]:
    return [r if isinstance(r, dict) else r.summary() for r in results]


def _warm_up(impl: str) -> None:
    """One small untimed run of the same code path (thread pools, BLAS and allocator start-up) for both sides."""
    from vireid.evaluation.metrics import (
        evaluate_ranking,
        feature_distance_fn,
        pairwise_distance,
    )
    from vireid.evaluation.reference import reference_metrics

    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((300, 64), dtype=np.float32), rng.standard_normal((2000, 64), dtype=np.float32)
    qp, gp = rng.integers(0, 50, 300), rng.integers(0, 50, 2000)
    if impl == "ours":
        evaluate_ranking(feature_distance_fn(qf, gf), qp, gp, cmc="identity")
    else:
        reference_metrics(pairwise_distance(qf, gf), qp, gp)


def _child(case: str, impl: str, dim: int, method: str, threads: int, queue) -> None:
    if threads > 0:  # the NumPy block loops and BLAS both read it (set before NumPy is imported in this process)
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(threads)

    from vireid.evaluation.metrics import (
        evaluate_ranking,
        feature_distance_fn,
        pairwise_distance,
    )
    from vireid.evaluation.protocols import evaluate_protocol
    from vireid.evaluation.reference import reference_metrics

    kind, payload = _build(case, dim)
    _warm_up(impl)
    rss0 = _current_rss_mb()
    t0 = time.perf_counter()
    out = []
    loop_s = float("nan")
    if kind == "plan":
        feats, plan = payload
        if impl == "ours":
            trial_method = "per-trial" if method == "per-trial" else "auto"
            out = [r.summary() for r in evaluate_protocol(feats, plan, trial_method=trial_method).per_trial]
        else:
            from vireid.evaluation.metrics import l2_normalize

            loop_s = 0.0
            f = l2_normalize(feats)
            for t in plan.trials:
                # as the reference scripts do: one distance matrix per trial, queries x that trial's gallery
                d = pairwise_distance(f[t.query], f[t.gallery], normalize=False)
                t1 = time.perf_counter()
                r = reference_metrics(d, plan.pids[t.query], plan.pids[t.gallery],
                                      plan.query_remove_keys[t.query], plan.gallery_remove_keys[t.gallery],
                                      cmc=plan.cmc, invalid_query_quirk=plan.invalid_query_quirk)
                loop_s += time.perf_counter() - t1
                cmc = r["cmc"] * 100
                out.append({"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "rank20": cmc[19],
                            "mAP": r["mAP"] * 100, "mINP": r["mINP"] * 100, "cmc": list(cmc),
                            "num_query": len(t.query), "num_gallery": len(t.gallery)})
    else:
        qf, gf, qp, gp, qk, gk, cmc_kind = payload
        if impl == "ours":
            r = evaluate_ranking(feature_distance_fn(qf, gf), qp, gp, qk, gk, cmc=cmc_kind, method=method)
            out = [r.summary()]
        else:
            d = pairwise_distance(qf, gf)
            t1 = time.perf_counter()
            r = reference_metrics(d, qp, gp, qk, gk, cmc=cmc_kind)
            loop_s = time.perf_counter() - t1
            cmc = r["cmc"] * 100
            out = [{"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "rank20": cmc[19], "mAP": r["mAP"] * 100,
                    "mINP": r["mINP"] * 100, "cmc": list(cmc), "num_query": len(qp), "num_gallery": len(gp)}]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": seconds, "loop_only_s": loop_s, "peak_mb": peak, "before_mb": rss0, "trials": out})


def run_one(case: str, impl: str, dim: int, method: str = "fast", repeat: int = 1, threads: int = 0) -> dict:
    """Run one side in a fresh spawned process; with ``repeat`` > 1 keep the fastest run."""
    best = None
    for _ in range(repeat):
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(case, impl, dim, method, threads, q))
        p.start()
        res = q.get()
        p.join()
        res["load"] = os.getloadavg()[0]  # 1-minute load average when the run ended (shared machines)
        if best is None or res["seconds"] < best["seconds"]:
            best = res
    assert best is not None
    return best


def max_diff(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"):
            worst = max(worst, abs(float(x[k]) - float(y[k])))
        worst = max(worst, float(np.max(np.abs(np.asarray(x["cmc"]) - np.asarray(y["cmc"])))))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads in both children (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side; the fastest is kept (shared machines)")
    ap.add_argument("--also-sort", action="store_true", help="market: also time method='sort' (full argsort)")
    ap.add_argument("--also-per-trial", action="store_true",
                    help="sysu cases: also time evaluate_protocol(trial_method='per-trial') (no union sort)")
    args = ap.parse_args()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["date", "case", "impl", "queries", "gallery", "trials", "dim", "seconds", "loop_only_s",
                        "peak_rss_mb", "rss_before_mb", "speedup_vs_loop", "max_diff_pp", "rank1", "mAP", "mINP",
                        "threads", "load_avg_1min", "torch"])
        for case in args.cases:
            ref = run_one(case, "loop", args.dim, repeat=args.repeat, threads=args.threads)
            impls = [("ours", "fast")] + ([("ours-sort", "sort")] if args.also_sort and case == "market" else [])
            if args.also_per_trial and case.startswith("sysu"):
                impls.append(("ours-per-trial", "per-trial"))
            for name, method in impls:
                ours = run_one(case, "ours", args.dim, method, repeat=args.repeat, threads=args.threads)
                diff = max_diff(ours["trials"], ref["trials"])
                ratio = ref["seconds"] / ours["seconds"]
                t0 = ours["trials"][0]
                mean = {k: float(np.mean([t[k] for t in ours["trials"]])) for k in ("rank1", "mAP", "mINP")}
                print(f"{case:<12} {name:<9} {ours['seconds']:7.2f} s  peak {ours['peak_mb']:5.0f} MB (before: "
                      f"{ours['before_mb']:.0f}) | loop "
                      f"{ref['seconds']:7.2f} s (loop-only {ref['loop_only_s']:.2f} s)  "
                      f"peak {ref['peak_mb']:5.0f} MB | {ratio:5.1f}x | "
                      f"max diff {diff:.2e} pp | R1 {mean['rank1']:.2f} mAP {mean['mAP']:.2f}  "
                      f"(Q {t0['num_query']}, G {t0['num_gallery']}, {len(ours['trials'])} trials)")
                now = datetime.now().isoformat(timespec="seconds")
                for impl, res, sp in ((name, ours, ratio), ("loop", ref, 1.0)):
                    if impl == "loop" and name != "ours":
                        continue
                    w.writerow([now, case, impl, t0["num_query"], t0["num_gallery"], len(res["trials"]), args.dim,
                                f"{res['seconds']:.3f}", f"{res['loop_only_s']:.3f}", f"{res['peak_mb']:.0f}",
                                f"{res['before_mb']:.0f}", f"{sp:.2f}", f"{diff:.2e}",
                                f"{mean['rank1']:.4f}", f"{mean['mAP']:.4f}", f"{mean['mINP']:.4f}",
                                args.threads or os.cpu_count(), f"{res['load']:.2f}", f"numpy {np.__version__}"])
                fh.flush()
    print(f"rows appended to {RESULTS.relative_to(ROOT)} "
          f"({platform.machine()}, {args.threads or os.cpu_count()} threads)")


if __name__ == "__main__":
    main()
