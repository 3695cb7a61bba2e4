"""``vireid demo``: the whole pipeline on a synthetic SYSU-MM01, on a laptop CPU, in minutes.

Writes a synthetic SYSU-MM01 in the real layout, evaluates an untrained model with the ``sysu`` protocol (the
baseline), trains the demo recipe (CAJ: AGW losses on RGB, channel-exchanged RGB and IR views, on a half-width
two-stream ResNet-18), evaluates it the same way and
writes a report folder: ``results.json``, ``cmc.png`` (trained vs untrained), ``ranked_list.png`` (IR probes with
their top RGB matches, correct ones framed green) and ``training.png`` (loss and validation curves).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid import build
from vireid.config import Config, from_dict
from vireid.data.records import Sample

# The demo recipe; configs/demo.yaml holds the same values (a test keeps them equal).
DEMO_RECIPE: dict[str, Any] = {
    "data": {"dataset": "sysu_mm01", "root": "vireid-demo/SYSU-MM01", "height": 128, "width": 64, "workers": 2},
    "sampler": {"num_ids": 8, "num_instances": 4},
    "augment": {"pad": 6, "flip": 0.5, "erasing": 0.5, "adaptive_gray": 0.5},
    "model": {"arch": "resnet18_half", "pretrained": "none", "non_local": False, "last_stride": 1},
    "method": {"name": "caj", "metric_loss": "wrt"},
    "train": {"epochs": 24, "lr": 0.1, "schedule": "agw", "warmup_epochs": 2, "milestones": [17, 22],
              "device": "auto", "validation": "holdout", "eval_every": 4, "checkpoint_every": 50, "log_every": 10},
    "eval": {"trials": 10, "flip": True},
    "seed": 0,
    "output_dir": "vireid-demo/run",
}
DEMO_IDS = 120


def demo_config(out: str | Path, *, epochs: int | None = None, seed: int = 0, device: str = "auto") -> Config:
    recipe = json.loads(json.dumps(DEMO_RECIPE))
    recipe["data"]["root"] = str(Path(out) / "SYSU-MM01")
    recipe["output_dir"] = str(Path(out) / "run")
    recipe["seed"] = seed
    recipe["data"]["cache_dir"] = str(Path(out) / "cache")
    recipe["train"]["device"] = device
    if epochs is not None:
        recipe["train"]["epochs"] = epochs
        recipe["train"]["milestones"] = [m for m in (round(epochs * 0.7), round(epochs * 0.9)) if 0 < m < epochs]
        recipe["train"]["warmup_epochs"] = min(2, epochs - 1)
    return from_dict(Config, recipe, source="demo recipe")


def _dataset(root: Path, ids: int, seed: int, progress: bool) -> None:
    from vireid.data.synthetic import SynthManifest, write_synthetic

    if (root / "synth_manifest.json").is_file():
        try:
            m = SynthManifest.load(root)
            if m.complete and m.ids == ids and m.seed == seed and m.dataset == "sysu_mm01":
                return
        except Exception:  # an unreadable manifest: rewrite the dataset
            pass
        write_synthetic("sysu_mm01", root, ids=ids, seed=seed, progress=progress, overwrite=True, workers=2)
        return
    write_synthetic("sysu_mm01", root, ids=ids, seed=seed, progress=progress, workers=2)


def run_demo(out: str | Path = "vireid-demo", *, ids: int = DEMO_IDS, epochs: int | None = None, seed: int = 0,
             device: str = "auto", progress: bool = True, data_seed: int = 0) -> dict[str, Any]:
    """Run the demo into ``out``; returns the report dict (also written to ``out/report/results.json``).

    ``seed`` is the run's seed (initialisation, batches, augmentation); ``data_seed`` draws the synthetic dataset.
    They are separate so that every seed is measured on the same test identities: a different dataset has other
    people and another chance level, so its numbers are not comparable with the README's.

    ``out`` is checked for writability first and locked for the whole demo (:mod:`vireid.engine.lock`): a second
    demo into the same folder fails at once instead of deleting this one's run.
    """
    from vireid.engine.lock import lock_run_folder

    lock = lock_run_folder(out, "demo folder")
    try:
        return _run_demo(Path(out), ids=ids, epochs=epochs, seed=seed, device=device, progress=progress,
                         data_seed=data_seed)
    finally:
        if lock is not None:
            lock.release()


def _run_demo(out: Path, *, ids: int, epochs: int | None, seed: int, device: str,
              progress: bool, data_seed: int = 0) -> dict[str, Any]:
    from vireid.engine.seeding import seed_everything
    from vireid.evaluation.report import format_table
    from vireid.testing import evaluate_on_test_set, test_plan
    from vireid.training import train

    start = time.perf_counter()
    cfg = demo_config(out, epochs=epochs, seed=seed, device=device)
    say = print if progress else (lambda *a, **k: None)
    say(f"[1/4] synthetic SYSU-MM01 ({ids} identities) in {cfg.data.root}")
    _dataset(Path(cfg.data.root), ids, data_seed, progress)
    run_dir = Path(cfg.output_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always trains from scratch

    ds = build.dataset_from_config(cfg.data)
    plan = test_plan(cfg, ds)
    dev = build.device_from_config(cfg.train.device)
    seed_everything(cfg.seed)
    untrained_model = build.model_from_config(cfg.model, 0).to(dev)
    say("[2/4] evaluating the untrained model (sysu protocol, IR -> RGB, 10 trials)")
    untrained, _ = evaluate_on_test_set(untrained_model, cfg, ds, dev, progress)

    say(f"[3/4] training {cfg.method.name.upper()} on {cfg.model.arch} for {cfg.train.epochs} epochs on {dev}")
    trained = train(cfg, progress=progress)

    say("[4/4] writing the report")
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    chance = float(np.mean([100.0 / len(set(plan.pids[t.gallery].tolist())) for t in plan.trials]))
    result = {
        "dataset": "synthetic sysu_mm01", "identities": ids, "data_seed": data_seed, "seed": seed,
        "test_identities": len(set(s.pid for s in ds.test)),
        "protocol": "sysu (all-search, single-shot, 10 trials)", "chance_rank1": chance,
        "untrained": _brief(untrained), "trained": _brief(trained),
        "rank1_gain": trained["rank1"] / max(untrained["rank1"], 1e-9),
        "selected_checkpoint": trained.get("selected_checkpoint"), "seconds": time.perf_counter() - start,
    }
    (report / "results.json").write_text(json.dumps(result, indent=2))
    _plot_cmc(report / "cmc.png", untrained, trained, chance)
    feats = np.load(run_dir / "test_features.npz")["features"]
    _ranked_list(report / "ranked_list.png", ds.root, ds.test, plan, feats)
    _training_curves(report / "training.png", run_dir / "log.jsonl")
    from vireid.inference.report_html import build_report

    page = build_report(out)  # report/report.html: everything above on one self-contained page
    say(format_table(trained))
    say(f"untrained Rank-1 {untrained['rank1']:.2f}% -> trained {trained['rank1']:.2f}% "
        f"(chance {chance:.2f}%); mAP {untrained['mAP']:.2f}% -> {trained['mAP']:.2f}%")
    say(f"report: {page} (open it in a browser); figures and results.json in {report}/; "
        f"{result['seconds']:.0f} s")
    return result


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "cmc", "num_query", "num_gallery")
    return {k: summary[k] for k in keys if k in summary}


def _plot_cmc(path: Path, untrained: dict, trained: dict, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = np.arange(1, 21)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(ranks, trained["cmc"], "o-", ms=3, label=f"trained (R1 {trained['rank1']:.1f}, mAP {trained['mAP']:.1f})")
    ax.plot(ranks, untrained["cmc"], "s--", ms=3, label=f"untrained (R1 {untrained['rank1']:.1f})")
    ax.axhline(chance, color="gray", lw=0.8, ls=":", label=f"chance R1 {chance:.1f}")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks([1, 5, 10, 15, 20])
    ax.set_title("synthetic SYSU-MM01, IR -> RGB (sysu protocol)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ranked_list(path: Path, root: Path, test: list[Sample], plan, feats: np.ndarray, rows: int = 6) -> None:
    """IR probes of distinct identities (trial 0 gallery) with their top RGB matches; removed entries excluded."""
    from vireid.evaluation.visualize import ranked_list_figure

    trial = plan.trials[0]
    seen: set[int] = set()
    probes: list[int] = []
    for q in trial.query:
        if plan.pids[q] not in seen and len(probes) < rows:
            seen.add(int(plan.pids[q]))
            probes.append(int(q))
    probes_a, gallery = np.array(probes), trial.gallery
    f = torch.nn.functional.normalize(torch.from_numpy(feats), dim=1)
    dist = torch.cdist(f[probes_a], f[gallery]).numpy()
    removed = plan.query_remove_keys[probes_a][:, None] == plan.gallery_remove_keys[gallery][None, :]
    dist[removed] = np.inf
    ranked_list_figure(root, [test[i].path for i in probes_a], [test[j].path for j in gallery], dist, path,
                       probe_pids=plan.pids[probes_a], gallery_pids=plan.pids[gallery], top=8,
                       title="IR probes -> top RGB matches (green: same person)")


def _training_curves(path: Path, log: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    tr = [r for r in rows if r.get("kind") == "train"]
    va = [r for r in rows if r.get("kind") == "val"]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot([r["global_step"] for r in tr], [r["loss"] for r in tr], label="total")
    for key in ("ce", "wrt"):
        if tr and key in tr[0]:
            ax[0].plot([r["global_step"] for r in tr], [r[key] for r in tr], lw=0.8, label=key)
    ax[0].set_xlabel("step")
    ax[0].set_title("training loss", fontsize=9)
    ax[0].legend(fontsize=7)
    if va:
        ax[1].plot([r["epoch"] + 1 for r in va], [r["rank1"] for r in va], "o-", label="Rank-1")
        ax[1].plot([r["epoch"] + 1 for r in va], [r["mAP"] for r in va], "s-", label="mAP")
        ax[1].legend(fontsize=7)
    ax[1].set_xlabel("epoch")
    ax[1].set_title("validation (held-out ids, IR -> RGB)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
