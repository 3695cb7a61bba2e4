"""Embed arbitrary images with a trained checkpoint: the engine of ``vireid extract`` and ``vireid search``.

:class:`Embedder` loads a checkpoint (:func:`vireid.training.load_trained_model`) and embeds an
:class:`~vireid.inference.images.ImageList` with the checkpoint's own preprocessing and test-time choices:
input size ``data.height`` x ``data.width`` (Lanczos resize, as the training cache), ``eval.flip`` and
``eval.feature``. Images are decoded in chunks by a few threads while the model runs, so memory stays bounded
whatever the number of images (nothing is written to disk, unlike the training cache).

The rows are computed by :func:`vireid.inference.extract.extract_features` over in-memory chunks whose size is a
multiple of the batch size, so the batches -- and the features -- are exactly those of one
``extract_features`` call over an :class:`~vireid.data.cache.ImageCache` of the same images.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from vireid.checkpoints import TestSettings, load_any_checkpoint
from vireid.data.cache import ImageCache
from vireid.data.images import load_resized
from vireid.errors import ConfigError, FeaturesError
from vireid.inference.extract import extract_features
from vireid.inference.images import (
    DEFAULT_IR_THRESHOLD,
    MODALITY_CODE,
    ImageList,
    decide_modalities,
    ir_scores,
    parse_modality,
)


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must be a usable torch device (one-line error)."""
    name = "cuda" if spec == "auto" and torch.cuda.is_available() else ("cpu" if spec == "auto" else spec)
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"--device {spec}: not usable here ({str(exc).splitlines()[0]}); use cpu, cuda or "
                          "auto") from None
    return device


@dataclass
class Embedded:
    """Features of an :class:`ImageList`, rows aligned with it.

    Attributes:
        images: what was embedded.
        features: float32 [N, D], L2-normalised (flip-averaged when the checkpoint's ``eval.flip`` is on).
        modalities: int64 [N], 0 visible / 1 infrared: what each image was fed as.
        auto_scores: float64 [N] channel spreads when the modality was decided per image (``auto``), else None.
        threshold: the ``auto`` threshold used, else None.
    """

    images: ImageList
    features: np.ndarray
    modalities: np.ndarray
    auto_scores: np.ndarray | None = None
    threshold: float | None = None

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the features file (:mod:`vireid.evaluation.features` contract), rows sorted by path.

        Besides the five contract keys it stores ``root`` (the absolute folder the paths are relative to; ``vireid
        search`` finds the images there) and, for ``--modality auto``, ``modality_auto_score`` [N] and
        ``modality_auto_threshold``.
        """
        from vireid.evaluation.features import save_features

        paths = np.asarray(self.images.paths, dtype=str)
        order = np.argsort(paths, kind="stable")  # the order save_features keeps; extra keys must follow it
        keys: dict[str, Any] = {"root": np.asarray(str(self.images.root))}
        if self.auto_scores is not None:
            keys["modality_auto_score"] = np.asarray(self.auto_scores, dtype=np.float64)[order]
            keys["modality_auto_threshold"] = np.asarray(self.threshold, dtype=np.float64)
        keys.update(extra)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        return save_features(out, self.features[order], self.images.pids[order], self.images.camids[order],
                             self.modalities[order], paths[order], **keys)


class Embedder:
    """A trained model plus the checkpoint's test-time settings, ready to embed image lists.

    Example::

        emb = Embedder.load("runs/agw_sysu/best.pt", device="auto")
        gallery = emb.embed(collect_images("gallery/"), modality="rgb")
        gallery.save("gallery.npz")
    """

    def __init__(self, model: torch.nn.Module, settings: TestSettings, checkpoint: Path, device: torch.device,
                 batch_size: int | None = None, workers: int = 2) -> None:
        self.model = model.eval()
        self.settings = settings
        self.checkpoint = checkpoint
        self.device = device
        self.batch_size = int(settings.batch_size if batch_size is None else batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be at least 1")
        self.workers = max(0, int(workers))

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "auto", batch_size: int | None = None,
             workers: int = 2, checkpoint_format: str = "vireid", size: tuple[int, int] | None = None,
             flip: bool | None = None, arch: str | None = None) -> Embedder:
        """Load ``checkpoint`` (one-line :class:`~vireid.errors.CheckpointError` when it is not a vireid checkpoint
        or does not fit the architecture its config describes) onto ``device`` (``auto``: cuda when available).

        ``checkpoint_format="agw"|"fastreid"`` loads an original-repository checkpoint instead
        (:func:`vireid.checkpoints.load_any_checkpoint`); ``size`` and ``flip`` override the test-time settings;
        ``arch`` names a foreign checkpoint's backbone instead of inferring it."""
        dev = resolve_device(device)
        model, settings = load_any_checkpoint(checkpoint, checkpoint_format, size=size, flip=flip, device=str(dev),
                                              arch=arch)
        return cls(model, settings, Path(checkpoint), dev, batch_size, workers)

    # ----------------------------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """D of the features this model produces."""
        return int(cast(int, self.model.feature_dim))

    @property
    def height(self) -> int:
        return int(self.settings.height)

    @property
    def width(self) -> int:
        return int(self.settings.width)

    @property
    def flip(self) -> bool:
        return bool(self.settings.flip)

    @property
    def feature(self) -> str:
        return str(self.settings.feature)

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: checkpoint, input size, flip, feature, dimension, device."""
        return {"checkpoint": str(self.checkpoint), "input_size": [self.height, self.width], "flip": self.flip,
                "feature": self.feature, "feature_dim": self.feature_dim, "device": str(self.device)}

    # ----------------------------------------------------------------------------------------------------------------
    def embed(self, images: ImageList, modality: str = "rgb", *, ir_threshold: float = DEFAULT_IR_THRESHOLD,
              progress: bool | None = None, chunk_batches: int = 8) -> Embedded:
        """Features of every image of ``images`` fed as ``modality`` (rgb, ir, or auto: decided per image).

        ``progress``: a tqdm bar over images (None: only when stderr is a terminal).
        """
        from tqdm import tqdm

        mode = parse_modality(modality)
        if not np.isfinite(ir_threshold) or ir_threshold <= 0:
            raise ConfigError(f"--ir-threshold {ir_threshold}: must be a positive number (mean channel spread, "
                              "0..255)")
        n = len(images)
        chunk = self.batch_size * max(1, chunk_batches)
        feats: list[np.ndarray] = []
        mods = np.empty(n, dtype=np.int64)
        scores = np.empty(n, dtype=np.float64) if mode == "auto" else None
        show = (sys.stderr.isatty() if progress is None else progress)
        bar = tqdm(total=n, desc=f"embedding {n} images ({mode})", unit="img", disable=not show, leave=False)
        pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 0 else None
        try:
            pending = self._submit(pool, images, 0, min(chunk, n))
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                arrays = [f.result() if isinstance(f, Future) else f for f in pending]
                if stop < n:  # decode the next chunk while the model works on this one
                    pending = self._submit(pool, images, stop, min(stop + chunk, n))
                batch = np.stack(arrays)
                if mode == "auto":
                    assert scores is not None
                    scores[start:stop] = ir_scores(batch)
                    mods[start:stop] = decide_modalities(scores[start:stop], ir_threshold)
                else:
                    mods[start:stop] = MODALITY_CODE[mode]
                cache = ImageCache(batch, key="in-memory", path=Path(images.source), meta={})
                feats.append(extract_features(self.model, cache, mods[start:stop], batch_size=self.batch_size,
                                              device=self.device, flip=self.flip,
                                              feature=self.feature))  # type: ignore[arg-type]
                bar.update(stop - start)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        features = np.concatenate(feats) if feats else np.zeros((0, self.feature_dim), dtype=np.float32)
        return Embedded(images, features, mods, scores, ir_threshold if mode == "auto" else None)

    def _submit(self, pool: ThreadPoolExecutor | None, images: ImageList, start: int,
                stop: int) -> list[Future | np.ndarray]:
        h, w = self.height, self.width
        if pool is None:
            return [load_resized(images.absolute(i), h, w) for i in range(start, stop)]
        return [pool.submit(load_resized, images.absolute(i), h, w) for i in range(start, stop)]

    def check_gallery_dim(self, dim: int, source: str) -> None:
        """Refuse a features file whose dimension is not this model's (it was made by another model)."""
        if dim != self.feature_dim:
            raise FeaturesError(f"{source}: features have dimension {dim} but {self.checkpoint} produces "
                                f"{self.feature_dim}; the file comes from another model -- extract the gallery "
                                "with this checkpoint (vireid extract)")
