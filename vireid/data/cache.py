"""Decode and resize every image once, keep the result as a memory-mapped uint8 array.

The AGW-family reference code decodes each training image once, resizes it to 288x144 with Lanczos and keeps the
uint8 arrays in memory (SPEC 1.1). :class:`ImageCache` does the equivalent once per (dataset, file list, size) and
stores it on disk as a ``.npy`` file that later runs memory-map: opening is instant, a batch is one fancy index, and
the operating system's page cache shares the data between processes (DataLoader workers, DDP ranks).

On disk, in the cache directory (argument, else ``$VIREID_CACHE``, else ``~/.cache/vireid``)::

    <key>.npy     uint8 [N, H, W, 3], row i = ``load_resized(root / paths[i], H, W)``
    <key>.json    sidecar: format version, root, count, size, filter, creation time (for humans and checks)

The key is a sha256 over the format version, the absolute dataset root, the *ordered* relative paths, each file's
size and ``mtime_ns``, H, W and the resample filter. A different file list or order, a touched or replaced file, or
another size therefore gives another key, and a stale cache is never read. Old caches are not deleted automatically;
remove the directory to reclaim space.

A build writes to a private temporary file and renames it into place only when every image has been decoded
(``os.replace`` is atomic), the sidecar last; an interrupted build leaves no file that looks valid. Two processes
building the same key at once both succeed (each renames a complete file). A corrupt image aborts the build with the
:class:`~vireid.errors.DataError` of :func:`vireid.data.images.load_image`, which names the file.

Example::

    cache = ImageCache.open_or_build(dataset.root, [s.path for s in dataset.train], 288, 144)
    x = batch_to_tensor(cache.batch(indices), device="cuda")   # uint8 [B, 3, H, W]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from vireid.data.images import load_resized
from vireid.errors import DataError

FORMAT_VERSION = 1
"""Bump when the stored layout or the decoding changes, so old caches are not reused."""

RESAMPLE = "lanczos"
"""The resample filter of :func:`vireid.data.images.load_resized`; part of the key."""


def default_cache_dir() -> Path:
    """``$VIREID_CACHE`` if set and non-empty, else ``~/.cache/vireid``."""
    env = os.environ.get("VIREID_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vireid"


def cache_key(root: str | Path, paths: Sequence[str], height: int, width: int) -> str:
    """The sha256 hex key of a cache: version, absolute root, ordered paths with size and mtime_ns, H, W, filter.

    Raises :class:`DataError` naming the first file that does not exist.
    """
    root = Path(root).expanduser().resolve()
    h = hashlib.sha256()
    header = {"version": FORMAT_VERSION, "root": str(root), "height": int(height), "width": int(width),
              "resample": RESAMPLE, "count": len(paths)}
    h.update(json.dumps(header, sort_keys=True).encode("utf-8"))
    for rel in paths:
        full = root / rel
        try:
            st = os.stat(full)
        except FileNotFoundError:
            raise DataError(f"{full}: image file not found; check the dataset root and list files") from None
        # NUL separators: a path cannot contain NUL, so the encoding is unambiguous
        h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class ImageCache:
    """A read-only, memory-mapped uint8 array [N, H, W, 3] of decoded, resized images, row i = ``paths[i]``.

    Build or reuse one with :meth:`open_or_build`. Indexing returns numpy views/copies of the memory map; use
    :func:`batch_to_tensor` to get a torch uint8 batch [B, 3, H, W].
    """

    def __init__(self, array: np.ndarray, key: str, path: Path, meta: dict[str, Any]) -> None:
        self.array = array
        """The memory map, uint8 [N, H, W, 3] (read-only)."""
        self.key = key
        self.path = path
        """The ``.npy`` file."""
        self.meta = meta
        """The sidecar contents (version, root, count, height, width, resample, created, build_seconds)."""

    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def open_or_build(
        cls,
        root: str | Path,
        paths: Sequence[str],
        height: int,
        width: int,
        cache_dir: str | Path | None = None,
        workers: int = 2,
        progress: bool = True,
    ) -> ImageCache:
        """Open the cache of ``paths`` (relative to ``root``) at ``height`` x ``width``, building it if needed.

        Args:
            root: dataset root; ``paths`` are relative to it (as in :class:`~vireid.data.records.Sample.path`).
            paths: the images, in the order of the rows.
            height, width: output size (Lanczos resize, as the AGW-family reference does).
            cache_dir: where caches live; None = :func:`default_cache_dir`.
            workers: decoding threads (PIL releases the GIL while decoding/resizing); 0 = decode in this thread.
            progress: show a tqdm progress bar while building.
        """
        paths = [str(p) for p in paths]
        if height <= 0 or width <= 0:
            raise DataError(f"image cache: size {height}x{width} is invalid; pass positive height and width")
        if not paths:
            raise DataError(f"{root}: no images to cache (empty file list); check the dataset split")
        if workers < 0:
            raise DataError(f"image cache: workers={workers} is invalid; pass an integer >= 0")
        directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        key = cache_key(root, paths, height, width)
        cache = cls._try_open(directory, key, len(paths), height, width)
        if cache is not None:
            return cache
        directory.mkdir(parents=True, exist_ok=True)
        return cls._build(directory, key, Path(root).expanduser().resolve(), paths, height, width, workers, progress)

    @classmethod
    def _try_open(cls, directory: Path, key: str, count: int, height: int, width: int) -> ImageCache | None:
        npy, sidecar = directory / f"{key}.npy", directory / f"{key}.json"
        if not (npy.is_file() and sidecar.is_file()):
            return None
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            array = np.load(npy, mmap_mode="r")
        except (OSError, ValueError):
            return None  # unreadable or foreign file under our key: rebuild over it
        if meta.get("key") != key or array.dtype != np.uint8 or array.shape != (count, height, width, 3):
            return None
        return cls(array, key, npy, meta)

    @classmethod
    def _build(cls, directory: Path, key: str, root: Path, paths: list[str], height: int, width: int,
               workers: int, progress: bool) -> ImageCache:
        start = time.perf_counter()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".npy.tmp", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            out = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), height, width, 3))

            def decode(i: int) -> np.ndarray:
                return load_resized(root / paths[i], height, width)

            bar = tqdm(total=len(paths), desc=f"caching {len(paths)} images {height}x{width}", unit="img",
                       disable=not progress, leave=False)
            with bar:
                if workers == 0:
                    for i in range(len(paths)):
                        out[i] = decode(i)
                        bar.update()
                else:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        try:
                            for i, img in enumerate(pool.map(decode, range(len(paths)))):
                                out[i] = img
                                bar.update()
                        except BaseException:
                            pool.shutdown(wait=True, cancel_futures=True)
                            raise
            out.flush()
            del out
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is meant to be shared
            os.replace(tmp, directory / f"{key}.npy")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        meta = {
            "key": key, "version": FORMAT_VERSION, "root": str(root), "count": len(paths), "height": height,
            "width": width, "resample": RESAMPLE, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "build_seconds": round(time.perf_counter() - start, 3), "first": paths[0], "last": paths[-1],
        }
        _write_atomic(directory / f"{key}.json", json.dumps(meta, indent=2) + "\n")
        cache = cls._try_open(directory, key, len(paths), height, width)
        assert cache is not None, "a freshly built cache must open"
        return cache

    # ----------------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        """Image ``i`` as a read-only uint8 view [H, W, 3] of the memory map."""
        return self.array[i]

    @property
    def height(self) -> int:
        return int(self.array.shape[1])

    @property
    def width(self) -> int:
        return int(self.array.shape[2])

    def batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images ``indices`` (any order, repeats allowed) as a new in-memory uint8 array [B, H, W, 3]."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise DataError(f"{self.path}: batch indices must be a 1-D list, got shape {idx.shape}")
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DataError(f"{self.path}: batch index out of range for {len(self)} cached images; "
                            "was the sampler built from another file list?")
        return np.asarray(self.array[idx])

    def as_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The whole cache as a uint8 tensor [N, H, W, 3], optionally moved to ``device``.

        Every VI-ReID training set fits in accelerator memory as uint8 (SYSU 288x144: 4.25 GB, SPEC 7); keeping it
        there removes host-to-device copies from the training loop. Without a device the tensor shares the memory
        map (read-only: do not write to it).
        """
        import warnings

        with warnings.catch_warnings():  # from_numpy warns that the memmap is read-only; we never write through it
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(self.array)
        return t if device is None else t.to(device)

    def __repr__(self) -> str:
        return f"ImageCache({len(self)} images {self.height}x{self.width}, {self.path})"


def batch_to_tensor(
    batch: np.ndarray | torch.Tensor,
    device: torch.device | str | None = None,
    pin_memory: bool = False,
) -> torch.Tensor:
    """Turn a uint8 batch [B, H, W, 3] (from :meth:`ImageCache.batch`) into a uint8 tensor [B, 3, H, W].

    The result is a permuted view (``channels_last`` memory format, which convolutions on GPUs prefer); call
    ``.contiguous()`` if a plain NCHW layout is needed. Copying uint8 and converting to float on the device moves
    4x fewer bytes than converting first. ``pin_memory`` pins the host buffer (only when CUDA is available) so the
    copy to ``device`` can overlap with compute (``non_blocking``).
    """
    t = torch.as_tensor(batch) if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise DataError(f"image batch must be uint8 [B, H, W, 3], got {t.dtype} {tuple(t.shape)}; "
                        "pass the output of ImageCache.batch")
    if pin_memory and torch.cuda.is_available():
        t = t.pin_memory()
    if device is not None:
        t = t.to(device, non_blocking=pin_memory)
    return t.permute(0, 3, 1, 2)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
