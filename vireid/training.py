"""Supervised cross-modality training from a config, and testing a checkpoint with the dataset's protocol.

``train(cfg)`` reads the dataset, holds out validation identities, builds the image caches, the sampler, the
method and the trainer, trains (resumable), then tests the selected model on the test set with the protocol and
writes ``results.json``, ``test_features.npz`` and ``cmc.png`` into ``output_dir``. ``test_checkpoint`` does the
last part for any checkpoint.

Model selection never looks at the test set: SYSU-MM01 holds out its official val ids, the other datasets a
``train.holdout_ids`` fraction of training identities; validation is IR -> RGB retrieval among those identities.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vireid import build
from vireid.config import Config, dump_yaml, from_dict
from vireid.data.cache import ImageCache, batch_to_tensor
from vireid.data.records import CrossModalDataset, Sample, relabel
from vireid.errors import CheckpointError, ConfigError, DataError
from vireid.evaluation.protocols import ProtocolPlan, Trial, build_protocol, evaluate_protocol, pool_from_samples

SUPERVISED_DATASETS = ("sysu_mm01", "regdb", "llcm")


# --------------------------------------------------------------------------------------------------------------------
# data


def split_train_val(ds: CrossModalDataset, validation: str, holdout: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Training samples (relabelled 0..C-1) and validation samples (identities never trained on, or none)."""
    if validation == "none":
        return relabel(ds.train), []
    if ds.name == "sysu_mm01":
        val_ids = set(ds.info.get("val_ids", []))
    else:
        ids = sorted({s.pid for s in ds.train})
        count = max(2, int(round(holdout * len(ids))))
        if count >= len(ids):
            raise DataError(f"{ds.root}: {len(ids)} training identities are too few to hold out {count} for "
                            "validation; set train.validation=none")
        rng = np.random.default_rng(seed)
        val_ids = set(rng.choice(ids, size=count, replace=False).tolist())
    train = [s for s in ds.train if s.pid not in val_ids]
    val = [replace(s, label=-1) for s in ds.train if s.pid in val_ids]
    return relabel(train), val


def validation_plan(val: Sequence[Sample]) -> ProtocolPlan:
    """IR queries against every RGB image of the held-out identities; standard CMC, nothing removed."""
    pool = pool_from_samples(val, "validation")
    query = np.flatnonzero(pool.modalities == 1)
    gallery = np.flatnonzero(pool.modalities == 0)
    never_q = np.full(len(pool.pids), -1, dtype=np.int64)
    return ProtocolPlan("validation", [Trial(0, query, gallery)], pool.pids, never_q, never_q - 1,
                        cmc="standard", direction="i2v")


def open_cache(root: Path, samples: Sequence[Sample], cfg: Config, progress: bool) -> ImageCache:
    return ImageCache.open_or_build(root, [s.path for s in samples], cfg.data.height, cfg.data.width,
                                    cache_dir=cfg.data.cache_dir, workers=cfg.data.workers, progress=progress)


@dataclass
class TrainArrays:
    """The training samples as arrays aligned with the training cache rows."""

    cache: ImageCache
    labels: np.ndarray
    camids: np.ndarray
    rgb_rows: np.ndarray
    ir_rows: np.ndarray

    @classmethod
    def build(cls, cache: ImageCache, samples: Sequence[Sample]) -> "TrainArrays":
        mods = np.array([s.modality for s in samples])
        return cls(cache, np.array([s.label for s in samples], dtype=np.int64),
                   np.array([s.camid for s in samples], dtype=np.int64),
                   np.flatnonzero(mods == 0), np.flatnonzero(mods == 1))

    def fetch(self, rgb_idx: Sequence[int], ir_idx: Sequence[int]) -> tuple:
        """The trainer's ``fetch_batch``: sampler indices (into the RGB / IR rows) -> uint8 images, labels, cameras."""
        r, i = self.rgb_rows[np.asarray(rgb_idx)], self.ir_rows[np.asarray(ir_idx)]
        return (batch_to_tensor(self.cache.batch(r)).contiguous(), batch_to_tensor(self.cache.batch(i)).contiguous(),
                torch.from_numpy(self.labels[r]), torch.from_numpy(self.labels[i]),
                torch.from_numpy(self.camids[r]), torch.from_numpy(self.camids[i]))


class LimitedSampler:
    """A sampler cut to ``steps`` steps per epoch (``train.steps_per_epoch``), same batches otherwise."""

    def __init__(self, sampler: Any, steps: int) -> None:
        self.sampler, self.steps = sampler, steps
        self.rank, self.world_size = sampler.rank, sampler.world_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return min(self.steps, len(self.sampler))

    def __iter__(self):
        for k, batch in enumerate(self.sampler):
            if k >= self.steps:
                return
            yield batch


# --------------------------------------------------------------------------------------------------------------------
# evaluation of a model


def evaluate_samples(model: torch.nn.Module, root: Path, samples: Sequence[Sample], plan: ProtocolPlan,
                     cfg: Config, device: torch.device, *, progress: bool = False,
                     cache: ImageCache | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Extract features of ``samples`` and evaluate ``plan`` on them; returns (summary, features)."""
    from vireid.inference.extract import extract_features

    cache = cache or open_cache(root, samples, cfg, progress)
    feats = extract_features(model, cache, [s.modality for s in samples], batch_size=cfg.eval.batch_size,
                             device=device, flip=cfg.eval.flip, feature=cfg.eval.feature, progress=progress)
    return evaluate_protocol(feats, plan, device=str(device)).summary(), feats


def make_validator(root: Path, val: Sequence[Sample], cfg: Config, device: torch.device, *, main: bool,
                   progress: bool) -> Any:
    """The trainer's ``validate(model) -> {rank1, mAP, mINP}`` on held-out samples (IR -> RGB), or None without any.

    Every rank gets the same answer (a function or None); only rank 0 builds the cache, since only it validates.
    """
    if not val:
        return None
    cache = open_cache(root, val, cfg, progress) if main else None
    plan = validation_plan(val)

    def validate(m: torch.nn.Module) -> dict[str, float]:
        summary, _ = evaluate_samples(m, root, val, plan, cfg, device, cache=cache)
        return {k: summary[k] for k in ("rank1", "mAP", "mINP")}

    return validate


def test_plan(cfg: Config, ds: CrossModalDataset) -> ProtocolPlan:
    pool = pool_from_samples(ds.test, f"{ds.name} test set")
    name = build.protocol_name(cfg.data, cfg.eval)
    trials = cfg.eval.trials if name in ("sysu", "sysu-official", "llcm") else None
    return build_protocol(name, pool, mode=cfg.eval.mode, trials=trials, direction=cfg.eval.direction,
                          dataset_root=ds.root, test_ids=ds.info.get("test_ids"))


# --------------------------------------------------------------------------------------------------------------------
# training


def train(cfg: Config, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` (every RegDB trial in ``data.trials`` in turn) and test; returns the results summary.

    ``method.name: aml`` runs the AML phases (:mod:`vireid.training_aml`).
    """
    if cfg.data.dataset == "regdb" and cfg.data.trials:
        per_trial = []
        for t in cfg.data.trials:
            sub = copy.deepcopy(cfg)
            sub.data.trial, sub.data.trials = t, []
            sub.output_dir = str(Path(cfg.output_dir) / f"trial_{t}")
            result = train(sub, resume=resume, progress=progress)
            per_trial.append(result.get("final", result))  # AML: the final test of each trial
        return _regdb_mean(cfg, per_trial)
    if cfg.method.name == "aml":
        from vireid.training_aml import train_aml

        return train_aml(cfg, resume=resume, progress=progress)
    return _train_one(cfg, resume=resume, progress=progress)


def _train_one(cfg: Config, *, resume: bool, progress: bool) -> dict[str, Any]:
    from vireid.data.sampling import CrossModalIdentitySampler
    from vireid.engine import distributed as dist
    from vireid.engine.checkpoint import make_meta
    from vireid.engine.seeding import seed_everything
    from vireid.engine.trainer import Trainer

    if cfg.data.dataset not in SUPERVISED_DATASETS:
        raise ConfigError(f"data.dataset={cfg.data.dataset}: supervised cross-modality training needs labelled RGB "
                          f"and IR training images ({', '.join(SUPERVISED_DATASETS)}); SYSU-MM02 training data is "
                          "unlabeled (use the AML recipe)")
    out = Path(cfg.output_dir)
    if not resume and (out / "last.pt").is_file():
        raise ConfigError(f"{out}/last.pt exists: pass --resume to continue that run, or choose another "
                          "output_dir (--set output_dir=...)")
    seed_everything(cfg.seed, threads=cfg.train.threads)
    device = build.device_from_config(cfg.train.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join the process group
        device = dist.init_distributed()
    main = dist.is_main()
    show = progress and main

    ds = build.dataset_from_config(cfg.data)
    train_samples, val_samples = split_train_val(ds, cfg.train.validation, cfg.train.holdout_ids, cfg.seed)
    num_classes = len({s.label for s in train_samples})
    # model and method first: a bad model config or missing weights fails before minutes of caching
    model = build.model_from_config(cfg.model, num_classes)
    method = build.method_from_config(cfg, model, num_classes)
    optimizer = build.optimizer_from_config(cfg, method)
    # every rank builds/opens the same cache; rank 0 first so the others only read it
    if main:
        train_cache = open_cache(ds.root, train_samples, cfg, show)
    dist.barrier()
    if not main:
        train_cache = open_cache(ds.root, train_samples, cfg, False)
    arrays = TrainArrays.build(train_cache, train_samples)

    sampler: Any = CrossModalIdentitySampler(arrays.labels[arrays.rgb_rows], arrays.labels[arrays.ir_rows],
                                             cfg.sampler.num_ids, cfg.sampler.num_instances, seed=cfg.seed,
                                             rank=dist.rank(), world_size=dist.world_size())
    if cfg.train.steps_per_epoch is not None:
        sampler = LimitedSampler(sampler, cfg.train.steps_per_epoch)

    # every rank passes the same validate (or None): the trainer calls it on rank 0 and the others wait at a
    # barrier, so a rank without it would skip that barrier and deadlock the next collective
    validate = make_validator(ds.root, val_samples, cfg, device, main=main, progress=show)

    meta = make_meta(config_yaml=dump_yaml(cfg), dataset=cfg.data.dataset,
                     trial=cfg.data.trial if cfg.data.dataset == "regdb" else None, method=cfg.method.name,
                     num_classes=num_classes, model=dict(model.build_kwargs))
    trainer = Trainer(method, optimizer, build.schedule_from_config(cfg), sampler, arrays.fetch,
                      epochs=cfg.train.epochs, device=device, amp=build.amp_from_config(cfg.train.amp, device),  # type: ignore[arg-type]
                      channels_last=cfg.train.channels_last, grad_accum_steps=cfg.train.grad_accum, out_dir=out,
                      seed=cfg.seed, checkpoint_every_steps=cfg.train.checkpoint_every, validate=validate,
                      validate_every_epochs=cfg.train.eval_every, select_metric="mAP", log_every=cfg.train.log_every,
                      progress=show, meta=meta)
    if resume and not trainer.resume() and main:
        print(f"no checkpoint in {out}: starting a new run")
    fit = trainer.fit()
    if not main:
        return {"fit": fit}
    chosen = out / ("best.pt" if (out / "best.pt").is_file() else "last.pt")
    results = test_checkpoint(chosen, out_dir=out, progress=show, dataset=ds, device=str(device))
    results["fit"] = fit
    results["selected_checkpoint"] = chosen.name
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _regdb_mean(cfg: Config, per_trial: list[dict[str, Any]]) -> dict[str, Any]:
    from vireid.evaluation.report import SCALARS

    keys = [k for k in SCALARS if all(k in r for r in per_trial)]
    summary: dict[str, Any] = {"protocol": "regdb", "direction": cfg.eval.direction, "trials": len(per_trial),
                               "per_trial": per_trial}
    for k in keys:
        summary[k] = float(np.mean([r[k] for r in per_trial]))
        summary.setdefault("std", {})[k] = float(np.std([r[k] for r in per_trial]))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------------------------------------------------
# testing a checkpoint


def config_of_checkpoint(ckpt: dict[str, Any], source: Path) -> Config:
    import yaml

    text = ckpt.get("meta", {}).get("config_yaml")
    if not text:
        raise CheckpointError(f"{source}: carries no config (meta.config_yaml); it was not written by vireid train")
    return from_dict(Config, yaml.safe_load(text), source=f"{source} (embedded config)")


def load_trained_model(path: str | Path, *, expect_trial: int | None = None, strict_trial: bool = True,
                       device: str = "cpu") -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """Rebuild the model a vireid checkpoint was trained with and load its weights (safe loading)."""
    from vireid.engine.checkpoint import load_checkpoint, load_model_state

    path = Path(path)
    ckpt = load_checkpoint(path, expect_trial=expect_trial, strict_trial=strict_trial, map_location=device)
    cfg = config_of_checkpoint(ckpt, path)
    num_classes = int(ckpt["meta"].get("num_classes") or 0)
    model = build.model_from_config(cfg.model, num_classes, pretrained="none")
    load_model_state(model, ckpt["model"], path)
    return model.to(device).eval(), cfg, ckpt


FOREIGN_DEFAULTS = {"agw": ((288, 144), False), "fastreid": ((384, 128), True)}
"""Input size and flip-averaging of checkpoints from the original repositories (AGW/CAJ test at 288x144; AML's
fast-reid at 384x128 with flip-averaged features). CAJ tests with flip: pass ``flip=True`` for CAJ checkpoints."""


def load_any_checkpoint(path: str | Path, checkpoint_format: str = "vireid", *, size: tuple[int, int] | None = None,
                        flip: bool | None = None, device: str = "cpu") -> tuple[torch.nn.Module, Config]:
    """A model and the config of its test-time settings from a vireid checkpoint or, with ``checkpoint_format``
    ``"agw"`` (AGW/CAJ ``{'net': ...}``) or ``"fastreid"`` (AML model1), an original-repository checkpoint mapped by
    :func:`vireid.models.convert.load_foreign_checkpoint` (its config: ``size`` (H, W), ``flip``, BNNeck feature)."""
    if checkpoint_format == "vireid":
        model, cfg, _ = load_trained_model(path, device=device)
    elif checkpoint_format in FOREIGN_DEFAULTS:
        from vireid.models.convert import load_foreign_checkpoint

        model = load_foreign_checkpoint(path, checkpoint_format).to(device).eval()  # type: ignore[arg-type]
        cfg = Config()
        (cfg.data.height, cfg.data.width), cfg.eval.flip = FOREIGN_DEFAULTS[checkpoint_format]
        cfg.eval.feature = "bn"
    else:
        raise ConfigError(f"checkpoint format {checkpoint_format!r} is not known; expected vireid, agw or fastreid")
    if size is not None:
        cfg.data.height, cfg.data.width = int(size[0]), int(size[1])
    if flip is not None:
        cfg.eval.flip = bool(flip)
    return model, cfg


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
    plan = test_plan(cfg, ds)
    summary, feats = evaluate_samples(model, ds.root, ds.test, plan, cfg, torch.device(dev), progress=progress)
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
