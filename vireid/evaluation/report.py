"""Reports of an evaluation: the summary dict (the JSON of ``vireid evaluate``), a text table, a CMC plot.

The JSON keys are a user-facing contract (issue 3): ``protocol, mode, direction, trials, rerank, rank1, rank5,
rank10, rank20, mAP, mINP, cmc (20 values), per_trial, num_query, num_gallery``, metrics in percent (0-100).
We add ``shots``, ``std`` (population standard deviation over trials of each scalar metric) and ``num_valid_query``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SCALARS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")

__all__ = ["summarize_trials", "format_table", "write_json", "plot_cmc", "SCALARS"]


def _size(values: Sequence[int]) -> int | float:
    """One gallery/query size when all trials agree, else the mean."""
    vals = list(values)
    return int(vals[0]) if len(set(vals)) == 1 else float(np.mean(vals))


def summarize_trials(plan: Any, per_trial: Sequence[Any], *, rerank: bool = False,
                     trial_indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Mean (and std) over trials of the percent metrics of :class:`RankingResult` objects, per-trial rows too.

    ``plan`` supplies protocol/mode/direction/shots (a :class:`ProtocolPlan`, or anything with those attributes).
    ``trial_indices`` overrides the trial numbers (several RegDB files: 1..n).
    """
    rows = []
    for k, res in enumerate(per_trial):
        s = res.summary()
        idx = trial_indices[k] if trial_indices is not None else plan.trials[k].index
        rows.append({"trial": int(idx), **{m: s[m] for m in SCALARS}, "cmc": s["cmc"],
                     "num_query": s["num_query"], "num_valid_query": s["num_valid"], "num_gallery": s["num_gallery"]})
    out: dict[str, Any] = {
        "protocol": plan.protocol,
        "mode": plan.mode,
        "direction": plan.direction,
        "shots": plan.shots,
        "trials": len(rows),
        "rerank": bool(rerank),
    }
    for m in SCALARS:
        out[m] = float(np.mean([r[m] for r in rows]))
    out["cmc"] = [float(v) for v in np.mean([r["cmc"] for r in rows], axis=0)]
    out["std"] = {m: float(np.std([r[m] for r in rows])) for m in SCALARS}
    out["per_trial"] = rows
    out["num_query"] = _size([r["num_query"] for r in rows])
    out["num_valid_query"] = _size([r["num_valid_query"] for r in rows])
    out["num_gallery"] = _size([r["num_gallery"] for r in rows])
    return out


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width text table: one row per trial (when more than one) and the mean (± std)."""
    head = f"{'':<8}{'Rank-1':>8}{'Rank-5':>8}{'Rank-10':>9}{'Rank-20':>9}{'mAP':>8}{'mINP':>8}{'#query':>8}{'gallery':>9}"
    title_bits = [summary["protocol"]]
    if summary.get("mode"):
        title_bits.append(f"mode={summary['mode']}")
    if summary.get("shots") and summary["protocol"].startswith("sysu") and summary["protocol"] != "sysu-mm02":
        title_bits.append(f"shots={summary['shots']}")
    title_bits.append(f"direction={summary['direction']}")
    title_bits.append(f"trials={summary['trials']}")
    if summary.get("rerank"):
        title_bits.append("re-ranked")
    lines = ["  ".join(title_bits), head, "-" * len(head)]

    def row(name: str, r: dict[str, Any]) -> str:
        g = r["num_gallery"]
        gs = f"{g}" if isinstance(g, int) else f"{g:.1f}"
        q = r["num_query"]
        qs = f"{q}" if isinstance(q, int) else f"{q:.1f}"
        return (f"{name:<8}{r['rank1']:>8.2f}{r['rank5']:>8.2f}{r['rank10']:>9.2f}{r['rank20']:>9.2f}"
                f"{r['mAP']:>8.2f}{r['mINP']:>8.2f}{qs:>8}{gs:>9}")

    if len(summary["per_trial"]) > 1:
        for r in summary["per_trial"]:
            lines.append(row(f"trial {r['trial']}", r))
        lines.append("-" * len(head))
    lines.append(row("mean", summary))
    if len(summary["per_trial"]) > 1:
        std = summary["std"]
        lines.append(f"{'std':<8}{std['rank1']:>8.2f}{std['rank5']:>8.2f}{std['rank10']:>9.2f}{std['rank20']:>9.2f}"
                     f"{std['mAP']:>8.2f}{std['mINP']:>8.2f}")
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def write_json(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the summary as JSON (atomically: temp file + rename); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def plot_cmc(path: str | Path, summary: dict[str, Any]) -> Path:
    """Save the mean CMC curve (percent vs rank 1..20) as a PNG, with per-trial curves faintly behind it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmc = summary["cmc"]
    ranks = np.arange(1, len(cmc) + 1)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    if len(summary["per_trial"]) > 1:
        for r in summary["per_trial"]:
            ax.plot(ranks, r["cmc"], color="0.8", linewidth=0.8)
    label = f"{summary['protocol']} {summary['direction']} (R1 {summary['rank1']:.2f}, mAP {summary['mAP']:.2f})"
    ax.plot(ranks, cmc, marker="o", markersize=3, linewidth=1.6, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xticks([1, 5, 10, 15, 20] if len(cmc) >= 20 else ranks)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("CMC" + (" (re-ranked)" if summary.get("rerank") else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
