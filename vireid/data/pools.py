"""Training pools and how batches are drawn from them: the train/validation split, the cache-aligned arrays of a
labelled pool, the pseudo-labelled pools of unsupervised phases, and the samplers that feed the trainer.

The trainer asks a sampler for ``(rgb_idx, ir_idx)`` per step and a ``fetch(rgb_idx, ir_idx)`` for the uint8
images, labels and cameras (:data:`vireid.engine.trainer.FetchBatch`); everything here produces one of the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from vireid.data.cache import ImageCache, batch_to_tensor
from vireid.data.records import CrossModalDataset, Sample, relabel
from vireid.data.sampling import AnchorCrossCameraSampler
from vireid.errors import DataError

__all__ = ["LimitedSampler", "PairFetch", "PoolFetch", "PseudoLabelSampler", "TrainArrays", "TwinPairSampler",
           "split_train_val"]


def split_train_val(ds: CrossModalDataset, validation: str, holdout: float,
                    seed: int) -> tuple[list[Sample], list[Sample]]:
    """Training samples (relabelled 0..C-1) and validation samples (identities never trained on, or none).

    ``validation``: "none" = every training id (the published pools: SYSU-MM01 train + val ids, RegDB all training
    ids of the trial); "holdout" = SYSU-MM01's val ids (other datasets: a ``holdout`` fraction of the training ids)
    are left out for validation. An unlabeled training set (``info["labeled"]`` False, SYSU-MM02) is returned whole
    with label -1 and no validation samples: its identity column must not reach training.
    """
    if not ds.info.get("labeled", True):
        return [replace(s, label=-1) for s in ds.train], []
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


@dataclass
class TrainArrays:
    """The training samples as arrays aligned with the training cache rows."""

    cache: ImageCache
    labels: np.ndarray
    camids: np.ndarray
    rgb_rows: np.ndarray
    ir_rows: np.ndarray

    @classmethod
    def build(cls, cache: ImageCache, samples: Sequence[Sample]) -> TrainArrays:
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


class TwinPairSampler:
    """Stage 1: AML's anchor + cross-camera P x K batches over the source; yields ``(idx, idx)``: the RGB originals
    and their fake-IR twins are the same rows of two aligned caches."""

    def __init__(self, labels: np.ndarray, camids: np.ndarray, num_ids: int, num_instances: int, seed: int,
                 rank: int, world_size: int) -> None:
        self.inner = AnchorCrossCameraSampler(labels, camids, num_ids, num_instances, seed=seed, rank=rank,
                                              world_size=world_size)
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for flat in self.inner:
            yield flat, flat


class PseudoLabelSampler:
    """Stage 2: P x K anchor + cross-camera batches over the pseudo-labelled target pool (both modalities).

    An "epoch" is ``steps`` batches (set with the labels after every clustering): enough for the samples trained
    to exceed the kept samples (SPEC 6), or a fixed count (RegDB: 200). Each batch's flat pool indices are split
    into positions among the RGB rows and among the IR rows, as the trainer's ``fetch`` expects.
    """

    def __init__(self, camids: np.ndarray, modalities: np.ndarray, num_ids: int, num_instances: int, seed: int,
                 rank: int, world_size: int) -> None:
        self.camids, self.modalities = np.asarray(camids), np.asarray(modalities)
        self.position = np.zeros(len(self.modalities), dtype=np.int64)  # index among its modality's rows
        for m in (0, 1):
            rows = np.flatnonzero(self.modalities == m)
            self.position[rows] = np.arange(len(rows))
        self.num_ids, self.num_instances, self.seed = num_ids, num_instances, seed
        self.rank, self.world_size = rank, world_size
        self.inner: Any = None
        self.steps, self.epoch = 0, 0

    def set_labels(self, labels: np.ndarray, steps: int) -> None:
        kept = int((labels >= 0).sum())
        clusters = len(np.unique(labels[labels >= 0]))
        if clusters < self.num_ids:
            raise DataError(f"AML stage 2: the clustering kept {clusters} pseudo identities ({kept} samples), fewer "
                            f"than the {self.num_ids} identities of a batch; the features do not cluster at these "
                            "settings (lower the phase's num_ids, raise method.eps, or train stage 1 longer)")
        self.inner = AnchorCrossCameraSampler(labels, self.camids, self.num_ids, self.num_instances,
                                              seed=self.seed, rank=self.rank, world_size=self.world_size)
        self.steps = int(steps)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        done, rnd = 0, 0
        while done < self.steps:
            self.inner.set_epoch(self.epoch * 100_000 + rnd)  # deterministic per (epoch, round)
            for flat in self.inner:
                flat = np.asarray(flat)
                ir = self.modalities[flat] == 1
                yield self.position[flat[~ir]], self.position[flat[ir]]
                done += 1
                if done == self.steps:
                    return
            rnd += 1


class PairFetch:
    """Stage 1 ``fetch``: rows of the originals cache and of the aligned fake-IR twin cache."""

    def __init__(self, originals: ImageCache, twins: ImageCache, labels: np.ndarray, camids: np.ndarray) -> None:
        self.originals, self.twins, self.labels, self.camids = originals, twins, labels, camids

    def __call__(self, rgb_idx: Sequence[int], ir_idx: Sequence[int]) -> tuple:
        rows = np.asarray(rgb_idx)
        lab, cam = torch.from_numpy(self.labels[rows]), torch.from_numpy(self.camids[rows])
        return (batch_to_tensor(self.originals.batch(rows)).contiguous(),
                batch_to_tensor(self.twins.batch(rows)).contiguous(), lab, lab, cam, cam)


class PoolFetch:
    """Stage 2 ``fetch``: positions among the RGB rows / IR rows of the target pool -> images, pseudo labels."""

    def __init__(self, cache: ImageCache, modalities: np.ndarray, camids: np.ndarray) -> None:
        self.cache, self.camids = cache, camids
        self.rows = [np.flatnonzero(modalities == 0), np.flatnonzero(modalities == 1)]
        self.labels = np.full(len(modalities), -1, dtype=np.int64)

    def _part(self, m: int, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self.rows[m][np.asarray(idx, dtype=np.int64)]
        if len(rows) == 0:
            h, w = self.cache.height, self.cache.width
            return torch.zeros(0, 3, h, w, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), \
                torch.zeros(0, dtype=torch.long)
        return (batch_to_tensor(self.cache.batch(rows)).contiguous(), torch.from_numpy(self.labels[rows]),
                torch.from_numpy(self.camids[rows]))

    def __call__(self, rgb_idx: Sequence[int], ir_idx: Sequence[int]) -> tuple:
        (rgb, lr, cr), (ir, li, ci) = self._part(0, rgb_idx), self._part(1, ir_idx)
        return rgb, ir, lr, li, cr, ci
