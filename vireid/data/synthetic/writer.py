"""Write a synthetic dataset in a real on-disk layout, with a manifest of exactly what was written.

:func:`write_synthetic` is the public entry point (``vireid synth`` calls it). It plans the layout
(:mod:`vireid.data.synthetic.layouts`), renders the images in worker processes (:mod:`vireid.data.synthetic.render`),
writes the list files, and finally ``ROOT/synth_manifest.json``: every image as (relpath, pid, camid, modality) plus
the identity splits, so that tests can check a parser against the generator record by record.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import numpy as np

from vireid.errors import DataError, VireidError

MANIFEST = "synth_manifest.json"
GENERATOR = "vireid.synth"
FORMAT_VERSION = 1
DATASETS = ("sysu_mm01", "regdb", "sysu_mm02", "llcm", "market1501", "market1501_gen")

# Independent SeedSequence streams, so e.g. adding a draw to the identity model never shifts the views.
_K_LAYOUT, _K_IDENT, _K_SCENE, _K_SENSOR, _K_VIEW, _K_PIXELS, _K_PERM = range(7)


class SynthImage(NamedTuple):
    """One written image: path relative to the root, identity and camera as the dataset names them, modality."""

    relpath: str
    pid: int
    camid: int
    modality: int


@dataclass
class SynthManifest:
    """What :func:`write_synthetic` wrote (also stored as ``ROOT/synth_manifest.json``).

    Attributes:
        root: the dataset root.
        dataset: canonical dataset name (``sysu_mm01``, ``regdb``, ...).
        images: every image written, sorted by relpath. pid/camid as the layout names them: SYSU-MM01 folder pid and
            K of camK; RegDB the folder id (1..N; parsers report the per-trial list label instead) and camera 1
            visible / 2 thermal; SYSU-MM02 and LLCM the pid/cam of the path; Market the file-name pid (-1 junk,
            0 distractor) and camera 1..6. market1501_gen twins carry their original's pid/camid with modality 1.
        splits: identity lists: ``train_ids``/``val_ids``/``test_ids`` (SYSU-MM01), ``train_ids``/``test_ids``
            (SYSU-MM02, LLCM, Market), ``ids`` (RegDB).
        trials: RegDB only: per trial 1..10 (index 0..9) the sorted ``train_ids`` and ``test_ids``; the list label
            of an id is its index in that sorted list.
        pseudo_labels: market1501_gen only: basename of a training original -> pseudo label (unlabeled images absent).
        files: the non-image files written (list files, .mat, .pth), relative to root.
        info: dataset-specific extras (e.g. which pseudo labels are wrong) and the per-split summary.
    """

    root: Path
    dataset: str
    images: list[SynthImage]
    splits: dict[str, list[int]]
    trials: list[dict[str, list[int]]] = field(default_factory=list)
    pseudo_labels: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    seed: int = 0
    scale: str = "mini"
    ids: int = 0
    size: tuple[int, int] = (128, 64)
    info: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    complete: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "generator": GENERATOR, "format": FORMAT_VERSION, "complete": self.complete, "dataset": self.dataset,
            "seed": self.seed, "scale": self.scale, "ids": self.ids, "size": list(self.size),
            "splits": self.splits, "trials": self.trials, "summary": self.summary, "files": self.files,
            "info": self.info, "pseudo_labels": self.pseudo_labels, "images": [list(i) for i in self.images],
        }

    @classmethod
    def load(cls, root: str | Path) -> SynthManifest:
        """Read ``ROOT/synth_manifest.json``; DataError if absent or not written by this generator."""
        root = Path(root)
        path = root / MANIFEST
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no synthetic-dataset manifest; write one with `vireid synth`") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable manifest ({exc}); "
                            "regenerate with `vireid synth --overwrite`") from None
        if not isinstance(d, dict) or d.get("generator") != GENERATOR:
            raise DataError(f"{path}: not a vireid synthetic-dataset manifest (missing generator={GENERATOR!r})")
        return cls(
            root=root, dataset=d["dataset"], images=[SynthImage(*i) for i in d.get("images", [])],
            splits=d.get("splits", {}), trials=d.get("trials", []), pseudo_labels=d.get("pseudo_labels", {}),
            files=d.get("files", []), seed=d.get("seed", 0), scale=d.get("scale", "mini"), ids=d.get("ids", 0),
            size=tuple(d.get("size", (128, 64))), info=d.get("info", {}), summary=d.get("summary", {}),
            complete=bool(d.get("complete", False)),
        )


def canonical_name(dataset: str) -> str:
    """``SYSU-MM01`` / ``sysu-mm01`` / ``sysu_mm01`` -> ``sysu_mm01``; unknown names list the known ones."""
    name = str(dataset).strip().lower().replace("-", "_")
    if name not in DATASETS:
        raise VireidError(f"unknown synthetic dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    return name


def _u(v: int) -> int:
    """SeedSequence wants non-negative integers; shift keys such as pid -1."""
    return int(v) + (1 << 32)


def _seq(seed: int, dataset: str, kind: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(dataset.encode()), kind, *(_u(k) for k in key)])


def _rng(seed: int, dataset: str, kind: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seq(seed, dataset, kind, *key))


# ----------------------------------------------------------------------------------------------- rendering worker
class _Renderer:
    """Renders jobs of one plan; caches identities, scenes and sensors (pure functions of their keys)."""

    def __init__(self, root: str, dataset: str, seed: int, size: tuple[int, int], sensors: dict, scenes: dict,
                 vary_size: bool, size_jitter: float) -> None:
        self.root, self.dataset, self.seed, self.size = Path(root), dataset, seed, size
        self.sensor_specs, self.scene_specs = sensors, scenes
        self.vary_size, self.size_jitter = vary_size, size_jitter
        self._ident: dict = {}
        self._scene: dict = {}
        self._sensor: dict = {}

    def identity(self, key: tuple[int, ...]):
        from vireid.data.synthetic.render import sample_identity

        if key not in self._ident:
            self._ident[key] = sample_identity(_rng(self.seed, self.dataset, _K_IDENT, *key))
        return self._ident[key]

    def scene(self, code: int):
        from vireid.data.synthetic.render import sample_scene

        if code not in self._scene:
            self._scene[code] = sample_scene(_rng(self.seed, self.dataset, _K_SCENE, code), self.scene_specs[code])
        return self._scene[code]

    def sensor(self, code: int):
        from vireid.data.synthetic.render import sample_sensor

        if code not in self._sensor:
            mod, style = self.sensor_specs[code]
            self._sensor[code] = sample_sensor(_rng(self.seed, self.dataset, _K_SENSOR, code), mod, style,
                                               vary_size=self.vary_size)
        return self._sensor[code]

    def render(self, job) -> list[tuple[str, Any, int]]:
        """Render one job to PIL images (relpath, image) without writing them."""
        from vireid.data.synthetic.render import rasterize, sample_view, to_ir, to_rgb

        ident = self.identity(job.ident)
        geom = self.sensor(job.sensor)
        size = (int(round(self.size[0] * geom.scale)), int(round(self.size[1] * geom.scale)))
        view_rng = _rng(self.seed, self.dataset, _K_VIEW, *job.view)
        view = sample_view(view_rng, ident, geom, size, size_jitter=self.size_jitter,
                           force_view=job.force_view, zoom=job.zoom)
        raster = rasterize(ident, view, self.scene(job.scene))
        out = []
        for i, o in enumerate(job.outputs):
            rng = _rng(self.seed, self.dataset, _K_PIXELS, *job.view, i)
            sensor = self.sensor(o.sensor)
            img = to_rgb(raster, view, sensor, rng) if o.modality == 0 else to_ir(raster, view, sensor, rng)
            out.append((o.relpath, img, sensor.quality))
        return out

    def write(self, job) -> int:
        for relpath, img, quality in self.render(job):
            path = self.root / relpath
            if relpath.endswith(".bmp"):
                img.save(path, format="BMP")
            else:
                img.save(path, format="JPEG", quality=quality)
        return len(job.outputs)


_WORKER: _Renderer | None = None


def _init_worker(args: tuple) -> None:
    global _WORKER
    _WORKER = _Renderer(*args)


def _write_chunk(jobs: list) -> int:
    assert _WORKER is not None
    return sum(_WORKER.write(j) for j in jobs)


# ----------------------------------------------------------------------------------------------------- the writer
def make_plan(dataset: str, ids: int | None = None, seed: int = 0, scale: str = "mini"):
    """Plan a synthetic layout without rendering: (canonical name, n_ids, Plan)."""
    from vireid.data.synthetic import layouts as L

    name = canonical_name(dataset)
    if scale not in ("mini", "full"):
        raise VireidError(f"scale {scale!r} is not allowed; use 'mini' or 'full'")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VireidError(f"seed {seed!r} is not allowed; use a non-negative integer")
    n = L.DEFAULT_IDS[name][scale] if ids is None else int(ids)
    if n < L.MIN_IDS[name]:
        raise VireidError(f"--ids {n} is too small for {name}; use at least {L.MIN_IDS[name]}")
    rng = _rng(seed, name, _K_LAYOUT)
    size = cast(L.Scale, scale)  # checked above
    if name == "sysu_mm01":
        plan = L.plan_sysu_mm01(rng, n, size, _rng(seed, name, _K_PERM))
    elif name == "regdb":
        def gender(pid: int) -> str:
            from vireid.data.synthetic.render import sample_identity

            return sample_identity(_rng(seed, name, _K_IDENT, pid)).gender
        plan = L.plan_regdb(rng, n, size, gender)
    elif name == "sysu_mm02":
        plan = L.plan_sysu_mm02(rng, n, size)
    elif name == "llcm":
        plan = L.plan_llcm(rng, n, size)
    else:
        plan = L.plan_market(rng, n, size, gen=name == "market1501_gen")
    return name, n, plan


def _summary(plan) -> dict[str, Any]:
    """Images per split, modality and camera (what `vireid synth` prints)."""
    out: dict[str, Any] = {}
    groups: dict[str, list] = defaultdict(list)
    for job in plan.jobs:
        for o in job.outputs:
            groups[job.split].append((job.pid, job.camid if o.camid is None else o.camid, o.modality))
    for split in sorted(groups):
        rows = groups[split]
        mods = Counter("rgb" if m == 0 else "ir" for _, _, m in rows)
        cams = Counter(f"{'rgb' if m == 0 else 'ir'}{c}" for _, c, m in rows)
        out[split] = {"images": len(rows), "identities": len({p for p, _, _ in rows if p > 0}),
                      "rgb": mods.get("rgb", 0), "ir": mods.get("ir", 0), "cameras": dict(sorted(cams.items()))}
    return out


def _check_target(root: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless it is a previous synthetic dataset and ``overwrite`` is set; then clear it.

    Only files listed in the old manifest are deleted (never anything the generator did not write).
    """
    if root.exists() and not root.is_dir():
        raise VireidError(f"{root}: exists and is not a folder; choose another --out")
    if not root.exists() or not any(root.iterdir()):
        return
    mpath = root / MANIFEST
    try:
        old = json.loads(mpath.read_text())
        ok = isinstance(old, dict) and old.get("generator") == GENERATOR
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise VireidError(f"{root}: folder is not empty and holds no synthetic dataset ({MANIFEST} missing); "
                          "choose an empty or new --out folder")
    if not overwrite:
        raise VireidError(f"{root}: already holds a synthetic dataset; pass --overwrite (overwrite=True) to replace it")
    ours = {MANIFEST, MANIFEST + ".tmp", *old.get("files", []), *(i[0] for i in old.get("images", []))}
    stray = [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in ours]
    if stray:
        raise VireidError(f"{root}: holds files the generator did not write (e.g. {stray[0].relative_to(root)}); "
                          "remove them or choose another --out")
    for rel in ours:
        (root / rel).unlink(missing_ok=True)
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def write_synthetic(
    dataset: str,
    out: str | Path,
    *,
    ids: int | None = None,
    seed: int = 0,
    scale: Literal["mini", "full"] = "mini",
    workers: int = 1,
    progress: bool = False,
    overwrite: bool = False,
    size: tuple[int, int] = (128, 64),
) -> SynthManifest:
    """Write a synthetic cross-modality dataset in the real layout of ``dataset`` with ``out`` as its root.

    Args:
        dataset: sysu_mm01, regdb, sysu_mm02, llcm, market1501, market1501_gen ('-' for '_', any case).
        out: the dataset root to create (must be empty/absent, or a previous synthetic dataset with ``overwrite``).
        ids: number of identities over all splits (default: a small demo size for mini, the real count for full).
        seed: the output is a pure function of (dataset, ids, seed, scale, size): byte-identical for any ``workers``.
        scale: ``mini`` (seconds) or ``full`` (real identity/camera/image counts; use ``workers``).
        workers: rendering processes.
        progress: show a tqdm progress bar.
        overwrite: replace a previous synthetic dataset in ``out``.
        size: nominal image size (H, W); SYSU-like layouts vary it per camera and image, RegDB/Market keep it.

    Returns the :class:`SynthManifest`, also written to ``out/synth_manifest.json`` (first with ``complete: false``
    before any image, so an interrupted run can be replaced with ``overwrite``).

    Example:
        >>> m = write_synthetic("sysu-mm01", "/tmp/SYSU-MM01", seed=0)   # doctest: +SKIP
        >>> len(m.splits["test_ids"])                                    # doctest: +SKIP
        12
    """
    name, n, plan = make_plan(dataset, ids, seed, scale)
    if workers < 1:
        raise VireidError(f"workers {workers} is not allowed; use 1 or more")
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 16:
        raise VireidError(f"size {size} is too small; use at least (32, 16)")
    root = Path(out)
    _check_target(root, overwrite)

    images = sorted(SynthImage(o.relpath, j.pid, j.camid if o.camid is None else o.camid, o.modality)
                    for j in plan.jobs for o in j.outputs)
    if len({i.relpath for i in images}) != len(images):  # a planning bug, never user input
        raise AssertionError("synthetic plan produced duplicate file names")
    files = sorted([*plan.text_files, *(rel for rel, _ in plan.writers)])
    manifest = SynthManifest(
        root=root, dataset=name, images=images, splits=plan.splits, trials=plan.trials,
        pseudo_labels=dict(sorted(plan.pseudo_labels.items())), files=files, seed=int(seed), scale=scale, ids=n,
        size=(h, w), info=plan.info, summary=_summary(plan), complete=False,
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(json.dumps(manifest.to_json()))
    for d in sorted({str(Path(rel).parent) for rel in [*(i.relpath for i in images), *files]}):
        (root / d).mkdir(parents=True, exist_ok=True)

    args = (str(root), name, int(seed), (h, w), plan.sensors, plan.scenes, plan.vary_size, plan.size_jitter)
    from tqdm import tqdm

    bar = tqdm(total=len(images), desc=f"synth {name}", unit="img", disable=not progress)
    chunk = 32
    chunks = [plan.jobs[i:i + chunk] for i in range(0, len(plan.jobs), chunk)]
    try:
        if workers == 1:
            _init_worker(args)
            for c in chunks:
                bar.update(_write_chunk(c))
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(args,)) as pool:
                for done in pool.imap_unordered(_write_chunk, chunks):
                    bar.update(done)
    finally:
        bar.close()

    for rel, text in plan.text_files.items():
        (root / rel).write_text(text, newline="")
    for rel, fn in plan.writers:
        fn(root / rel)
    manifest.complete = True
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json()))
    os.replace(tmp, root / MANIFEST)
    return manifest


def describe(manifest: SynthManifest) -> str:
    """One paragraph for humans: where, how many images per split, modality and camera."""
    parts = []
    for split, s in manifest.summary.items():
        cams = ", ".join(f"{k} {v}" for k, v in s["cameras"].items())
        parts.append(f"{split}: {s['images']} images of {s['identities']} ids ({s['rgb']} RGB / {s['ir']} IR; {cams})")
    files = manifest.files
    shown = ", ".join(files) if len(files) <= 6 else f"{len(files)} files ({', '.join(files[:2])}, ...)"
    return (f"Wrote synthetic {manifest.dataset} ({manifest.scale}, {manifest.ids} ids, seed {manifest.seed}) "
            f"to {manifest.root}: {len(manifest.images)} images. " + "; ".join(parts) + ". "
            f"List/metadata files: {shown or 'none'}; manifest: {MANIFEST}.")
