"""A search gallery: embedded from a folder / list file, or read from a features file made by the same model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vireid.inference.embed import Embedder
from vireid.inference.images import collect_images


@dataclass(frozen=True)
class Gallery:
    """Gallery rows: features [G, D], paths relative to ``root``, pids/camids (-1 unknown), modalities (0/1)."""

    features: np.ndarray
    paths: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    modalities: np.ndarray
    root: Path
    source: str

    def __len__(self) -> int:
        return int(self.features.shape[0])


def is_features_file(source: str | Path) -> bool:
    """A ``.npz`` path is a features file; anything else is a folder or a list file of images."""
    return Path(source).suffix.lower() == ".npz"


def load_gallery(source: str | Path, embedder: Embedder, *, modality: str = "rgb", root: str | Path | None = None,
                 ir_threshold: float | None = None, progress: bool | None = None) -> Gallery:
    """The gallery of ``vireid search``.

    A ``.npz`` is read with :func:`vireid.evaluation.features.load_features` (rows sorted by path) and must have
    the model's feature dimension (one-line :class:`FeaturesError` otherwise: it comes from another model). Its
    images are looked up under ``root``, else the ``root`` key ``vireid extract`` stores, else the file's folder.
    Anything else is a folder or list file, embedded as ``modality`` (default rgb).
    """
    if is_features_file(source):
        from vireid.evaluation.features import load_features

        fs = load_features(source)
        embedder.check_gallery_dim(int(fs.features.shape[1]), str(source))
        where = Path(root) if root is not None else _stored_root(Path(source))
        return Gallery(fs.features, fs.paths, fs.pids, fs.camids, fs.modalities, where, str(source))
    images = collect_images(source, root)
    kw: dict[str, Any] = {} if ir_threshold is None else {"ir_threshold": ir_threshold}
    emb = embedder.embed(images, modality, progress=progress, **kw)
    return Gallery(emb.features, np.asarray(images.paths, dtype=str), images.pids, images.camids, emb.modalities,
                   images.root, str(source))


def _stored_root(npz: Path) -> Path:
    try:
        with np.load(npz, allow_pickle=False) as data:
            if "root" in data.files and data["root"].ndim == 0 and data["root"].dtype.kind == "U":
                stored = Path(str(data["root"]))
                if stored.is_dir():
                    return stored
    except (OSError, ValueError):
        pass
    return npz.resolve().parent

