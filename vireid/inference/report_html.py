"""A self-contained HTML report of a training run: one file to mail, archive or open offline.

``build_report(run_dir)`` reads what ``vireid train`` / ``vireid test`` / ``vireid demo`` wrote and renders one
HTML page with inline CSS and every image embedded as a base64 ``data:`` URI (no scripts, no external resources):

* metrics table (Rank-1/5/10/20, mAP, mINP; trained, and untrained when the demo measured it), with the test
  protocol and the sizes of the query and gallery sets;
* CMC curves (mean, per trial faintly, untrained and chance level when known);
* the spread over trials (a table of per-trial values and a strip plot);
* ranked lists of the worst and the best queries by average precision: distances are recomputed from
  ``test_features.npz`` for the first trial of the protocol (same galleries and removal rules as the evaluation),
  and the images are read from the dataset root recorded in the checkpoint (its absolute path, so the working
  directory does not matter; see :func:`dataset_root`); when that root is not reachable from this machine the page
  says so instead;
* training curves from ``log.jsonl``: loss terms and learning rates per step, validation metrics per epoch.

Accepted folders: a ``vireid train`` output folder (``results.json`` or ``test_results.json``, ``log.jsonl``,
``test_features.npz``, ``best.pt``/``last.pt``), and the demo's folder (``vireid-demo/`` holding ``report/`` and
``run/``; its ``report/`` subfolder works too).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vireid.errors import VireidError

__all__ = ["ReportError", "RunFolder", "locate_run", "build_report", "render_report", "worst_and_best_queries"]

METRICS = (("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"), ("rank20", "Rank-20"),
           ("mAP", "mAP"), ("mINP", "mINP"))
# log.jsonl "train" fields that are not loss terms
_NOT_LOSSES = {"kind", "epoch", "step", "global_step", "img_per_s", "time"}


class ReportError(VireidError):
    """The folder is not a run the report can be made from."""


# --------------------------------------------------------------------------------------------------------------------
# finding the files


@dataclass
class RunFolder:
    """The files of one run, as found on disk (None where absent)."""

    root: Path
    results: dict[str, Any]
    results_path: Path
    run_dir: Path | None = None
    untrained: dict[str, Any] | None = None
    demo: dict[str, Any] | None = None
    demo_report_dir: Path | None = None
    log_path: Path | None = None
    features_path: Path | None = None
    checkpoint_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    """Further PNGs of the run to show (AML: clustering diagnostics over training)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); re-run the command that wrote it") \
            from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _is_summary(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(obj.get(k), (int, float)) for k, _ in METRICS)


def locate_run(path: str | os.PathLike) -> RunFolder:
    """Find the results, log, features and checkpoint of a run folder or of the demo's folder.

    Raises :class:`ReportError` (one line) when ``path`` is not a folder or holds no results file.
    """
    root = Path(path)
    if not root.exists():
        raise ReportError(f"{root}: no such folder; pass a run folder of `vireid train` or the demo's folder")
    if not root.is_dir():
        raise ReportError(f"{root}: is a file; pass the run folder that holds it (results.json, log.jsonl, ...)")
    demo_json: Path | None = None
    run_dir: Path | None = root
    if (root / "report" / "results.json").is_file() and (root / "run").is_dir():  # vireid-demo/
        demo_json, run_dir = root / "report" / "results.json", root / "run"
    elif (root / "results.json").is_file() and (root.parent / "run").is_dir() and root.name == "report":
        demo_json, run_dir = root / "results.json", root.parent / "run"

    demo = None
    untrained = None
    if demo_json is not None:
        demo = _read_json(demo_json)
        if isinstance(demo, dict) and _is_summary(demo.get("untrained")):
            untrained = demo["untrained"]

    results, results_path = None, None
    for name in ("results.json", "test_results.json"):
        candidate = run_dir / name if run_dir is not None else None
        if candidate is not None and candidate.is_file():
            obj = _read_json(candidate)
            if isinstance(obj, dict) and _is_summary(obj.get("final")):  # AML: untrained / stage1 / final
                untrained = obj["untrained"] if _is_summary(obj.get("untrained")) else None
                obj = obj["final"]
            if not _is_summary(obj):
                raise ReportError(f"{candidate}: has no rank1/rank5/rank10/rank20/mAP/mINP numbers; it is not a "
                                  "results file written by `vireid train`/`vireid test`")
            results, results_path = obj, candidate
            break
    if results is None and demo is not None and _is_summary(demo.get("trained")):
        results, results_path = demo["trained"], demo_json
    if results is None or results_path is None:
        raise ReportError(f"{root}: no results.json or test_results.json; pass a run folder written by "
                          "`vireid train` / `vireid test`, or the demo's folder (vireid-demo/)")

    run = RunFolder(root=root, results=results, results_path=results_path, run_dir=run_dir, untrained=untrained,
                    demo=demo if isinstance(demo, dict) else None,
                    demo_report_dir=demo_json.parent if demo_json is not None else None)
    if run_dir is not None:
        log = run_dir / "log.jsonl"
        run.log_path = log if log.is_file() else None
        feats = run_dir / "test_features.npz"
        run.features_path = feats if feats.is_file() else None
        named = results.get("checkpoint")
        candidates = ([Path(named)] if isinstance(named, str) else []) + [run_dir / "best.pt", run_dir / "last.pt"]
        run.checkpoint_path = next((c for c in candidates if c.is_file()), None)
        if run.log_path is None and run.checkpoint_path is not None:  # AML: the final phase's own folder
            log = run.checkpoint_path.parent / "log.jsonl"
            run.log_path = log if log.is_file() else None
        if (run_dir / "clustering.png").is_file():
            run.figures.append(("Re-clustering diagnostics (AML stage 2)", run_dir / "clustering.png"))
    return run


# --------------------------------------------------------------------------------------------------------------------
# numbers


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return f"{float(value):.{digits}f}"
    return "–"


def _per_trial(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = results.get("per_trial")
    if not isinstance(rows, list):
        return []
    return [r for r in rows if _is_summary(r)]


def _average_precision(hits: np.ndarray) -> float:
    """AP of one ranked list: the mean over its matches of (matches so far) / (1-based rank); NaN without any."""
    if not hits.any():
        return float("nan")
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def worst_and_best_queries(ap: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``count`` lowest-AP and ``count`` highest-AP queries (NaN = invalid, never chosen).

    Worst first in ascending AP, best first in descending AP; ties keep the query order (stable), and a query is
    never in both lists.
    """
    valid = np.flatnonzero(~np.isnan(ap))
    ascending = valid[np.argsort(ap[valid], kind="stable")]
    count = max(0, min(count, len(ascending) // 2 if len(ascending) > 1 else len(ascending)))
    worst = ascending[:count]
    descending = valid[np.argsort(-ap[valid], kind="stable")]
    best = np.array([i for i in descending if i not in set(worst.tolist())][:count], dtype=np.int64)
    return worst, best


@dataclass
class RankedLists:
    """Trial-0 retrieval recomputed from the features file."""

    protocol: str
    query_paths: list[str]
    gallery_paths: list[str]
    query_pids: np.ndarray
    gallery_pids: np.ndarray
    distances: np.ndarray          # [Q, G], removed entries = inf
    ap: np.ndarray                 # [Q] percent-free 0..1, NaN invalid
    first_match: np.ndarray        # [Q] 1-based rank of the first match in the kept list, 0 invalid
    mAP: float                     # percent, over valid queries


def recompute_trial(features_path: Path, results: dict[str, Any], dataset_root: Path | None) -> RankedLists:
    """Distances and per-query AP of the protocol's first trial, from the features file alone.

    AP is computed here per query (mean precision at each match of the kept list), independently of
    :func:`vireid.evaluation.metrics.evaluate_ranking`, so the page can show that it reproduces the reported mAP.
    """
    import torch

    from vireid.evaluation.features import load_features
    from vireid.evaluation.protocols import build_protocol

    fs = load_features(features_path)
    name = str(results.get("protocol", ""))
    root = dataset_root if dataset_root is not None and dataset_root.is_dir() else None
    plan = build_protocol(name, fs, mode=results.get("mode") or "all", shots=int(results.get("shots") or 1),
                          trials=1 if name in ("sysu", "sysu-official", "llcm") else None,
                          direction=results.get("direction") or "v2i", dataset_root=root)
    trial = plan.trials[0]
    q, g = trial.query, trial.gallery
    f = torch.nn.functional.normalize(torch.from_numpy(fs.features), dim=1)
    dist = torch.cdist(f[q], f[g]).numpy().astype(np.float64)
    removed = plan.query_remove_keys[q][:, None] == plan.gallery_remove_keys[g][None, :]
    dist[removed] = np.inf
    ap = np.full(len(q), np.nan)
    first = np.zeros(len(q), dtype=np.int64)
    for i in range(len(q)):
        kept = np.flatnonzero(~removed[i])
        order = kept[np.argsort(dist[i, kept], kind="stable")]
        matches = fs.pids[g] == fs.pids[q[i]]
        hits = matches[order]
        ap[i] = _average_precision(hits)
        hit = np.flatnonzero(hits)
        first[i] = hit[0] + 1 if hit.size else 0
    valid = ~np.isnan(ap)
    return RankedLists(name, [str(p) for p in fs.paths[q]], [str(p) for p in fs.paths[g]], fs.pids[q], fs.pids[g],
                       dist, ap, first, float(np.mean(ap[valid]) * 100.0) if valid.any() else float("nan"))


# --------------------------------------------------------------------------------------------------------------------
# pictures


def _png_data_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def cmc_figure(results: dict[str, Any], untrained: dict[str, Any] | None, chance: float | None) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for row in _per_trial(results):
        if isinstance(row.get("cmc"), list) and len(_per_trial(results)) > 1:
            ax.plot(np.arange(1, len(row["cmc"]) + 1), row["cmc"], color="0.82", lw=0.8)
    cmc = results.get("cmc")
    if isinstance(cmc, list) and cmc:
        ax.plot(np.arange(1, len(cmc) + 1), cmc, "o-", ms=3, lw=1.8, color="#1f5fbf",
                label=f"trained (R1 {_fmt(results['rank1'])}, mAP {_fmt(results['mAP'])})")
    if untrained is not None and isinstance(untrained.get("cmc"), list):
        u = untrained["cmc"]
        ax.plot(np.arange(1, len(u) + 1), u, "s--", ms=3, lw=1.2, color="#d95f02",
                label=f"untrained (R1 {_fmt(untrained['rank1'])}, mAP {_fmt(untrained['mAP'])})")
    if chance is not None:
        ax.axhline(chance, color="gray", lw=0.8, ls=":", label=f"chance Rank-1 {chance:.1f}")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("CMC (mean over trials; grey: single trials)", fontsize=10)
    fig.tight_layout()
    return _png_data_uri(fig)


def spread_figure(rows: Sequence[dict[str, Any]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    rng = np.random.default_rng(0)
    for x, (key, label) in enumerate(METRICS):
        values = np.array([r[key] for r in rows], dtype=float)
        jitter = rng.uniform(-0.12, 0.12, size=len(values))
        ax.scatter(x + jitter, values, s=18, color="#1f5fbf", alpha=0.75, zorder=3)
        ax.hlines(values.mean(), x - 0.3, x + 0.3, color="#d62728", lw=2, zorder=4)
    ax.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)  # points at 0 or 100 stay visible
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"per-trial values ({len(rows)} trials; red: mean)", fontsize=10)
    fig.tight_layout()
    return _png_data_uri(fig)


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a log.jsonl and one note per line that is not a JSON object (reported on the page)."""
    rows, problems = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}:{number}: not JSON ({exc.msg}); line left out of the curves")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            problems.append(f"{path.name}:{number}: not a JSON object; line left out of the curves")
    return rows, problems


def training_figure(rows: Sequence[dict[str, Any]]) -> str | None:
    train = [r for r in rows if r.get("kind") == "train" and isinstance(r.get("global_step"), (int, float))]
    val = [r for r in rows if r.get("kind") == "val" and isinstance(r.get("epoch"), (int, float))]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.4))
    steps = [r["global_step"] for r in train]
    keys = sorted({k for r in train for k, v in r.items() if k not in _NOT_LOSSES and not k.startswith("lr")
                   and isinstance(v, (int, float))}, key=lambda k: (k != "loss", k))
    for key in keys:
        pts = [(r["global_step"], r[key]) for r in train if isinstance(r.get(key), (int, float))]
        axes[0].plot(*zip(*pts), lw=1.6 if key == "loss" else 0.9, label="total" if key == "loss" else key)
    axes[0].set_title("training loss terms", fontsize=10)
    axes[0].set_xlabel("step")
    lr_keys = sorted({k for r in train for k in r if k.startswith("lr") and isinstance(r[k], (int, float))})
    for key in lr_keys:
        axes[1].plot(steps, [r.get(key, np.nan) for r in train], lw=1.2, label=key)
    axes[1].set_title("learning rate", fontsize=10)
    axes[1].set_xlabel("step")
    for key, label in (("rank1", "Rank-1"), ("mAP", "mAP"), ("mINP", "mINP")):
        pts = [(r["epoch"] + 1, r[key]) for r in val if isinstance(r.get(key), (int, float))]
        if pts:
            axes[2].plot(*zip(*pts), "o-", ms=3, label=label)
    axes[2].set_title("validation (held-out identities)", fontsize=10)
    for ax in axes:
        ax.xaxis.set_major_locator(_integer_ticks())
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("%")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png_data_uri(fig)


def _ranked_figure(root: Path, lists: RankedLists, rows: np.ndarray, top: int, title: str) -> str:
    from vireid.evaluation.visualize import ranked_list_figure

    with tempfile.TemporaryDirectory(prefix="vireid-report-") as tmp:
        out = Path(tmp) / "ranked.png"
        ranked_list_figure(root, [lists.query_paths[i] for i in rows], lists.gallery_paths, lists.distances[rows],
                           out, probe_pids=lists.query_pids[rows], gallery_pids=lists.gallery_pids, top=top,
                           title=title)
        return _file_data_uri(out)


# --------------------------------------------------------------------------------------------------------------------
# page


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f4f6f9; }
header { background: #1f3a5f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header .sub { opacity: 0.85; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 24px 40px 24px; }
section { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,0.08); margin: 18px 0;
          padding: 14px 22px 18px 22px; }
h2 { font-size: 17px; margin: 4px 0 12px 0; color: #1f3a5f; }
h3 { font-size: 14px; margin: 14px 0 8px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px 0; }
th, td { padding: 5px 11px; border-bottom: 1px solid #e3e7ee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef2f8; }
td.std { color: #6b7486; font-size: 11px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 3px 16px; font-size: 13px; margin: 0; }
dl.meta dt { color: #6b7486; }
dl.meta dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 8px 12px; font-size: 13px; margin: 8px 0; }
.small { font-size: 12px; color: #6b7486; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _metric_row(label: str, summary: dict[str, Any], kind: str) -> str:
    cells = "".join(f'<td data-metric="{key}" data-value="{float(summary[key]):.6f}">{_fmt(summary[key])}</td>'
                    for key, _ in METRICS)
    q = summary.get("num_query", "")
    g = summary.get("num_gallery", "")
    return (f'<tr data-row="{_e(kind)}"><td>{_e(label)}</td>{cells}<td>{_e(q)}</td>'
            f'<td>{_e(_fmt(g, 1) if isinstance(g, float) else g)}</td></tr>')


def _metrics_table(results: dict[str, Any], untrained: dict[str, Any] | None) -> str:
    head = "".join(f"<th>{label}</th>" for _, label in METRICS)
    rows = [_metric_row("trained", results, "trained")]
    std = results.get("std")
    if isinstance(std, dict) and len(_per_trial(results)) > 1:
        cells = "".join(f'<td class="std">± {_fmt(std.get(key))}</td>' for key, _ in METRICS)
        rows.append(f'<tr data-row="std"><td class="std">std over trials</td>{cells}<td></td><td></td></tr>')
    if untrained is not None:
        rows.append(_metric_row("untrained", untrained, "untrained"))
    return (f'<table id="metrics"><thead><tr><th></th>{head}<th>#query</th><th>#gallery</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _spread_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{label}</th>" for _, label in METRICS)
    body = []
    for i, r in enumerate(rows):
        cells = "".join(f'<td data-metric="{key}">{_fmt(r[key])}</td>' for key, _ in METRICS)
        body.append(f'<tr><td>trial {_e(r.get("trial", i))}</td>{cells}</tr>')
    return (f'<table id="per-trial"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _meta_list(items: Sequence[tuple[str, Any]]) -> str:
    return '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items
                                         if v not in (None, "")) + "</dl>"


def _load_config(run: RunFolder) -> tuple[Any, dict[str, Any]]:
    """(config, checkpoint meta) of the run's checkpoint, or (None, {}) with a note on the page."""
    if run.checkpoint_path is None:
        run.notes.append("no checkpoint (best.pt / last.pt) in the run folder: the dataset root and the model "
                         "details are unknown")
        return None, {}
    try:
        import torch

        from vireid.checkpoints import config_of_checkpoint

        ckpt = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != "vireid-checkpoint":
            raise VireidError("not a vireid checkpoint")
        return config_of_checkpoint(ckpt, run.checkpoint_path), dict(ckpt.get("meta") or {})
    except Exception as exc:  # the report still renders; the page says why details are missing
        run.notes.append(f"{run.checkpoint_path}: cannot read its config ({' '.join(str(exc).split())[:160]})")
        return None, {}


def dataset_root(run: RunFolder, cfg: Any, meta: dict[str, Any]) -> Path | None:
    """Where the run's test images are, independent of the working directory.

    In order: the absolute root the checkpoint stored when it was written (``meta.dataset_root``); the config's
    ``data.root`` when absolute; a relative ``data.root`` resolved against the working directory, then against the
    run folder and each folder above it (checkpoints written before the root was stored were mostly trained from a
    folder above their run folder). The first that is a folder wins; else the config's value (the page says it is
    not reachable), or None without a config.
    """
    stored = meta.get("dataset_root")
    if isinstance(stored, str) and stored and Path(stored).is_dir():
        return Path(stored)
    if cfg is None:
        return Path(stored) if isinstance(stored, str) and stored else None
    root = Path(cfg.data.root).expanduser()
    if root.is_absolute() or root.is_dir():
        return root
    base = (run.run_dir or run.root).resolve()
    for folder in (base, *base.parents):
        if (folder / root).is_dir():
            return folder / root
    return Path(stored) if isinstance(stored, str) and stored else root


def _ranked_section(run: RunFolder, root: Path | None, queries: int, top: int) -> tuple[str, dict[str, Any]]:
    """HTML of the worst/best ranked lists (or the reason they are missing) and facts for the caller."""
    facts: dict[str, Any] = {}
    if run.features_path is None:
        return '<p class="note">No test_features.npz in the run folder: the ranked lists need the test features ' \
               "(run <code>vireid test CHECKPOINT</code> to write them).</p>", facts
    try:
        lists = recompute_trial(run.features_path, run.results, root)
    except VireidError as exc:
        return f'<p class="note">Cannot recompute the ranking from {_e(run.features_path.name)}: {_e(exc)}</p>', facts
    facts["recomputed_mAP"] = lists.mAP
    worst, best = worst_and_best_queries(lists.ap, queries)
    rows = []
    for group, picks in (("worst", worst), ("best", best)):
        for i in picks:
            rows.append(f'<tr data-group="{group}"><td>{group}</td><td><code>{_e(lists.query_paths[i])}</code></td>'
                        f"<td>{_fmt(lists.ap[i] * 100)}</td><td>{int(lists.first_match[i])}</td></tr>")
    table = ('<table id="queries"><thead><tr><th></th><th>query</th><th>AP (%)</th><th>first match at rank</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    reported = _per_trial(run.results)
    check = ""
    if reported and not run.results.get("rerank"):
        check = (f'<p class="small">Recomputed from {_e(run.features_path.name)}: first-trial mAP '
                 f'<span id="recomputed-map">{_fmt(lists.mAP)}</span>% (results file: '
                 f'{_fmt(reported[0]["mAP"])}%).</p>')
    needed = [lists.query_paths[i] for i in (*worst, *best)]
    if root is None:
        return (f"{check}{table}"
                '<p class="note">Ranked-list pictures need the test images, but the dataset root is unknown '
                "(no readable checkpoint config).</p>"), facts
    missing = [p for p in needed if not (root / p).is_file()]
    if not root.is_dir() or missing:
        what = "is not reachable from this machine" if not root.is_dir() else f"lacks {missing[0]}"
        return (f"{check}{table}<p class=\"note\">Ranked-list pictures need the test images: the dataset root "
                f"<code>{_e(root)}</code> recorded in the checkpoint's config {_e(what)}. Re-run "
                "<code>vireid report</code> where the dataset is mounted.</p>"), facts
    label = "IR" if run.results.get("direction") == "i2v" else "query"
    pictures = []
    for group, picks in (("worst", worst), ("best", best)):
        if len(picks):
            title = f"{group} {len(picks)} {label} queries by AP (green frame: same identity)"
            uri = _ranked_figure(root, lists, picks, top, title)
            pictures.append(f'<h3>{_e(group.capitalize())} queries</h3><img alt="{_e(group)} queries ranked list" '
                            f'data-figure="ranked-{group}" src="{uri}">')
    facts["ranked_figures"] = len(pictures)
    return check + table + "".join(pictures), facts


def render_report(run: RunFolder, *, queries: int = 4, top: int = 8) -> str:
    """The HTML text of the report of ``run`` (see the module docstring for the sections)."""
    from vireid import __version__

    results = run.results
    cfg, meta = _load_config(run)
    root = dataset_root(run, cfg, meta)
    title_bits = [str(results.get("dataset") or (cfg.data.dataset if cfg is not None else "")),
                  str(meta.get("method") or (cfg.method.name if cfg is not None else "")).upper()]
    title = " · ".join(b for b in title_bits if b) or "run"
    protocol = " ".join(str(x) for x in (results.get("protocol"), f"mode={results['mode']}" if results.get("mode")
                                          else None, f"direction={results.get('direction')}" if
                                          results.get("direction") else None,
                                          f"trials={results.get('trials')}" if results.get("trials") else None,
                                          "re-ranked" if results.get("rerank") else None) if x)

    facts = [("run folder", run.run_dir or run.root), ("results", run.results_path), ("protocol", protocol),
             ("checkpoint", run.checkpoint_path), ("selected", results.get("selected_checkpoint")),
             ("best epoch (validation)", None if meta.get("best_epoch") is None else meta["best_epoch"] + 1),
             ("model", None if cfg is None else f"{cfg.model.arch}, specific_stages={cfg.model.specific_stages}, "
                                               f"non_local={cfg.model.non_local}, pooling={cfg.model.pooling}"),
             ("input size", None if cfg is None else f"{cfg.data.height}x{cfg.data.width}"),
             ("dataset root", root),
             ("trained with vireid", meta.get("vireid_version")), ("git commit", meta.get("git_commit")),
             ("report by vireid", __version__), ("generated", time.strftime("%Y-%m-%d %H:%M:%S"))]

    identity_level = str(results.get("protocol", "")) in ("sysu", "sysu-official", "sysu-mm02", "llcm")
    sections = []
    sections.append(f'<section id="summary"><h2>Metrics</h2>{_metrics_table(results, run.untrained)}'
                    f'<p class="small">Percent. CMC is {"identity-level" if identity_level else "standard"} '
                    f"for this protocol; mAP and mINP over valid queries.</p>{_meta_list(facts)}</section>")

    chance = run.demo.get("chance_rank1") if run.demo else None
    sections.append(f'<section id="cmc"><h2>CMC curves</h2><img alt="CMC curves" data-figure="cmc" '
                    f'src="{cmc_figure(results, run.untrained, chance if isinstance(chance, (int, float)) else None)}">'
                    "</section>")

    rows = _per_trial(results)
    if rows:
        spread = _spread_table(rows)
        if len(rows) > 1:
            spread += f'<img alt="per-trial spread" data-figure="spread" src="{spread_figure(rows)}">'
        sections.append(f'<section id="trials"><h2>Per-trial spread</h2>{spread}</section>')
    else:
        sections.append('<section id="trials"><h2>Per-trial spread</h2><p class="note">The results file has no '
                        "per-trial values.</p></section>")

    ranked, _ = _ranked_section(run, root, queries, top)
    sections.append(f'<section id="ranked"><h2>Worst and best queries</h2>{ranked}</section>')

    if run.log_path is None:
        curves = '<p class="note">No log.jsonl in the run folder: no training curves.</p>'
    else:
        log_rows, problems = read_log(run.log_path)
        uri = training_figure(log_rows)
        curves = (f'<img alt="training curves" data-figure="training" src="{uri}">' if uri else
                  f'<p class="note">{_e(run.log_path.name)} has no train or val rows.</p>')
        curves += "".join(f'<p class="note">{_e(p)}</p>' for p in problems[:5])
        if len(problems) > 5:
            curves += f'<p class="note">… and {len(problems) - 5} more unreadable lines.</p>'
    sections.append(f'<section id="training"><h2>Training curves</h2>{curves}</section>')

    for i, (caption, path) in enumerate(run.figures):
        sections.append(f'<section id="figure{i}"><h2>{_e(caption)}</h2><img alt="{_e(caption)}" '
                        f'data-figure="extra{i}" src="{_file_data_uri(path)}"></section>')

    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in run.notes)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>vireid report: {_e(title)}"
            f"</title><style>{CSS}</style></head><body><header><h1>vireid report: {_e(title)}</h1>"
            f'<div class="sub">{_e(protocol)}</div></header><main>{notes}{"".join(sections)}</main></body></html>\n')


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, queries: int = 4,
                 top: int = 8) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default: ``report.html`` in the run folder, or in the
    demo's ``report/`` folder); returns the path. Raises :class:`ReportError` for a folder without results.
    """
    if queries < 1 or top < 1:
        raise ReportError(f"queries ({queries}) and top ({top}) must be at least 1")
    from vireid.outputs import check_writable_file

    run = locate_run(run_dir)
    if out is None:
        out = (run.demo_report_dir or run.results_path.parent) / "report.html"
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    check_writable_file(out, "report file")  # before the ranked lists are recomputed and the figures drawn
    text = render_report(run, queries=queries, top=top)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
