"""A tiny training method and dataset for the engine tests, and a script that trains it (for subprocess tests).

The toy "dataset" is a few uint8 images 16x8 per identity and modality whose colours depend on the identity, so a
two-layer conv net learns it in a few steps. The toy method follows the real :class:`vireid.methods.Method`
contract: modality-specific stems, a shared conv, average pooling, a linear classifier; loss = cross-entropy + a
small per-sample feature penalty (both means of per-sample terms, so DDP over shards equals one process on the
global batch). Optional: random flip (augmentation generator), dropout (torch's global RNG), BatchNorm.

As a script (``python tests/_toy.py --out DIR ...``, also under torchrun) it trains the toy method with the real
:class:`vireid.engine.Trainer`, so tests can kill it, resume it and compare runs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vireid.methods.base import Batch, Method, cams_or_unknown

NUM_IDS = 6
PER_ID = 8
H, W = 16, 8


def toy_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """RGB and IR uint8 images [N, 3, H, W] with labels: identity i has a colour (RGB) / brightness (IR) pattern."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_IDS), PER_ID)
    base = rng.integers(30, 220, size=(NUM_IDS, 3, 1, 1))
    rgb = base[labels] + rng.integers(-25, 26, size=(len(labels), 3, H, W))
    ir_level = base.mean(axis=1, keepdims=True)
    ir = np.repeat(ir_level[labels], 3, axis=1) + rng.integers(-25, 26, size=(len(labels), 1, H, W))
    rgb[:, :, : H // 2] += 20 * (labels[:, None, None, None] % 2)  # a top/bottom pattern both modalities share
    ir[:, :, : H // 2] += 20 * (labels[:, None, None, None] % 2)
    return (np.clip(rgb, 0, 255).astype(np.uint8), np.clip(ir, 0, 255).astype(np.uint8), labels.copy(),
            labels.copy())


class ToyNet(nn.Module):
    """Two modality stems -> shared conv -> average pool -> (dropout) -> linear classifier."""

    def __init__(self, num_classes: int = NUM_IDS, width: int = 8, dropout: float = 0.0,
                 batchnorm: bool = False) -> None:
        super().__init__()
        self.stem_rgb = nn.Conv2d(3, width, 3, padding=1)
        self.stem_ir = nn.Conv2d(3, width, 3, padding=1)
        self.shared = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        is_rgb = (modality == 0).view(-1, 1, 1, 1)
        h = torch.relu(torch.where(is_rgb, self.stem_rgb(x), self.stem_ir(x)))
        h = torch.relu(self.bn(self.shared(h)))
        feat = h.mean(dim=(2, 3))
        return feat, self.classifier(self.dropout(feat))

    def head_parameters(self):
        return self.classifier.parameters()


class ToyMethod(Method):
    """The toy training method: uint8 -> [0,1] -> normalised, optional flip; CE + 0.01 * mean ||feature||^2."""

    def __init__(self, flip: float = 0.0, dropout: float = 0.0, batchnorm: bool = False) -> None:
        super().__init__()
        self.model = ToyNet(dropout=dropout, batchnorm=batchnorm)
        self.flip = flip

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None) -> Batch:
        x = torch.cat([rgb_u8, ir_u8]).float().div(255.0).sub(0.5).div(0.25)
        if self.flip > 0:
            mask = (torch.rand(x.shape[0], generator=generator) < self.flip).to(x.device)
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
        labels = torch.cat([rgb_labels, ir_labels])
        modalities = torch.cat([torch.zeros(len(rgb_labels), dtype=torch.long),
                                torch.ones(len(ir_labels), dtype=torch.long)]).to(x.device)
        cams = torch.cat([cams_or_unknown(rgb_cams, len(rgb_labels), x.device),
                          cams_or_unknown(ir_cams, len(ir_labels), x.device)])
        return Batch(x, labels, modalities, cams)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        feat, logits = self.model(batch.images, batch.modalities)
        ce = F.cross_entropy(logits, batch.labels)
        reg = 0.01 * feat.pow(2).sum(dim=1).mean()
        return {"ce": ce, "reg": reg, "loss": ce + reg}


class ListSampler:
    """A fixed list of (rgb_idx, ir_idx) steps, the same every epoch (tests that need hand-chosen batches)."""

    def __init__(self, steps: list[tuple[list[int], list[int]]]) -> None:
        self.steps, self.epoch = steps, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)


def make_fetch(data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], jitter: bool = False,
               sleep: float = 0.0):
    """``fetch_batch`` over the toy arrays; ``jitter`` draws from Python's and NumPy's global RNGs (to test that
    resume restores them); ``sleep`` slows each step down (to kill a run mid-epoch)."""
    rgb, ir, rgb_labels, ir_labels = data

    def fetch(rgb_idx, ir_idx):
        if sleep:
            time.sleep(sleep)
        a, b = rgb[rgb_idx].astype(np.int16), ir[ir_idx].astype(np.int16)
        if jitter:
            a = a + np.random.randint(-3, 4, size=a.shape) + random.randint(-2, 2)
            b = b + np.random.randint(-3, 4, size=b.shape) + random.randint(-2, 2)
        to_u8 = lambda z: torch.from_numpy(np.clip(z, 0, 255).astype(np.uint8))  # noqa: E731
        return (to_u8(a), to_u8(b), torch.from_numpy(rgb_labels[rgb_idx]), torch.from_numpy(ir_labels[ir_idx]),
                None, None)

    return fetch


def toy_validate(data):
    """A validation callback: classification accuracy (%) of the model on all toy images."""
    rgb, ir, rgb_labels, ir_labels = data

    def validate(model: nn.Module) -> dict[str, float]:
        x = torch.from_numpy(np.concatenate([rgb, ir])).float().div(255.0).sub(0.5).div(0.25)
        mod = torch.cat([torch.zeros(len(rgb), dtype=torch.long), torch.ones(len(ir), dtype=torch.long)])
        _, logits = model(x, mod)
        labels = torch.from_numpy(np.concatenate([rgb_labels, ir_labels]))
        return {"acc": float((logits.argmax(1) == labels).float().mean() * 100)}

    return validate


def main(argv: list[str] | None = None) -> None:
    """Train the toy method with the real trainer (single process or under torchrun)."""
    from vireid.data.sampling import CrossModalIdentitySampler
    from vireid.engine import Trainer, distributed, make_meta, seed_everything
    from vireid.engine.schedules import warmup_multistep

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-ids", type=int, default=4)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--flip", type=float, default=0.0)
    p.add_argument("--jitter", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--validate", action="store_true")
    p.add_argument("--dump", default=None, help="folder for rank<r>.pt with this rank's final state (tests)")
    args = p.parse_args(argv)

    seed_everything(0, threads=1)
    device = distributed.init_distributed()
    data = toy_data()
    method = ToyMethod(flip=args.flip, dropout=args.dropout)
    optimizer = torch.optim.SGD(method.param_groups(args.lr, 5e-4), lr=args.lr, momentum=0.9, nesterov=True)
    sampler = CrossModalIdentitySampler(data[2], data[3], num_ids=args.num_ids, num_instances=2, seed=0,
                                        rank=distributed.rank(), world_size=distributed.world_size())
    trainer = Trainer(method, optimizer, warmup_multistep(1, [2], 0.5), sampler,
                      make_fetch(data, jitter=args.jitter, sleep=args.sleep), epochs=args.epochs, device=device,
                      grad_accum_steps=args.accum, out_dir=args.out, seed=0,
                      checkpoint_every_steps=args.ckpt_every, log_every=1, progress=False,
                      validate=toy_validate(data) if args.validate else None, select_metric="acc",
                      meta=make_meta(config_yaml="toy: true\n", dataset="toy", method="toy"))
    if args.resume:
        trainer.resume()
    trainer.fit()
    if args.dump:
        Path(args.dump).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().clone() for k, v in method.state_dict().items()},
                   Path(args.dump) / f"rank{distributed.rank()}.pt")
    distributed.destroy()


if __name__ == "__main__":
    sys.exit(main())
