"""Testing a trained model on its dataset's test set with the protocol: the features file, the results, the CMC.

``test_checkpoint`` is what ``vireid test`` and the end of ``vireid train`` run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid import build
from vireid.checkpoints import TestSettings, load_trained_model
from vireid.config import Config
from vireid.data.cache import ImageCache
from vireid.data.records import CrossModalDataset, Sample
from vireid.evaluation.protocols import ProtocolPlan, build_protocol, pool_from_samples
from vireid.inference.evaluate import evaluate_samples

__all__ = ["evaluate_on_test_set", "open_cache", "test_checkpoint", "test_plan"]


def open_cache(cfg: Config, root: Path, samples: Sequence[Sample], progress: bool) -> ImageCache:
    """The decoded-image cache of ``samples`` at the config's input size (built once, then memory-mapped)."""
    return ImageCache.open_or_build(root, [s.path for s in samples], cfg.data.height, cfg.data.width,
                                    cache_dir=cfg.data.cache_dir, workers=cfg.data.workers, progress=progress)


def test_plan(cfg: Config, ds: CrossModalDataset) -> ProtocolPlan:
    """The test protocol of ``cfg.eval`` (``auto``: the dataset's standard one) on ``ds``'s test set."""
    pool = pool_from_samples(ds.test, f"{ds.name} test set")
    name = build.protocol_name(cfg.data, cfg.eval)
    trials = cfg.eval.trials if name in ("sysu", "sysu-official", "llcm") else None
    return build_protocol(name, pool, mode=cfg.eval.mode, trials=trials, direction=cfg.eval.direction,
                          dataset_root=ds.root, test_ids=ds.info.get("test_ids"), cmc=cfg.eval.cmc)


def evaluate_on_test_set(model: torch.nn.Module, cfg: Config, ds: CrossModalDataset, device: torch.device,
                         progress: bool) -> tuple[dict[str, Any], np.ndarray]:
    """(summary, features) of ``model`` on ``ds``'s test protocol with the config's test-time settings."""
    cache = open_cache(cfg, ds.root, ds.test, progress)
    return evaluate_samples(model, cache, [s.modality for s in ds.test], test_plan(cfg, ds), TestSettings.of(cfg),
                            device, progress=progress)


def test_checkpoint(path: str | Path, *, out_dir: str | Path | None = None, protocol: str | None = None,
                    mode: str | None = None, direction: str | None = None, trials: int | None = None,
                    dataset_root: str | Path | None = None, trial: int | None = None,
                    allow_trial_mismatch: bool = False, flip: bool | None = None, progress: bool = True,
                    dataset: CrossModalDataset | None = None, device: str | None = None) -> dict[str, Any]:
    """Extract test features with a checkpoint, write them as a features file and evaluate the protocol.

    ``trial`` (RegDB): the trial under test, default the checkpoint's; a different trial is refused unless
    ``allow_trial_mismatch`` (then it warns), because the other trial's test ids were training ids.
    """
    from vireid.evaluation.features import save_features
    from vireid.evaluation.report import format_table, plot_cmc, write_json

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, ckpt = load_trained_model(path, expect_trial=trial, strict_trial=not allow_trial_mismatch, device=dev)
    if trial is not None:
        cfg.data.trial = trial
    if dataset_root is not None:
        cfg.data.root = str(dataset_root)
    for key, value in (("protocol", protocol), ("mode", mode), ("direction", direction), ("trials", trials),
                       ("flip", flip)):
        if value is not None:
            setattr(cfg.eval, key, value)
    ds = dataset if dataset is not None else build.dataset_from_config(cfg.data)
    summary, feats = evaluate_on_test_set(model, cfg, ds, torch.device(dev), progress)
    out = Path(out_dir) if out_dir is not None else Path(path).parent
    out.mkdir(parents=True, exist_ok=True)  # `vireid test --out NEW_FOLDER`
    save_features(out / "test_features.npz", feats, np.array([s.pid for s in ds.test], dtype=np.int64),
                  np.array([s.camid for s in ds.test], dtype=np.int64),
                  np.array([s.modality for s in ds.test], dtype=np.int64), [s.path for s in ds.test])
    summary["checkpoint"] = str(path)
    summary["dataset"] = cfg.data.dataset
    if cfg.data.dataset == "regdb":
        summary["trial"] = cfg.data.trial
    write_json(out / "test_results.json", summary)
    plot_cmc(out / "cmc.png", summary)
    if progress:
        print(format_table(summary))
    return summary
