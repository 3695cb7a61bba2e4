"""A tiny trained vireid checkpoint for the practitioner-tool tests (extract, search, calibrate, export, report).

``tiny_run(base)`` writes a small synthetic SYSU-MM01 under ``base`` and trains the demo recipe, shrunk to a
half-width ResNet-18 on 64x32 images for two short epochs, into ``base / "run"``. It returns the run folder, which
holds ``last.pt`` and ``best.pt`` (a real checkpoint with its config, as `vireid train` writes it), ``log.jsonl``,
``results.json``. Use it from a session-scoped fixture so it is built once per test session (about 10 s).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_YAML = REPO / "configs" / "demo.yaml"


def tiny_overrides(data_root: Path, cache: Path, out: Path) -> list[str]:
    return [f"data.root={data_root}", f"data.cache_dir={cache}", "data.height=64", "data.width=32", "data.workers=0",
            "model.arch=resnet18_half", "model.pretrained=none", "model.non_local=false", "train.device=cpu",
            "train.threads=2", "train.steps_per_epoch=3", "train.epochs=2", "train.warmup_epochs=0",
            "train.milestones=[]", "train.log_every=1", "train.eval_every=1", "eval.trials=2",
            "sampler.num_ids=4", "sampler.num_instances=2", f"output_dir={out}", "seed=0"]


def tiny_run(base: Path, ids: int = 24) -> Path:
    """Train the tiny run once into ``base/run`` (reused if its last.pt exists) and return that folder."""
    from vireid.config import load_config
    from vireid.data.synthetic import write_synthetic
    from vireid.training import train

    base = Path(base)
    out = base / "run"
    if (out / "last.pt").is_file():
        return out
    data = base / "SYSU-MM01"
    if not (data / "synth_manifest.json").is_file():
        write_synthetic("sysu_mm01", data, ids=ids, seed=0)
    cfg = load_config(DEMO_YAML, tiny_overrides(data, base / "cache", out))
    train(cfg, progress=False)
    return out
