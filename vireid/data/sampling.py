"""Batch samplers: cross-modality identity batches (AGW family) and anchor + cross-camera batches (AML).

Both samplers are deterministic functions of ``(seed, epoch)``: call :meth:`set_epoch` before iterating, as with
``torch.utils.data.DistributedSampler``. Randomness comes from ``numpy.random.default_rng([seed, epoch])``, so the
sequence is identical on every machine and every rank.

Distributed training: every rank generates the same *global* sequence of batches and keeps its shard of each batch
(identities ``rank * P/W .. (rank+1) * P/W - 1`` of the batch, in order). Concatenating the shards of ranks
0..W-1 gives exactly the batch a single process draws, so N ranks together train on the same batches as one process
with the same seed. ``num_ids`` must therefore be divisible by ``world_size``.

Labels < 0 (unlabeled images, clustering outliers) are never drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from vireid.errors import DataError


def _labels(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"sampler: {name} must be a 1-D sequence of integer labels, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise DataError(f"sampler: {name} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_world(num_ids: int, num_instances: int, rank: int, world_size: int) -> None:
    if num_ids < 1 or num_instances < 1:
        raise DataError(f"sampler: num_ids={num_ids}, num_instances={num_instances} are invalid; "
                        "both must be integers >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"sampler: rank={rank} world_size={world_size} is invalid; need 0 <= rank < world_size")
    if num_ids % world_size:
        raise DataError(f"sampler: num_ids={num_ids} is not divisible by world_size={world_size}; every rank must get "
                        f"the same number of identities per batch, so choose num_ids as a multiple of {world_size}")


def _group(indices: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group ``indices`` by ``labels``: (sorted unique labels, start offset per label, member indices by label)."""
    order = np.argsort(labels[indices], kind="stable")
    members = indices[order]
    uniq, starts = np.unique(labels[members], return_index=True)
    return uniq, starts.astype(np.int64), members


class CrossModalIdentitySampler:
    """P identities x (K RGB + K IR) per step, with replacement within an identity (SPEC 3, the AGW sampler).

    Each step draws ``num_ids`` distinct identities uniformly among the labels present in *both* modalities, then for
    each identity ``num_instances`` RGB and ``num_instances`` IR images uniformly with replacement. Steps are
    independent. An epoch has ``max(#RGB, #IR) // (num_ids * num_instances) + 1`` steps, counting only images with
    label >= 0 (696 on SYSU-MM01: 22,258 RGB / 11,909 IR, 8 x 4).

    Iterating yields per step ``(rgb_indices, ir_indices)``, two lists of ``num_ids/world_size * num_instances``
    indices into ``rgb_labels`` and ``ir_labels``, identity-major, so ``rgb_labels[rgb[i]] == ir_labels[ir[i]]``.

    Example::

        sampler = CrossModalIdentitySampler(rgb_labels, ir_labels, num_ids=8, num_instances=4, seed=cfg.seed)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for rgb_idx, ir_idx in sampler:
                x_rgb, x_ir = rgb_cache.batch(rgb_idx), ir_cache.batch(ir_idx)
    """

    def __init__(
        self,
        rgb_labels: Sequence[int] | np.ndarray,
        ir_labels: Sequence[int] | np.ndarray,
        num_ids: int = 8,
        num_instances: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_world(num_ids, num_instances, rank, world_size)
        rgb, ir = _labels(rgb_labels, "rgb_labels"), _labels(ir_labels, "ir_labels")
        self.num_ids, self.num_instances = num_ids, num_instances
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        rgb_valid, ir_valid = np.flatnonzero(rgb >= 0), np.flatnonzero(ir >= 0)
        rgb_ids, rgb_starts, self._rgb_members = _group(rgb_valid, rgb)
        ir_ids, ir_starts, self._ir_members = _group(ir_valid, ir)
        common = np.intersect1d(rgb_ids, ir_ids)
        if len(common) < num_ids:
            raise DataError(f"sampler: only {len(common)} identities have both RGB and IR images, fewer than "
                            f"num_ids={num_ids}; lower sampler.num_ids or check the training labels")
        self.identities = common
        """Labels that can be drawn (present in both modalities), ascending."""
        self._rgb_start, self._rgb_count = self._offsets(rgb_ids, rgb_starts, len(self._rgb_members), common)
        self._ir_start, self._ir_count = self._offsets(ir_ids, ir_starts, len(self._ir_members), common)
        self.num_steps = max(len(rgb_valid), len(ir_valid)) // (num_ids * num_instances) + 1

    @staticmethod
    def _offsets(ids: np.ndarray, starts: np.ndarray, total: int, common: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.diff(np.append(starts, total))
        pos = np.searchsorted(ids, common)
        return starts[pos], counts[pos]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (different epochs give different batches)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_steps

    def global_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """All steps of the current epoch for all ranks: rgb and ir index arrays [steps, num_ids, num_instances]."""
        rng = np.random.default_rng([self.seed, self.epoch])
        steps, p, k = self.num_steps, self.num_ids, self.num_instances
        # p distinct identities per step: the first p of a uniformly random permutation (argsort of uniforms)
        chosen = np.argsort(rng.random((steps, len(self.identities))), axis=1)[:, :p]
        rgb = self._rgb_members[self._rgb_start[chosen][..., None]
                                + rng.integers(0, self._rgb_count[chosen][..., None], size=(steps, p, k))]
        ir = self._ir_members[self._ir_start[chosen][..., None]
                              + rng.integers(0, self._ir_count[chosen][..., None], size=(steps, p, k))]
        return rgb, ir

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        rgb, ir = self.global_batches()
        share = self.num_ids // self.world_size
        lo, hi = self.rank * share, (self.rank + 1) * share
        for r, i in zip(rgb[:, lo:hi], ir[:, lo:hi]):
            yield r.reshape(-1).tolist(), i.reshape(-1).tolist()


class AnchorCrossCameraSampler:
    """P identities x K images per batch, one anchor plus K-1 images from the anchor's *other* cameras (SPEC 6, AML).

    For each identity of a batch, as fast-reid's ``BalancedIdentitySampler`` in the AML code does (wuancong/CMAM @
    21d258fb, fastreid/data/samplers/triplet_sampler.py:329-359): an anchor is drawn uniformly among its images; then

    * if the identity has images in cameras other than the anchor's: K-1 of those, **without** replacement when there
      are at least K of them (``len(select_cams) >= self.num_instances``, line 341 -- K, not K-1), else **with**
      replacement (line 344). The anchor's own camera is never used to fill the group;
    * otherwise (every image in the anchor's camera): K-1 of its other images, without replacement when there are at
      least K, else with replacement (lines 348-355); a single-image identity repeats the anchor (line 351).

    So an identity always contributes exactly K indices.

    An epoch visits the identities (labels >= 0) in a random order, P per batch, and drops the last incomplete batch:
    ``len == #ids // P`` (stage 1 with ~750 Market pseudo-ids and P = 4: 187 batches). Training by iterations simply
    iterates epochs with :meth:`set_epoch`.

    Iterating yields per batch one flat list of ``num_ids/world_size * num_instances`` indices, identity-major with the
    anchor first in each group of K; it can be passed as ``batch_sampler`` to a ``torch.utils.data.DataLoader``.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        camids: Sequence[int] | np.ndarray,
        num_ids: int = 4,
        num_instances: int = 16,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_world(num_ids, num_instances, rank, world_size)
        lab, cam = _labels(labels, "labels"), _labels(camids, "camids")
        if lab.shape != cam.shape:
            raise DataError(f"sampler: {len(lab)} labels but {len(cam)} camids; pass one camera per image")
        self.num_ids, self.num_instances = num_ids, num_instances
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.camids = cam
        ids, starts, members = _group(np.flatnonzero(lab >= 0), lab)
        ends = np.append(starts[1:], len(members))
        self.identities = ids
        """Labels that can be drawn (>= 0), ascending."""
        self._members = [members[s:e] for s, e in zip(starts, ends)]
        if len(ids) < num_ids:
            raise DataError(f"sampler: only {len(ids)} labelled identities, fewer than num_ids={num_ids}; "
                            "lower sampler.num_ids or check the (pseudo) labels")
        self.num_batches = len(ids) // num_ids

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def draw_identity(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """K indices of one identity: anchor first, then cross-camera images (see the class docstring)."""
        k = self.num_instances
        anchor = members[rng.integers(len(members))]
        other = members[self.camids[members] != self.camids[anchor]]
        if len(other):
            pool = other
        else:  # every image of the identity is in the anchor's camera
            pool = members[members != anchor]
            if not len(pool):  # a single image: the anchor repeated
                pool = np.array([anchor])
        picked = rng.choice(pool, size=k - 1, replace=len(pool) < k)
        return np.concatenate([[anchor], picked]).astype(np.int64)

    def global_batches(self) -> list[np.ndarray]:
        """All batches of the current epoch for all ranks: arrays [num_ids, num_instances] of indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.identities))
        out = []
        for b in range(self.num_batches):
            ids = order[b * self.num_ids:(b + 1) * self.num_ids]
            out.append(np.stack([self.draw_identity(self._members[i], rng) for i in ids]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        share = self.num_ids // self.world_size
        lo, hi = self.rank * share, (self.rank + 1) * share
        for batch in self.global_batches():
            yield batch[lo:hi].reshape(-1).tolist()
