"""Protocols: query/gallery formation re-implemented independently here, metrics compared with the loop.

Features are built so that every distance is exact in float32 (unit vectors with 16 entries of +-0.25: dot products
are multiples of 1/16), so the reference here can recompute distances in float64 NumPy and still see exactly the
same order -- including the many exact ties, which exercises the stable tie order.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from vireid.errors import DataError, FeaturesError
from vireid.evaluation.features import FeatureSet, validate_features
from vireid.evaluation.protocols import (
    build_protocol,
    check_pool_paths,
    evaluate_protocol,
    load_rand_perm_cam,
    pool_from_samples,
)
from vireid.evaluation.reference import reference_metrics

SYSU_RGB = {"all": ["cam1", "cam2", "cam4", "cam5"], "indoor": ["cam1", "cam2"]}


# ---------------------------------------------------------------------------------------------------------------
# pools shaped like each dataset's test set


def exact_features(n: int, rng: np.random.Generator, dim: int = 32) -> np.ndarray:
    f = np.zeros((n, dim), np.float32)
    for i in range(n):
        pos = rng.choice(dim, 16, replace=False)
        f[i, pos] = rng.choice([-0.25, 0.25], 16)
    return f


def make_pool(rows: list[tuple[str, int, int, int]], seed: int = 0, source: str = "test.npz") -> FeatureSet:
    """rows = (path, pid, camid, modality); shuffled so the row order of the "file" is arbitrary."""
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return validate_features(exact_features(len(rows), rng), [r[1] for r in rows], [r[2] for r in rows],
                             [r[3] for r in rows], np.array([r[0] for r in rows]), source=source)


def sysu_rows(seed: int = 0, ids=(1, 3, 5, 8, 12, 20, 33, 41)) -> list[tuple[str, int, int, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    for pid in ids:
        for cam in range(1, 7):
            n = int(rng.integers(0, 6))  # 0 = the (cam, id) folder does not exist
            frames = sorted(rng.choice(np.arange(1, 60), n, replace=False).tolist())
            for f in frames:
                rows.append((f"cam{cam}/{pid:04d}/{f:04d}.jpg", pid, cam, 1 if cam in (3, 6) else 0))
    return rows


def llcm_rows(seed: int = 0, ids=(2, 7, 9, 15, 40, 101)) -> list[tuple[str, int, int, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    for pid in ids:
        for mod, folder, cams in ((0, "test_vis", range(1, 10)), (1, "test_nir", (1, 2, 4, 5, 6, 7, 8, 9))):
            for cam in cams:
                for k in range(int(rng.integers(0, 4))):
                    rows.append((f"{folder}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_{k:04d}.jpg", pid, cam, mod))
    return rows


def regdb_rows(seed: int = 0, n_ids: int = 12) -> list[tuple[str, int, int, int]]:
    rng = np.random.default_rng(seed)
    ids = sorted(rng.choice(np.arange(1, 413), n_ids, replace=False).tolist())
    rows = []
    for label, pid in enumerate(ids):
        for k in range(10):
            rows.append((f"Visible/{pid}/male_front_v_{k:05d}_{pid}.bmp", label, 1, 0))
            rows.append((f"Thermal/{pid}/male_front_t_{k:05d}_{pid}.bmp", label, 2, 1))
    return rows


def mm02_rows(seed: int = 0, n_ids: int = 10) -> list[tuple[str, int, int, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(1, n_ids + 1):
        for cam in (1, 2, 3):
            for k in range(int(rng.integers(1, 6))):
                rows.append((f"test/cam{cam}/{pid:04d}_{k:04d}.jpg", pid, cam, 0 if cam == 1 else 1))
    return rows


def write_tree(root: Path, rows) -> None:
    for path, *_ in rows:
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def exact_dist(fs: FeatureSet, q: np.ndarray, g: np.ndarray) -> np.ndarray:
    f = fs.features.astype(np.float64)
    return np.sqrt(np.maximum(2.0 - 2.0 * f[q] @ f[g].T, 0.0))


def row_of(fs: FeatureSet) -> dict[str, int]:
    return {p: i for i, p in enumerate(fs.paths.tolist())}


def assert_same(result, ref) -> None:
    np.testing.assert_allclose(result.cmc * 100, ref["cmc"] * 100, atol=1e-4)
    assert result.mAP * 100 == pytest.approx(ref["mAP"] * 100, abs=1e-4)
    assert result.mINP * 100 == pytest.approx(ref["mINP"] * 100, abs=1e-4)
    assert result.num_valid == ref["num_valid"]


# ---------------------------------------------------------------------------------------------------------------
# independent re-implementations of the published galleries (the AGW data_manager procedure, from SPEC 2.1)


def agw_sysu_lists(root: Path, mode: str, trial: int) -> tuple[list[str], list[str]]:
    ids = sorted({int(d) for c in os.listdir(root) if c.startswith("cam") for d in os.listdir(root / c)})
    ids = [f"{x:04d}" for x in ids]
    query = []
    for pid in sorted(ids):
        for cam in ["cam3", "cam6"]:
            d = root / cam / pid
            if d.is_dir():
                query.extend(sorted(f"{cam}/{pid}/{f}" for f in os.listdir(d)))
    random.seed(trial)
    gallery = []
    for pid in sorted(ids):
        for cam in SYSU_RGB[mode]:
            d = root / cam / pid
            if d.is_dir():
                files = sorted(f"{cam}/{pid}/{f}" for f in os.listdir(d))
                gallery.append(random.choice(files))
    return query, gallery


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_sysu_galleries_match_independent_draw(tmp_path, mode):
    rows = sysu_rows(1)
    write_tree(tmp_path, rows)
    fs = make_pool(rows, seed=1)
    plan = build_protocol("sysu", fs, mode=mode, trials=10, dataset_root=tmp_path)
    assert plan.cmc == "identity" and plan.invalid_query_quirk and plan.direction == "i2v"
    for t in range(10):
        q, g = agw_sysu_lists(tmp_path, mode, t)
        assert fs.paths[plan.trials[t].query].tolist() == q
        assert fs.paths[plan.trials[t].gallery].tolist() == g
    # galleries differ between trials (otherwise the seed is not used)
    assert len({tuple(t.gallery.tolist()) for t in plan.trials}) > 1


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_sysu_metrics_against_reference(mode):
    fs = make_pool(sysu_rows(2), seed=2)
    plan = build_protocol("sysu", fs, mode=mode, trials=10)
    res = evaluate_protocol(fs.features, plan, memory_budget_mb=0.05)
    rows = row_of(fs)
    root_ids = sorted(set(fs.pids.tolist()))
    for t, r in enumerate(res.per_trial):
        random.seed(t)
        g = []
        for pid in root_ids:
            for cam in SYSU_RGB[mode]:
                files = sorted(p for p in rows if p.startswith(f"{cam}/{pid:04d}/"))
                if files:
                    g.append(rows[random.choice(files)])
        q = [rows[p] for pid in root_ids for cam in ("cam3", "cam6")
             for p in sorted(p for p in rows if p.startswith(f"{cam}/{pid:04d}/"))]
        q, g = np.array(q), np.array(g)
        qk = np.where(fs.camids[q] == 3, 100, -1)  # cam3 queries lose every cam2 gallery image
        gk = np.where(fs.camids[g] == 2, 100, -7)
        ref = reference_metrics(exact_dist(fs, q, g), fs.pids[q], fs.pids[g], qk, gk, cmc="identity",
                                invalid_query_quirk=True)
        assert_same(r, ref)
        assert r.num_gallery == len(g)


def rand_perm_mat(path: Path, fs: FeatureSet, runs: int = 10, seed: int = 0, matlab_shape: bool = False) -> dict:
    """Write rand_perm_cam.mat in the documented structure; return {(cam, pid): [runs, n] 1-based perms}."""
    rng = np.random.default_rng(seed)
    max_pid = int(fs.pids.max())
    cams = np.empty((6, 1), dtype=object)
    perms = {}
    for cam in range(1, 7):
        persons = np.empty((1, max_pid), dtype=object)
        for pid in range(1, max_pid + 1):
            n = int(((fs.camids == cam) & (fs.pids == pid)).sum())
            if n == 0:
                persons[0, pid - 1] = np.zeros((0, 0))
            else:
                p = np.stack([rng.permutation(n) + 1 for _ in range(runs)]).astype(np.float64)
                persons[0, pid - 1] = p
                perms[(cam, pid)] = p
        cams[cam - 1, 0] = persons
    if matlab_shape:
        cams = cams.reshape(1, 6)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"rand_perm_cam": cams})
    return perms


@pytest.mark.parametrize("mode,shots", [("all", 1), ("all", 10), ("indoor", 1), ("indoor", 10)])
def test_sysu_official_against_reference(tmp_path, mode, shots):
    fs = make_pool(sysu_rows(3), seed=3)
    perms = rand_perm_mat(tmp_path / "exp" / "rand_perm_cam.mat", fs, matlab_shape=(shots == 10))
    plan = build_protocol("sysu-official", fs, mode=mode, shots=shots, trials=10, dataset_root=tmp_path)
    res = evaluate_protocol(fs.features, plan)
    rows = row_of(fs)
    ids = sorted(set(fs.pids.tolist()))
    loc = {1: 1, 2: 2, 3: 2, 4: 4, 5: 5, 6: 6}
    for r, result in enumerate(res.per_trial):
        g = []
        for cam in (1, 2, 4, 5) if mode == "all" else (1, 2):
            for pid in ids:
                if (cam, pid) not in perms:
                    continue
                names = sorted(p for p in rows if p.startswith(f"cam{cam}/{pid:04d}/"))
                g.extend(rows[names[int(i) - 1]] for i in perms[(cam, pid)][r, :shots])
        q = np.nonzero(np.isin(fs.camids, (3, 6)))[0]
        g = np.array(g)
        assert sorted(plan.trials[r].gallery.tolist()) == sorted(g.tolist())
        qk = np.array([loc[c] for c in fs.camids[q]])
        gk = np.array([loc[c] for c in fs.camids[g]])
        ref = reference_metrics(exact_dist(fs, q, plan.trials[r].gallery), fs.pids[q],
                                fs.pids[plan.trials[r].gallery], qk,
                                np.array([loc[c] for c in fs.camids[plan.trials[r].gallery]]), cmc="identity")
        assert_same(result, ref)
        assert result.num_gallery == len(g)
        del gk


def test_sysu_official_multishot_union_path(tmp_path, monkeypatch):
    # folders of 11-16 RGB images: the 10-shot galleries of the 10 runs differ and overlap, the case the union path
    # (one sort of each query's union row for all runs) is for. Exact features: many distance ties across
    # identities, broken in each run's own gallery order. Every run is compared with the loop.
    from vireid.evaluation import metrics

    rng = np.random.default_rng(11)
    rows = []
    for pid in (1, 3, 5, 8, 12, 20):
        for cam in range(1, 7):
            n = int(rng.integers(1, 4)) if cam in (3, 6) else int(rng.integers(11, 17)) * int(rng.random() < 0.8)
            rows += [(f"cam{cam}/{pid:04d}/{f:04d}.jpg", pid, cam, 1 if cam in (3, 6) else 0) for f in range(1, n + 1)]
    fs = make_pool(rows, seed=11)
    rand_perm_mat(tmp_path / "exp" / "rand_perm_cam.mat", fs, seed=11)
    plan = build_protocol("sysu-official", fs, mode="all", shots=10, trials=10, dataset_root=tmp_path)
    per_trial = evaluate_protocol(fs.features, plan, trial_method="per-trial")

    def boom(*args, **kwargs):
        raise AssertionError("the union path fell back to per-trial evaluation")

    monkeypatch.setattr(metrics, "_per_trial", boom)
    union = evaluate_protocol(fs.features, plan, trial_method="union")
    loc = {1: 1, 2: 2, 3: 2, 4: 4, 5: 5, 6: 6}
    galleries = {tuple(sorted(t.gallery.tolist())) for t in plan.trials}
    assert len(galleries) == 10  # the runs' galleries differ
    for trial, r, p in zip(plan.trials, union.per_trial, per_trial.per_trial):
        q, g = trial.query, trial.gallery
        ref = reference_metrics(exact_dist(fs, q, g), fs.pids[q], fs.pids[g], np.array([loc[c] for c in fs.camids[q]]),
                                np.array([loc[c] for c in fs.camids[g]]), cmc="identity")
        assert_same(r, ref)
        np.testing.assert_array_equal(r.rank, ref["rank"])
        np.testing.assert_allclose(r.ap, ref["ap"], equal_nan=True, atol=1e-12)
        np.testing.assert_array_equal(r.rank, p.rank)
    assert union.summary()["mAP"] == pytest.approx(per_trial.summary()["mAP"], abs=1e-12)


def test_sysu_official_errors(tmp_path):
    fs = make_pool(sysu_rows(3), seed=3)
    with pytest.raises(DataError, match="rand_perm_cam.mat: not found"):
        build_protocol("sysu-official", fs, dataset_root=tmp_path)
    with pytest.raises(DataError, match="--dataset-root"):
        build_protocol("sysu-official", fs)
    # a pool missing one image of a folder cannot be indexed by the permutations
    rand_perm_mat(tmp_path / "exp" / "rand_perm_cam.mat", fs)
    keep = np.ones(len(fs), bool)
    keep[np.nonzero(fs.camids == 1)[0][0]] = False
    with pytest.raises(FeaturesError, match="whole test pool"):
        build_protocol("sysu-official", fs.subset(keep), dataset_root=tmp_path)


def test_load_rand_perm_cam_structure(tmp_path):
    fs = make_pool(sysu_rows(4), seed=4)
    perms = rand_perm_mat(tmp_path / "r.mat", fs)
    loaded = load_rand_perm_cam(tmp_path / "r.mat")
    assert len(loaded) == 6
    for (cam, pid), p in perms.items():
        np.testing.assert_array_equal(loaded[cam - 1][pid - 1], p)


@pytest.mark.parametrize("direction", ["v2i", "i2v"])
def test_llcm_against_reference(tmp_path, direction):
    rows_ = llcm_rows(5)
    write_tree(tmp_path, rows_)
    fs = make_pool(rows_, seed=5)
    plan = build_protocol("llcm", fs, direction=direction, trials=10, dataset_root=tmp_path)
    res = evaluate_protocol(fs.features, plan)
    rows = row_of(fs)
    qmod = "vis" if direction == "v2i" else "nir"
    gmod = "nir" if direction == "v2i" else "vis"
    ids = sorted(set(fs.pids.tolist()))
    q = np.array(sorted(rows[p] for p in rows if p.startswith(f"test_{qmod}/")))
    for t, result in enumerate(res.per_trial):
        random.seed(t)
        g = []
        for pid in [f"{x:04d}" for x in ids]:
            for cam in range(1, 10):
                d = tmp_path / f"test_{gmod}" / f"cam{cam}" / pid
                if d.is_dir():
                    g.append(rows[random.choice(sorted(f"test_{gmod}/cam{cam}/{pid}/{f}" for f in os.listdir(d)))])
        g = np.array(g)
        assert plan.trials[t].gallery.tolist() == g.tolist()
        assert sorted(plan.trials[t].query.tolist()) == q.tolist()
        qk = fs.pids[q] * 100 + fs.camids[q]  # same pid and same camera removed
        gk = fs.pids[g] * 100 + fs.camids[g]
        qq = plan.trials[t].query
        ref = reference_metrics(exact_dist(fs, qq, g), fs.pids[qq], fs.pids[g], fs.pids[qq] * 100 + fs.camids[qq],
                                gk, cmc="identity")
        assert_same(result, ref)
        del qk


@pytest.mark.parametrize("direction", ["v2i", "i2v"])
def test_regdb_against_reference(direction):
    fs = make_pool(regdb_rows(6), seed=6)
    plan = build_protocol("regdb", fs, direction=direction)
    assert plan.cmc == "standard" and len(plan.trials) == 1
    res = evaluate_protocol(fs.features, plan)
    vis, ir = np.nonzero(fs.modalities == 0)[0], np.nonzero(fs.modalities == 1)[0]
    q, g = (vis, ir) if direction == "v2i" else (ir, vis)
    assert plan.trials[0].query.tolist() == q.tolist() and plan.trials[0].gallery.tolist() == g.tolist()
    ref = reference_metrics(exact_dist(fs, q, g), fs.pids[q], fs.pids[g], cmc="standard")
    assert_same(res.per_trial[0], ref)
    assert res.per_trial[0].num_query == 120 and res.per_trial[0].num_gallery == 120


@pytest.mark.parametrize("direction", ["v2i", "i2v"])
def test_sysu_mm02_against_reference(direction):
    fs = make_pool(mm02_rows(7), seed=7)
    plan = build_protocol("sysu-mm02", fs, direction=direction)
    res = evaluate_protocol(fs.features, plan)
    rgb, nir = np.nonzero(fs.camids == 1)[0], np.nonzero(fs.camids != 1)[0]
    q, g = (rgb, nir) if direction == "v2i" else (nir, rgb)
    ref = reference_metrics(exact_dist(fs, q, g), fs.pids[q], fs.pids[g], fs.pids[q] * 10 + fs.camids[q],
                            fs.pids[g] * 10 + fs.camids[g], cmc="identity")
    assert_same(res.per_trial[0], ref)


def test_row_order_does_not_matter():
    rows = sysu_rows(8)
    a, b = make_pool(rows, seed=8), make_pool(rows[::-1], seed=8)
    # same features per path, different file order
    rng = np.random.default_rng(0)
    feats = {p: f for p, f in zip(a.paths.tolist(), exact_features(len(a), rng))}
    fa = np.stack([feats[p] for p in a.paths.tolist()])
    fb = np.stack([feats[p] for p in b.paths.tolist()])
    perm = np.random.default_rng(1).permutation(len(b))
    b2 = validate_features(fb[perm], b.pids[perm], b.camids[perm], b.modalities[perm], b.paths[perm])
    ra = evaluate_protocol(fa, build_protocol("sysu", a)).summary()
    rb = evaluate_protocol(b2.features, build_protocol("sysu", b2)).summary()
    assert ra["rank1"] == rb["rank1"] and ra["mAP"] == rb["mAP"] and ra["cmc"] == rb["cmc"]


def test_pool_from_samples_and_records():
    from vireid.data.records import Sample

    samples = [Sample(p, pid, cam, mod) for p, pid, cam, mod in regdb_rows(9, n_ids=3)]
    pool = pool_from_samples(samples)
    plan = build_protocol("regdb", pool)
    assert len(plan.trials[0].query) == 30


@pytest.mark.parametrize("protocol,rows_fn,msg", [
    ("sysu", regdb_rows, "is not a SYSU-MM01 test image path"),
    ("regdb", sysu_rows, "is not a RegDB test image path"),
    ("llcm", mm02_rows, "is not a LLCM test image path"),
    ("sysu-mm02", llcm_rows, "is not a SYSU-MM02 test image path"),
])
def test_paths_of_another_dataset_are_refused(protocol, rows_fn, msg):
    fs = make_pool(rows_fn(0), seed=0)
    with pytest.raises(FeaturesError, match=msg):
        check_pool_paths(fs, protocol)


def test_inconsistent_columns_are_refused():
    rows = [(p, pid, cam + 1 if i == 0 else cam, mod) for i, (p, pid, cam, mod) in enumerate(sysu_rows(0))]
    fs = make_pool(rows)
    with pytest.raises(FeaturesError, match="camids' says"):
        check_pool_paths(fs, "sysu")
    rows = [(p, pid + 1, cam, mod) for p, pid, cam, mod in sysu_rows(0)]
    with pytest.raises(FeaturesError, match="SYSU-MM01 pids are the folder numbers"):
        check_pool_paths(make_pool(rows), "sysu")


def test_incomplete_pool_is_refused_with_dataset_root(tmp_path):
    rows = sysu_rows(1)
    write_tree(tmp_path, rows)
    fs = make_pool(rows[1:], seed=1)
    with pytest.raises(FeaturesError, match="has no row"):
        build_protocol("sysu", fs, dataset_root=tmp_path)


def test_test_ids_from_dataset_root(tmp_path):
    rows = sysu_rows(1)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "test_id.txt").write_text("1,3,5")
    fs = make_pool(rows, seed=1)
    plan = build_protocol("sysu", fs, dataset_root=tmp_path)
    assert set(fs.pids[plan.trials[0].query].tolist()) <= {1, 3, 5}
    assert set(fs.pids[plan.trials[0].gallery].tolist()) <= {1, 3, 5}
