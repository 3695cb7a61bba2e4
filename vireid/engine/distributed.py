"""Distributed data parallel helpers: process-group set-up from torchrun's environment, and no-ops without it.

Launch with ``torchrun --nproc_per_node N -m vireid train CONFIG``: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and joins the group with
NCCL when CUDA is available and gloo otherwise. Started as a plain ``python`` process, everything here is a no-op
(rank 0 of 1), so training code calls these helpers unconditionally.

Convention: every rank trains, only rank 0 writes files (:func:`is_main`).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def is_initialized() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine (which GPU it drives); from ``LOCAL_RANK``, 0 by default."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on the process that writes files, logs and progress bars (rank 0)."""
    return rank() == 0


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group described by torchrun's environment and return this process's device.

    Without ``WORLD_SIZE`` > 1 in the environment nothing is initialised and the device is ``cuda`` (if available)
    or ``cpu``. ``backend`` defaults to NCCL with CUDA, gloo without. Each process drives GPU ``LOCAL_RANK``.
    Calling it twice is harmless.
    """
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", local_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if _env_int("WORLD_SIZE", 1) <= 1 or is_initialized():
        return device
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; launch with "
                           "torchrun --nproc_per_node N (it sets them)")
    backend = backend or ("nccl" if cuda else "gloo")
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, init_method="env://", rank=_env_int("RANK", 0),
                            world_size=_env_int("WORLD_SIZE", 1),
                            timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    return device


def destroy() -> None:
    """Leave the process group (end of a run); no-op when not distributed."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (e.g. while rank 0 writes a checkpoint); no-op when not distributed."""
    if is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor:
    """The mean of ``value`` over ranks (a new tensor; the input is not modified). Identity when not distributed."""
    t = torch.as_tensor(value).detach().clone()
    if not is_initialized():
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world_size()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj`` in rank order (``[obj]`` when not distributed); used to checkpoint per-rank RNG states."""
    if not is_initialized():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed (``device_ids`` set on GPU), else ``module`` itself.

    The gradient all-reduce averages gradients over ranks, so with equal shards each step equals one process
    stepping on the concatenated global batch (for losses that are means of per-sample terms and models without
    batch-statistics coupling such as BatchNorm in training mode).
    """
    if not is_initialized():
        return module
    device = torch.device(device)
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index], output_device=device.index)
    return nn.parallel.DistributedDataParallel(module)
