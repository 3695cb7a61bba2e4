"""Tests of the decoded-image cache: hits, invalidation, exact values, corrupt files, channel conversion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vireid.data.cache as cache_mod
from vireid.data.cache import ImageCache, batch_to_tensor, cache_key, default_cache_dir
from vireid.data.images import load_resized
from vireid.errors import DataError

H, W = 12, 6


def _write_images(root: Path, n: int = 5) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        rel = f"cam{i % 2 + 1}/{i:04d}/0001.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(16 + i, 8 + i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / rel, quality=90)
        paths.append(rel)
    return paths


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, list[str], Path]:
    root = tmp_path / "ds"
    paths = _write_images(root)
    return root, paths, tmp_path / "cache"


def test_build_values_equal_load_resized(data):
    root, paths, cdir = data
    cache = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, workers=2, progress=False)
    assert len(cache) == 5 and cache.array.shape == (5, H, W, 3) and cache.array.dtype == np.uint8
    for i, rel in enumerate(paths):
        np.testing.assert_array_equal(cache[i], load_resized(root / rel, H, W))
    b = cache.batch([3, 0, 3])
    assert b.shape == (3, H, W, 3)
    np.testing.assert_array_equal(b[0], load_resized(root / paths[3], H, W))
    np.testing.assert_array_equal(b[2], b[0])
    assert _files(cdir) == sorted([f"{cache.key}.npy", f"{cache.key}.json"])
    meta = json.loads((cdir / f"{cache.key}.json").read_text())
    assert meta["count"] == 5 and meta["height"] == H and meta["width"] == W and meta["resample"] == "lanczos"


def test_serial_build_equals_threaded(data, tmp_path):
    root, paths, cdir = data
    a = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, workers=2, progress=False)
    b = ImageCache.open_or_build(root, paths, H, W, cache_dir=tmp_path / "other", workers=0, progress=False)
    assert a.key == b.key
    np.testing.assert_array_equal(np.asarray(a.array), np.asarray(b.array))


def test_reopen_hits_cache_without_decoding(data, monkeypatch):
    root, paths, cdir = data
    first = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, progress=False)

    def boom(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(cache_mod, "load_resized", boom)
    second = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, progress=False)
    assert second.key == first.key and second.path == first.path
    np.testing.assert_array_equal(np.asarray(second.array), np.asarray(first.array))


def test_env_var_sets_default_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VIREID_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    monkeypatch.delenv("VIREID_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "vireid"


def test_key_changes_with_list_order_touch_and_size(data):
    root, paths, _ = data
    k = cache_key(root, paths, H, W)
    assert cache_key(root, paths, H, W) == k
    assert cache_key(root, paths[:-1], H, W) != k
    assert cache_key(root, list(reversed(paths)), H, W) != k
    assert cache_key(root, paths, H + 1, W) != k
    assert cache_key(root, paths, H, W + 1) != k
    st = os.stat(root / paths[2])
    os.utime(root / paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache_key(root, paths, H, W) != k


def test_touched_file_rebuilds_with_new_content(data, monkeypatch):
    root, paths, cdir = data
    first = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, progress=False)
    Image.fromarray(np.full((20, 10, 3), 200, np.uint8)).save(root / paths[1])
    calls = []
    real = cache_mod.load_resized
    monkeypatch.setattr(cache_mod, "load_resized", lambda *a: calls.append(a) or real(*a))
    second = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, progress=False)
    assert second.key != first.key and len(calls) == 5
    np.testing.assert_array_equal(second[1], load_resized(root / paths[1], H, W))
    np.testing.assert_array_equal(second[0], first[0])


def test_corrupt_image_aborts_and_leaves_no_cache(data):
    root, paths, cdir = data
    bad = root / paths[3]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    with pytest.raises(DataError, match=r"0003/0001\.jpg: cannot decode image"):
        ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, workers=2, progress=False)
    assert _files(cdir) == []
    with pytest.raises(DataError, match="cannot decode"):
        ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, workers=0, progress=False)
    assert _files(cdir) == []


def test_missing_file_and_bad_arguments(data):
    root, paths, cdir = data
    with pytest.raises(DataError, match=r"nope\.jpg: image file not found"):
        ImageCache.open_or_build(root, paths + ["nope.jpg"], H, W, cache_dir=cdir, progress=False)
    with pytest.raises(DataError, match="empty file list"):
        ImageCache.open_or_build(root, [], H, W, cache_dir=cdir, progress=False)
    with pytest.raises(DataError, match="positive height"):
        ImageCache.open_or_build(root, paths, 0, W, cache_dir=cdir, progress=False)


def test_stale_sidecar_with_wrong_shape_is_rebuilt(data):
    root, paths, cdir = data
    first = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, progress=False)
    np.save(first.path, np.zeros((2, H, W, 3), np.uint8))  # a foreign/partial file under our name
    again = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, progress=False)
    assert again.array.shape == (5, H, W, 3)
    np.testing.assert_array_equal(again[4], load_resized(root / paths[4], H, W))


def test_gray_and_rgba_become_three_channels(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    gray = np.arange(8 * 4, dtype=np.uint8).reshape(8, 4) * 7
    Image.fromarray(gray, mode="L").save(root / "g.png")
    rgba = np.zeros((8, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 100, 50, 25, 255
    rgba[0, 0, 3] = 0  # one transparent pixel -> composited on black
    Image.fromarray(rgba, mode="RGBA").save(root / "a.png")
    cache = ImageCache.open_or_build(root, ["g.png", "a.png"], 8, 4, cache_dir=tmp_path / "c", progress=False)
    assert cache.array.shape == (2, 8, 4, 3)
    np.testing.assert_array_equal(cache[0], np.repeat(gray[..., None], 3, axis=2))  # same size: no resize
    assert cache[1][1, 1].tolist() == [100, 50, 25]
    assert cache[1][0, 0].tolist() == [0, 0, 0]


def test_batch_to_tensor_layout(data):
    root, paths, cdir = data
    cache = ImageCache.open_or_build(root, paths, H, W, cache_dir=cdir, progress=False)
    t = batch_to_tensor(cache.batch([1, 2]))
    assert t.dtype == torch.uint8 and t.shape == (2, 3, H, W)
    assert t[1, 2, 5, 3].item() == int(cache[2][5, 3, 2])
    assert batch_to_tensor(cache.batch([1]), device="cpu", pin_memory=True).shape == (1, 3, H, W)
    assert cache.as_tensor().shape == (5, H, W, 3)
    with pytest.raises(DataError, match="uint8"):
        batch_to_tensor(np.zeros((2, H, W, 3), np.float32))
    with pytest.raises(DataError, match="out of range"):
        cache.batch([5])
