"""``vireid search``: exact top-K (faiss and torch) equals a brute-force ranking with ties by gallery row; the CLI
ranks the probe's own image first, writes the documented JSON and picture; bad inputs are one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import vireid.inference.search as search_mod
from test_extract import copy_ids, one_line_error, reference_features, run_cli, tiny_checkpoint
from vireid.checkpoints import load_trained_model
from vireid.inference.search import search


def brute_force(q: np.ndarray, g: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 normalise, every distance, sort by (distance, gallery row)."""
    qn = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    gn = g / np.linalg.norm(g.astype(np.float64), axis=1, keepdims=True)
    d = np.sqrt(((qn[:, None, :] - gn[None, :, :]) ** 2).sum(-1))
    cols = np.broadcast_to(np.arange(g.shape[0]), d.shape)
    order = np.lexsort((cols, d), axis=1)[:, :top]
    return order, np.take_along_axis(d, order, axis=1)


@pytest.fixture(scope="module")
def tied_gallery():
    """Clustered features with exact duplicates (ties) and un-normalised rows; probes include a duplicated row."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(12, 16))
    g = (centers[rng.integers(0, 12, 300)] + 0.3 * rng.normal(size=(300, 16))).astype(np.float32)
    g *= rng.uniform(0.5, 3.0, size=(300, 1)).astype(np.float32)  # scale does not matter: features are normalised
    for j in (10, 50, 51, 299):
        g[j] = g[3] * 2.0
    g[100:140] = g[99]  # 41 identical rows: more ties than the first candidate pass fetches
    q = (centers[rng.integers(0, 12, 6)] + 0.3 * rng.normal(size=(6, 16))).astype(np.float32)
    q = np.concatenate([q, g[3:4], g[99:100] * 0.5]).astype(np.float32)
    return q, g


@pytest.mark.parametrize("use_faiss", [True, False])
@pytest.mark.parametrize("top", [1, 5, 12, 300, 500])
def test_exact_equals_brute_force_with_stable_ties(tied_gallery, use_faiss, top):
    q, g = tied_gallery
    res = search(q, g, top, use_faiss=use_faiss)
    rows, dist = brute_force(q, g, min(top, len(g)))
    np.testing.assert_array_equal(res.rows, rows)
    np.testing.assert_allclose(res.distances, dist, rtol=0, atol=1e-12)
    assert res.backend == ("faiss-flat" if use_faiss else "torch") and res.index == "exact"
    if top >= 12:
        assert list(res.rows[6, :5]) == [3, 10, 50, 51, 299]  # five identical rows at distance 0, by row
        assert list(res.rows[7, :12]) == list(range(99, 111))  # 42 identical rows: the lowest rows first


def test_missing_faiss_falls_back_to_torch(tied_gallery, monkeypatch):
    q, g = tied_gallery
    monkeypatch.setattr(search_mod, "_faiss", lambda: None)
    res = search(q, g, 12)
    assert res.backend == "torch"
    np.testing.assert_array_equal(res.rows, brute_force(q, g, 12)[0])
    ivf = search(q, g, 12, index="ivf")  # no faiss: the exact search answers
    assert ivf.backend == "torch" and ivf.index == "exact"
    np.testing.assert_array_equal(ivf.rows, res.rows)


def test_ivf(tied_gallery):
    q, g = tied_gallery
    full = search(q, g, 8, index="ivf", nlist=4, nprobe=4)  # every cluster scanned: exact
    assert full.backend == "faiss-ivf" and full.params == {"nlist": 4, "nprobe": 4}
    np.testing.assert_array_equal(full.rows, brute_force(q, g, 8)[0])
    approx = search(q, g, 8, index="ivf", nlist=4, nprobe=1)
    _, exact_d = brute_force(q, g, len(g))
    for i in range(len(q)):
        ok = approx.rows[i] >= 0
        d = approx.distances[i, ok]
        assert (np.diff(d) >= 0).all()  # sorted
        assert (d >= exact_d[i, :ok.sum()] - 1e-12).all()  # never better than the exact k-th neighbours
        gn = g[approx.rows[i, ok]].astype(np.float64)
        gn /= np.linalg.norm(gn, axis=1, keepdims=True)
        qn = q[i] / np.linalg.norm(q[i].astype(np.float64))
        np.testing.assert_allclose(d, np.linalg.norm(gn - qn, axis=1), atol=1e-12)  # true distances


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ckpt, sysu = tiny_checkpoint(tmp_path_factory)
    dest = tmp_path_factory.mktemp("gallery") / "SYSU-MM01"
    rels = copy_ids(sysu, dest, [5, 8])
    probe_in = dest / next(r for r in rels if r.startswith("cam3/0005/"))  # in the gallery
    probe_other = sorted((sysu / "cam3" / "0007").glob("*.jpg"))[0]  # identity 7: not in the gallery
    return ckpt, dest, rels, [probe_in, probe_other]


@pytest.mark.slow
def test_cli_search_folder_and_features_file(setup, tmp_path, capsys):
    ckpt, gallery, rels, probes = setup
    out = tmp_path / "hits"
    code, stdout, err = run_cli(["search", ckpt, "--probe", *probes, "--gallery", gallery, "--gallery-modality",
                                 "auto", "--top", 5, "--out", out, "--batch-size", 8], capsys)
    assert code == 0, err
    report = json.loads((out / "results.json").read_text())
    assert set(report) == {"model", "gallery", "index", "distance", "top", "probes"}
    assert report["top"] == 5 and report["gallery"]["size"] == len(rels)
    assert report["index"]["kind"] == "exact" and report["index"]["backend"] == "faiss-flat"
    assert report["model"]["checkpoint"] == str(ckpt) and report["model"]["input_size"] == [64, 32]
    ir = sum(r.split("/")[0] in ("cam3", "cam6") for r in rels)
    assert report["gallery"]["modalities"] == {"rgb": len(rels) - ir, "ir": ir}
    p0, p1 = report["probes"]
    assert p0["path"] == str(probes[0]) and p0["modality"] == "ir" and p0["pid"] == 5 and p0["camid"] == 3
    first = p0["matches"][0]
    assert first["path"] == probes[0].relative_to(gallery).as_posix()  # the probe itself ranks first
    assert first["distance"] < 1e-5 and first["pid"] == 5 and first["same_identity"] is True
    assert first["rank"] == 1 and first["modality"] == "ir"
    assert p1["pid"] == 7 and all(m["same_identity"] is False for m in p1["matches"])
    assert {"rank", "gallery_row", "path", "distance", "pid", "camid", "modality", "same_identity"} == set(first)

    # ranking = brute force over the library's own features of the same images
    truth = np.array([r.split("/")[0] in ("cam3", "cam6") for r in rels], np.int64)
    gf = reference_features(ckpt, gallery, rels, truth, 8, tmp_path / "cache")
    pdir = tmp_path / "probes"
    pdir.mkdir()
    prel = []
    for i, p in enumerate(probes):
        shutil.copy2(p, pdir / f"{i}.jpg")
        prel.append(f"{i}.jpg")
    qf = reference_features(ckpt, pdir, prel, np.ones(2, np.int64), 8, tmp_path / "cache")
    rows, dist = brute_force(qf, gf, 5)
    for i, p in enumerate(report["probes"]):
        assert [m["path"] for m in p["matches"]] == [rels[j] for j in rows[i]]
        np.testing.assert_allclose([m["distance"] for m in p["matches"]], dist[i], atol=1e-5)
    assert "rank" in stdout and rels[rows[0][0]] in stdout

    png = Image.open(out / "ranked.png")
    assert png.size == (int(1.1 * 6 * 80), int(2.2 * 2 * 80))  # (top + 1) tiles x probes rows, 80 dpi

    # the same gallery as a features file (vireid extract) gives the same answer
    npz = tmp_path / "gallery.npz"
    code, _, err = run_cli(["extract", ckpt, "--images", gallery, "--modality", "auto", "--out", npz,
                            "--batch-size", 8], capsys)
    assert code == 0, err
    out2 = tmp_path / "hits2"
    code, _, err = run_cli(["search", ckpt, "--probe", *probes, "--gallery", npz, "--top", 5, "--out", out2],
                           capsys)
    assert code == 0, err
    again = json.loads((out2 / "results.json").read_text())
    for a, b in zip(report["probes"], again["probes"]):
        assert [m["path"] for m in a["matches"]] == [m["path"] for m in b["matches"]]
        np.testing.assert_allclose([m["distance"] for m in a["matches"]], [m["distance"] for m in b["matches"]],
                                   atol=1e-6)
    assert (out2 / "ranked.png").is_file()


def test_cli_features_file_without_images_and_torch_fallback(setup, tmp_path, capsys, monkeypatch):
    ckpt, _, _, probes = setup
    model, _, _ = load_trained_model(ckpt)
    rng = np.random.default_rng(0)
    n = 20
    npz = tmp_path / "far_away" / "g.npz"
    npz.parent.mkdir()
    np.savez(npz, features=rng.normal(size=(n, model.feature_dim)).astype(np.float32),
             pids=np.arange(n), camids=np.ones(n, np.int64), modalities=np.zeros(n, np.int64),
             paths=np.array([f"x/{i:03d}.jpg" for i in range(n)]))
    monkeypatch.setattr(search_mod, "_faiss", lambda: None)
    out = tmp_path / "o"
    code, _, err = run_cli(["search", ckpt, "--probe", probes[0], "--probe-modality", "AUTO", "--gallery", npz,
                            "--top", 3, "--out", out], capsys)
    assert code == 0, err
    assert "vireid: warning: no picture" in err and "--gallery-root" in err
    report = json.loads((out / "results.json").read_text())
    assert report["index"]["backend"] == "torch"
    assert report["probes"][0]["modality"] == "ir" and report["probes"][0]["modality_auto_score"] < 4.0
    assert [m["rank"] for m in report["probes"][0]["matches"]] == [1, 2, 3]
    assert not (out / "ranked.png").exists()


def test_cli_bad_inputs(setup, tmp_path, capsys):
    ckpt, gallery, _, probes = setup
    out = tmp_path / "o"
    wrong = tmp_path / "wrong_dim.npz"
    np.savez(wrong, features=np.ones((3, 7), np.float32), pids=np.arange(3), camids=np.ones(3, np.int64),
             modalities=np.zeros(3, np.int64), paths=np.array(["a.jpg", "b.jpg", "c.jpg"]))
    line = one_line_error(*run_cli(["search", ckpt, "--probe", probes[0], "--gallery", wrong, "--out", out],
                                   capsys)[::2])
    assert "wrong_dim.npz" in line and "dimension 7" in line

    empty = tmp_path / "empty_gallery"
    empty.mkdir()
    line = one_line_error(*run_cli(["search", ckpt, "--probe", probes[0], "--gallery", empty, "--out", out],
                                   capsys)[::2])
    assert "no images" in line

    line = one_line_error(*run_cli(["search", ckpt, "--probe", probes[0], "--gallery", gallery,
                                    "--probe-modality", "nir", "--out", out], capsys)[::2])
    assert "--probe-modality 'nir'" in line

    line = one_line_error(*run_cli(["search", ckpt, "--probe", probes[0], "--gallery", gallery, "--index", "hnsw",
                                    "--out", out], capsys)[::2])
    assert "--index 'hnsw'" in line

    fake = tmp_path / "fake_probe.jpg"
    fake.write_bytes(b"\x00not a jpeg")
    line = one_line_error(*run_cli(["search", ckpt, "--probe", fake, "--gallery", gallery, "--out", out],
                                   capsys)[::2])
    assert "fake_probe.jpg" in line and "cannot decode" in line  # probes are embedded first: fails fast
    assert not (out / "results.json").exists()
