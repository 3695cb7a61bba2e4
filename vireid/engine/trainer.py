"""The training loop: one explicit loop over epochs and sampler steps, generic over a :class:`~vireid.methods.Method`.

Read :meth:`Trainer.fit` top to bottom: it is the whole algorithm. Per step it fetches the uint8 images the sampler
chose, lets the method augment them into a :class:`~vireid.methods.base.Batch`, runs the method's forward + losses
under autocast, back-propagates ``loss / accumulation``, and every ``grad_accum_steps`` micro-batches steps the
optimiser (through a ``GradScaler`` for fp16). Around that: the learning-rate schedule (per epoch or per step),
a tqdm bar and JSON-lines rows with every loss term and images/s, atomic ``last.pt`` checkpoints every
``checkpoint_every_steps`` optimiser steps and at each epoch end, validation on rank 0 with ``best.pt`` kept by
``select_metric``, and :meth:`Trainer.resume` which continues a killed run exactly where its last checkpoint was
written (bit-identical weights on CPU).

Distributed (torchrun): call :func:`vireid.engine.distributed.init_distributed` first and build the sampler with
``rank=rank(), world_size=world_size()``; each rank then trains on its shard of every global batch, DDP averages
the gradients, and only rank 0 writes files.

Example::

    seed_everything(cfg.seed)
    device = init_distributed()
    method = build_agw(...)
    optimizer = torch.optim.SGD(method.param_groups(0.1, 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    sampler = CrossModalIdentitySampler(rgb_labels, ir_labels, 8, 4, seed=cfg.seed, rank=rank(),
                                        world_size=world_size())
    trainer = Trainer(method, optimizer, AGW, sampler, fetch, epochs=81, device=device, out_dir="runs/agw",
                      seed=cfg.seed, meta=make_meta(config_yaml=text, dataset="sysu_mm01", method="agw"))
    trainer.resume()        # no-op on a fresh out_dir
    summary = trainer.fit()
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, overload

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vireid.engine import distributed as dist
from vireid.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from vireid.engine.logging import JsonlLogger
from vireid.engine.seeding import get_rng_state, make_generator, set_rng_state
from vireid.errors import CheckpointError
from vireid.methods.base import Batch, Method

if TYPE_CHECKING:  # annotations only
    from torch.nn.parallel import DistributedDataParallel

FetchBatch = Callable[[Sequence[int], Sequence[int]], tuple]
"""``fetch_batch(rgb_idx, ir_idx) -> (rgb_u8, ir_u8, rgb_labels, ir_labels, rgb_cams | None, ir_cams | None)``:
uint8 image tensors [B, 3, H, W] and long label/camera tensors (any device; the trainer moves them)."""


class StepSampler(Protocol):
    """What the trainer needs from a sampler (e.g. :class:`vireid.data.sampling.CrossModalIdentitySampler`)."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Sequence[int], Sequence[int]]]: ...


class _TrainingStep(nn.Module):
    """Adapter whose ``forward`` is ``method.training_step``, so DDP sees the step as a forward pass.

    DistributedDataParallel prepares its gradient all-reduce inside ``forward``; calling ``training_step`` on the
    bare method would bypass it.
    """

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch)


@overload
def _as_tensor(x: None, device: torch.device, dtype: torch.dtype | None = None) -> None: ...


@overload
def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor: ...


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    if x is None:
        return None
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    return t.to(device=device, dtype=dtype, non_blocking=True)


class Trainer:
    """Train ``method`` with ``optimizer`` over ``sampler`` batches; see the module docstring for the loop.

    Args:
        method: the training method (model + augmentation + losses); moved to ``device`` here.
        optimizer: built on ``method``'s parameters (e.g. from ``method.param_groups``); each group's current lr
            is its *initial* lr, which ``lr_lambda`` scales.
        lr_lambda: schedule ``t -> factor`` (:mod:`vireid.engine.schedules`), t = 0-based epoch
            (``schedule_unit="epoch"``) or optimiser step (``"step"``); None = constant.
        sampler: yields ``(rgb_idx, ir_idx)`` per step, has ``set_epoch`` and ``len``; sharded by rank.
        fetch_batch: turns indices into uint8 images, labels and cameras (see :data:`FetchBatch`).
        epochs: number of epochs; ``max_steps`` optionally stops earlier, after that many optimiser steps
            (iteration-based recipes such as AML).
        amp: "none" | "bf16" | "fp16" autocast; fp16 uses a GradScaler. Meant for GPUs.
        channels_last: model and images in NHWC memory format (faster convolutions on tensor-core GPUs).
        grad_accum_steps: micro-batches per optimiser step; the loss of each is divided by the number of
            micro-batches in its group, so k half batches give the gradient of one full batch. The last group of an
            epoch may be shorter: it is stepped at the epoch end (no gradient crosses an epoch boundary).
        out_dir: where rank 0 writes ``last.pt``, ``best.pt`` and ``log.jsonl``.
        seed: seeds the augmentation generator (mixed with the rank).
        checkpoint_every_steps: also write ``last.pt`` every this many optimiser steps (0 = epoch ends only).
        validate: ``validate(model) -> {metric: value}``, called on rank 0 with the model in eval mode under
            ``torch.no_grad``, every ``validate_every_epochs`` epochs and after the last; higher
            ``select_metric`` is better and keeps ``best.pt``. Use validation data, never the test set.
        log_every: a JSON-lines row (and the bar's loss) every this many steps, averaged over them.
        progress: show a tqdm bar on rank 0.
        meta: provenance stored in checkpoints (:func:`vireid.engine.checkpoint.make_meta`).
        deterministic: ask torch for deterministic kernels (warn-only) and disable the cuDNN autotuner.
        tensorboard: mirror log rows to TensorBoard (None = if installed).
        on_epoch_start: ``on_epoch_start(epoch)`` on every rank before an epoch's batches are drawn, also when a
            resumed run continues mid-epoch (so it must restore, not recompute, state that the epoch's first steps
            depended on; AML keeps its pseudo labels in the method state for this). It may change the sampler's
            labels and length.
    """

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        lr_lambda: Callable[[int], float] | None,
        sampler: StepSampler,
        fetch_batch: FetchBatch,
        *,
        epochs: int,
        device: torch.device | str = "cpu",
        amp: Literal["none", "bf16", "fp16"] = "none",
        channels_last: bool = False,
        grad_accum_steps: int = 1,
        out_dir: str | Path,
        seed: int = 0,
        checkpoint_every_steps: int = 0,
        validate: Callable[[nn.Module], dict[str, float]] | None = None,
        validate_every_epochs: int = 1,
        select_metric: str = "rank1",
        log_every: int = 10,
        progress: bool = True,
        meta: dict[str, Any] | None = None,
        schedule_unit: Literal["epoch", "step"] = "epoch",
        max_steps: int | None = None,
        deterministic: bool = True,
        tensorboard: bool | None = False,
        on_epoch_start: Callable[[int], None] | None = None,
    ) -> None:
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
        if schedule_unit not in ("epoch", "step"):
            raise ValueError(f"schedule_unit must be 'epoch' or 'step', got {schedule_unit!r}")
        if grad_accum_steps < 1 or epochs < 1 or log_every < 1 or validate_every_epochs < 1:
            raise ValueError("grad_accum_steps, epochs, log_every and validate_every_epochs must be >= 1")
        sampler_world = getattr(sampler, "world_size", 1)
        if sampler_world != dist.world_size() or getattr(sampler, "rank", 0) != dist.rank():
            raise ValueError(f"the sampler is sharded for rank {getattr(sampler, 'rank', 0)} of {sampler_world} but "
                             f"this is rank {dist.rank()} of {dist.world_size()}; build it with "
                             "rank=distributed.rank(), world_size=distributed.world_size()")
        self.device = torch.device(device)
        self.method = method.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.lr_lambda = lr_lambda
        self.schedule_unit = schedule_unit
        self.sampler = sampler
        self.fetch_batch = fetch_batch
        self.epochs, self.max_steps = int(epochs), max_steps
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.accum = int(grad_accum_steps)
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.checkpoint_every = int(checkpoint_every_steps)
        self.validate, self.validate_every, self.select_metric = validate, validate_every_epochs, select_metric
        self.log_every, self.progress = log_every, progress
        self.on_epoch_start = on_epoch_start
        self.meta = dict(meta or {})
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.generator = make_generator(seed, dist.rank())
        self.step_module = dist.wrap_ddp(_TrainingStep(self.method), self.device)
        self.logger = JsonlLogger(self.out_dir / "log.jsonl", enabled=dist.is_main(), tensorboard=tensorboard)

        # progress: training continues at epoch `epoch` after its first `step_in_epoch` sampler steps
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None

    # ------------------------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict[str, Any]:
        """Train from the current progress (0, or where :meth:`resume` left off) to the end; returns a summary."""
        self.method.train()
        history: dict[str, Any] = {"rows": 0}
        done = self.max_steps is not None and self.global_step >= self.max_steps
        while self.epoch < self.epochs and not done:
            epoch = self.epoch
            if self.on_epoch_start is not None:  # e.g. re-clustering (AML): may change the sampler's labels/length
                self.on_epoch_start(epoch)
            self.sampler.set_epoch(epoch)
            steps = len(self.sampler)
            if self.schedule_unit == "epoch":
                self._set_lr(epoch)
            bar = tqdm(total=steps, initial=self.step_in_epoch, desc=f"epoch {epoch}", dynamic_ncols=True,
                       disable=not (self.progress and dist.is_main()), leave=False)
            window: dict[str, torch.Tensor] = {}
            window_steps, window_images, window_start = 0, 0, time.perf_counter()

            for step, (rgb_idx, ir_idx) in enumerate(self.sampler):
                if step < self.step_in_epoch:
                    continue  # done before the checkpoint we resumed from; batches depend only on (seed, epoch)

                # data: uint8 images of this rank's shard -> augmented, normalised Batch on the device
                rgb_u8, ir_u8, rgb_labels, ir_labels, rgb_cams, ir_cams = self.fetch_batch(rgb_idx, ir_idx)
                d = self.device
                batch = self.method.make_batch(
                    _as_tensor(rgb_u8, d), _as_tensor(ir_u8, d),
                    _as_tensor(rgb_labels, d, torch.long), _as_tensor(ir_labels, d, torch.long),
                    self.generator,
                    rgb_cams=_as_tensor(rgb_cams, d, torch.long), ir_cams=_as_tensor(ir_cams, d, torch.long))
                if self.channels_last:
                    batch.images = batch.images.contiguous(memory_format=torch.channels_last)

                # forward + backward; gradients are all-reduced (DDP) only on the last micro-batch of a group
                group_start = step - step % self.accum
                group_size = min(self.accum, steps - group_start)
                last_of_group = step + 1 == group_start + group_size
                sync = contextlib.nullcontext() if last_of_group or not hasattr(self.step_module, "no_sync") \
                    else cast("DistributedDataParallel", self.step_module).no_sync()
                with sync:
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        losses = self.step_module(batch)
                    self.scaler.scale(losses["loss"].float() / group_size).backward()

                # optimiser step (+ per-step schedule)
                if last_of_group:
                    if self.schedule_unit == "step":
                        self._set_lr(self.global_step)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.global_step += 1
                self.step_in_epoch = step + 1

                # logging: losses averaged over the window, global images/s
                for name, value in losses.items():
                    window[name] = window.get(name, 0.0) + value.detach().float()
                window_steps += 1
                window_images += len(batch)
                if window_steps == self.log_every or step + 1 == steps:
                    row = self._log_train(epoch, step, window, window_steps, window_images,
                                          time.perf_counter() - window_start)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}", refresh=False)
                    history.update(last=row, rows=history["rows"] + 1)
                    window, window_steps, window_images, window_start = {}, 0, 0, time.perf_counter()
                bar.update(1)

                done = self.max_steps is not None and self.global_step >= self.max_steps
                if done:
                    break
                if last_of_group and self.checkpoint_every and self.global_step % self.checkpoint_every == 0 \
                        and step + 1 < steps:
                    self.save_last()
            bar.close()

            if not done or self.step_in_epoch == steps:  # the epoch ran to its end
                self.epoch, self.step_in_epoch = epoch + 1, 0
                if self.validate is not None and ((epoch + 1) % self.validate_every == 0 or epoch + 1 == self.epochs):
                    self._run_validation(epoch)
            self.save_last()

        self.logger.close()
        return {"epoch": self.epoch, "global_step": self.global_step, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "select_metric": self.select_metric, "last": history.get("last")}

    # ------------------------------------------------------------------------------------------------------------
    # pieces of the loop

    def _set_lr(self, t: int) -> None:
        factor = 1.0 if self.lr_lambda is None else float(self.lr_lambda(t))
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _log_train(self, epoch: int, step: int, window: dict[str, torch.Tensor], n_steps: int, n_images: int,
                   seconds: float) -> dict[str, Any]:
        """Average the window's loss terms over steps and ranks (a collective: every rank calls it), log on rank 0."""
        names = sorted(window)
        means = dist.all_reduce_mean(torch.stack([window[k] for k in names]) / n_steps).tolist()
        row: dict[str, Any] = {"kind": "train", "epoch": epoch, "step": step, "global_step": self.global_step}
        groups = self.optimizer.param_groups
        row["lr"] = groups[0]["lr"]
        if len(groups) > 1:
            for i, g in enumerate(groups):
                row[f"lr_{g.get('name', i)}"] = g["lr"]
        row.update(zip(names, means))
        row["img_per_s"] = dist.world_size() * n_images / max(seconds, 1e-9)
        row["time"] = time.time()
        self.logger.log(row)
        return row

    def _run_validation(self, epoch: int) -> None:
        """Validate on rank 0 (the others wait), log the metrics, keep ``best.pt``."""
        if dist.is_main():
            assert self.validate is not None  # called only when a validate function was given
            model = getattr(self.method, "model", self.method)
            model.eval()
            with torch.no_grad():
                metrics = dict(self.validate(model))
            model.train()
            self.logger.log({"kind": "val", "epoch": epoch, "global_step": self.global_step, **metrics,
                             "time": time.time()})
            if self.select_metric not in metrics:
                raise KeyError(f"validate() returned {sorted(metrics)} but select_metric={self.select_metric!r}")
            value = float(metrics[self.select_metric])
            if self.best_metric is None or value > self.best_metric:
                self.best_metric, self.best_epoch = value, epoch
                self._save(self.out_dir / "best.pt", with_training_state=False)
        dist.barrier()

    def _progress(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step}

    def _save(self, path: Path, *, with_training_state: bool, rng: list[dict] | None = None) -> None:
        model = getattr(self.method, "model", self.method)
        meta = {**self.meta, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "select_metric": self.select_metric, "world_size": dist.world_size(), "epochs": self.epochs}
        save_checkpoint(
            path,
            model_state=model.state_dict(),
            method_state=self.method.state_dict() if with_training_state else None,
            optimizer_state=self.optimizer.state_dict() if with_training_state else None,
            scheduler_state={"unit": self.schedule_unit, "lr_lambda": repr(self.lr_lambda)},
            scaler_state=self.scaler.state_dict() if with_training_state and self.scaler.is_enabled() else None,
            rng_state=rng,
            progress=self._progress(),
            meta=meta,
        )

    def save_last(self) -> None:
        """Write ``out_dir/last.pt`` with everything needed to resume (a collective: every rank must call it)."""
        rng = dist.all_gather_object(get_rng_state(self.generator))  # every rank's streams, in rank order
        if dist.is_main():
            self._save(self.out_dir / "last.pt", with_training_state=True, rng=rng)  # type: ignore[arg-type]
        dist.barrier()

    # ------------------------------------------------------------------------------------------------------------
    # resume

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore weights, optimiser, scaler, RNG streams, progress and best metric from a checkpoint.

        ``path`` defaults to ``out_dir/last.pt``; when that does not exist nothing happens and False is returned
        (a fresh run). An explicit ``path`` must exist. The checkpoint's dataset and trial must match ``meta``'s.
        After resuming, :meth:`fit` continues at the exact step after the checkpoint: on CPU the final weights are
        bit-identical to an uninterrupted run's (same world size).
        """
        if path is None:
            path = self.out_dir / "last.pt"
            if not path.is_file():
                return False
        ckpt = load_checkpoint(path)
        meta = ckpt["meta"]
        for key in ("dataset", "trial", "method"):
            mine, theirs = self.meta.get(key), meta.get(key)
            if mine is not None and theirs is not None and mine != theirs:
                raise CheckpointError(f"{path}: written by a run with {key}={theirs!r} but this run has "
                                      f"{key}={mine!r}; resume into the matching out_dir or start a new one")
        if ckpt.get("method") is None or ckpt.get("optimizer") is None:
            raise CheckpointError(f"{path}: has no training state (optimizer/method) — best.pt-style checkpoints "
                                  "are for testing; resume from last.pt")
        adapt = getattr(self.method, "adapt_to_state", None)
        if adapt is not None:  # state whose shape changes during training (AML's cluster memories)
            adapt(ckpt["method"])
        load_model_state(self.method, ckpt["method"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: optimiser state does not fit this optimiser ({exc}); was the recipe's "
                                  "optimiser changed?") from None
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt.get("rng") or []
        if len(rng) == dist.world_size():
            set_rng_state(rng[dist.rank()], self.generator)
        else:
            warnings.warn(f"{path}: saved by {len(rng)} process(es), resumed by {dist.world_size()}: training "
                          "continues correctly but random streams differ from an uninterrupted run", stacklevel=2)
            if rng:
                set_rng_state(rng[0], None)
            self.generator = make_generator(self.seed + int(ckpt["progress"]["global_step"]), dist.rank())
        progress = ckpt["progress"]
        self.epoch = int(progress["epoch"])
        self.step_in_epoch = int(progress["step_in_epoch"])
        self.global_step = int(progress["global_step"])
        self.best_metric = meta.get("best_metric")
        self.best_epoch = meta.get("best_epoch")
        self.logger.truncate_after(self.global_step)
        return True


def total_steps(epochs: int, steps_per_epoch: int, grad_accum_steps: int = 1) -> int:
    """Optimiser steps of a run (each epoch's last group is stepped even when shorter)."""
    return epochs * math.ceil(steps_per_epoch / grad_accum_steps)
