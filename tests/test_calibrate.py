"""``vireid calibrate``: thresholds, TAR/FAR and EER equal a hand-computed case and an independent sklearn ROC;
chunking does not change anything; the CLI writes JSON + plot; bad inputs are one-line errors (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_curve

from test_extract import one_line_error, run_cli
from vireid.inference.calibrate import calibrate


def hand_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two visible rows on the axes, four IR rows: every cosine is one IR coordinate (exact, ties exact).

    v1 = (1, 0) pid 1, v2 = (0, 1) pid 2; IR: (1, .1) pid 1, (1, 1.2) pid 1, (.1, 1) pid 2, (1.2, 1) pid 3.
    With n1 = |(1, .1)|, n2 = |(1, 1.2)| the cosines are A = 1/n1 (genuine x2), B = 1.2/n2 (impostor x2),
    C = 1/n2 (one genuine, one impostor), E = .1/n1 (impostor x2); distance sqrt(2 - 2 cos): A < B < C < E.
    """
    feats = np.array([[1, 0], [0, 1], [1, .1], [1, 1.2], [.1, 1], [1.2, 1]], np.float32)
    pids = np.array([1, 2, 1, 1, 2, 3])
    mods = np.array([0, 0, 1, 1, 1, 1])
    return feats, pids, mods


def test_hand_computed_case():
    feats, pids, mods = hand_case()
    f = feats.astype(np.float64)
    n1, n2 = np.linalg.norm(f[2]), np.linalg.norm(f[3])
    d = {k: np.sqrt(2 - 2 * c) for k, c in
         {"A": f[2, 0] / n1, "B": f[3, 1] / n2, "C": f[3, 0] / n2, "E": f[2, 1] / n1}.items()}
    assert d["A"] < d["B"] < d["C"] < d["E"]
    cal = calibrate(feats, pids, mods, [0.1, 0.2, 0.5, 0.7])
    assert (cal.num_genuine, cal.num_impostor, cal.num_visible, cal.num_infrared) == (3, 5, 2, 4)
    assert cal.num_identities == 2
    # impostors sorted: B B C E E. k = floor(far * 5); threshold just below the (k+1)-th impostor
    expect = [  # far, limit, impostors accepted, genuine accepted, resolvable
        (0.1, d["B"], 0, 2, False),  # k = 0: below every impostor
        (0.2, d["B"], 0, 2, True),   # k = 1 but the 2nd impostor ties the 1st: none may be accepted
        (0.5, d["C"], 2, 2, True),   # k = 2: accept B B; the genuine pair at C ties an impostor: left out
        (0.7, d["E"], 3, 3, True),   # k = 3: accept B B C and every genuine pair
    ]
    for p, (far, limit, n_imp, n_gen, ok) in zip(cal.points, expect):
        assert p.far_requested == far
        assert p.threshold < limit and p.threshold == pytest.approx(limit, abs=1e-12)
        assert (p.impostors_accepted, p.genuine_accepted, p.resolvable) == (n_imp, n_gen, ok)
        assert p.far == n_imp / 5 <= far and p.tar == n_gen / 3
    # EER = min over t of max(FAR, FRR): t = A gives FAR 0, FRR 1/3; t = C gives FAR 3/5, FRR 0
    assert cal.eer == pytest.approx(1 / 3) and cal.eer_threshold == pytest.approx(d["A"], abs=1e-12)
    assert (cal.eer_far, cal.eer_frr) == (0.0, pytest.approx(1 / 3))
    np.testing.assert_allclose(cal.roc_threshold, [d["A"], d["C"]], atol=1e-12)
    np.testing.assert_allclose(cal.roc_far, [0.0, 3 / 5])
    np.testing.assert_allclose(cal.roc_tar, [2 / 3, 1.0])
    assert cal.genuine_mean == pytest.approx((2 * d["A"] + d["C"]) / 3)
    assert cal.impostor_mean == pytest.approx((2 * d["B"] + d["C"] + 2 * d["E"]) / 5)
    assert cal.hist_genuine.sum() == 3 and cal.hist_impostor.sum() == 5


def random_file(seed: int = 0, ids: int = 40, n_v: int = 3, n_i: int = 2, dim: int = 8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, dim))
    pv = np.repeat(np.arange(ids), n_v)
    pi = np.repeat(np.arange(ids), n_i)
    pi = pi[pi % 7 != 0]  # some identities only in the visible rows
    extra = np.array([1000, 1001])  # impostor-only IR identities
    pi = np.concatenate([pi, extra])
    cent_i = np.concatenate([centers[pi[:-2]], rng.normal(size=(2, dim))])
    fv = centers[pv] + 0.9 * rng.normal(size=(len(pv), dim))
    fi = cent_i + 0.9 * rng.normal(size=(len(pi), dim))
    feats = np.concatenate([fv, fi]).astype(np.float32)
    pids = np.concatenate([pv, pi])
    mods = np.concatenate([np.zeros(len(pv), np.int64), np.ones(len(pi), np.int64)])
    perm = rng.permutation(len(pids))
    return feats[perm], pids[perm], mods[perm]


def test_equals_independent_sklearn_roc():
    feats, pids, mods = random_file()
    fars = [3e-4, 1e-3, 1e-2, 0.05, 0.3]
    cal = calibrate(feats, pids, mods, fars)
    f = feats.astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    d = cdist(f[mods == 0], f[mods == 1])
    same = pids[mods == 0][:, None] == pids[mods == 1][None, :]
    y, score = same.ravel().astype(int), -d.ravel()
    assert (cal.num_genuine, cal.num_impostor) == (int(y.sum()), int((1 - y).sum()))
    assert len(np.unique(score)) == len(score)  # no ties: sklearn's points are one per pair
    fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
    for far, p in zip(fars, cal.points):
        i = np.flatnonzero(fpr <= far)[-1]  # best operating point whose FAR stays within the request
        assert p.far == pytest.approx(fpr[i], abs=1e-15) and p.tar == pytest.approx(tpr[i], abs=1e-15)
        assert p.far <= far
        if np.isfinite(thr[i]):
            assert p.threshold >= -thr[i] - 1e-12  # accepts every pair sklearn's point accepts ...
        assert p.threshold < -thr[i + 1] + 1e-12  # ... and none of the next one
    worst = np.maximum(fpr, 1 - tpr)
    j = int(np.argmin(worst))
    assert cal.eer == pytest.approx(worst[j], abs=1e-15)
    assert cal.eer_threshold == pytest.approx(-thr[j], abs=1e-9)
    corners = np.flatnonzero(np.diff(tpr) > 0) + 1  # points where a genuine pair is accepted
    np.testing.assert_allclose(cal.roc_far, fpr[corners], atol=1e-15)
    np.testing.assert_allclose(cal.roc_tar, tpr[corners], atol=1e-15)
    np.testing.assert_allclose(cal.roc_threshold, -thr[corners], atol=1e-9)


def test_chunking_changes_nothing():
    feats, pids, mods = random_file(seed=1)
    big = calibrate(feats, pids, mods, [1e-3, 0.1], memory_mb=512)
    tiny = calibrate(feats, pids, mods, [1e-3, 0.1], memory_mb=1e-4)  # one visible row per chunk
    # the same decisions; distances may differ in the last bits (BLAS sums a 1-row chunk in another order)
    for a, b in zip(big.points, tiny.points):
        assert (a.far, a.tar, a.impostors_accepted, a.genuine_accepted) == (b.far, b.tar, b.impostors_accepted,
                                                                            b.genuine_accepted)
        assert a.threshold == pytest.approx(b.threshold, abs=1e-12)
    assert big.eer == tiny.eer and big.eer_threshold == pytest.approx(tiny.eer_threshold, abs=1e-12)
    np.testing.assert_array_equal(big.roc_far, tiny.roc_far)
    np.testing.assert_array_equal(big.roc_tar, tiny.roc_tar)
    np.testing.assert_array_equal(big.hist_impostor, tiny.hist_impostor)


def write_npz(path: Path, feats, pids, mods, **over) -> Path:
    arrays = dict(features=feats, pids=np.asarray(pids, np.int64), camids=np.ones(len(pids), np.int64),
                  modalities=np.asarray(mods, np.int64), paths=np.array([f"img/{i:04d}.jpg" for i in range(len(pids))]))
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def test_cli_writes_json_and_plot(tmp_path, capsys):
    feats, pids, mods = random_file()
    npz = write_npz(tmp_path / "feats.npz", feats, pids, mods)
    code, stdout, err = run_cli(["calibrate", npz, "--far", 1e-3, 1e-2], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "calibration.json").read_text())  # default: next to the features file
    cal = calibrate(feats, pids, mods, [1e-3, 1e-2])
    assert data["num_genuine"] == cal.num_genuine and data["num_impostor"] == cal.num_impostor
    assert data["eer"] == cal.eer and data["eer_threshold"] == cal.eer_threshold
    assert [t["far_requested"] for t in data["thresholds"]] == [1e-3, 1e-2]
    for t, p in zip(data["thresholds"], cal.points):
        assert (t["threshold"], t["far"], t["tar"]) == (p.threshold, p.far, p.tar)
        assert f"{p.threshold:.6f}" in stdout
    assert data["rule"] == "accept a pair when distance <= threshold"
    assert len(data["roc"]["far"]) == len(data["roc"]["tar"]) == len(data["roc"]["threshold"]) == len(cal.roc_far)
    assert len(data["histogram"]["edges"]) == len(data["histogram"]["genuine"]) + 1
    assert Image.open(tmp_path / "calibration.png").size == (1000, 400)
    assert "EER" in stdout

    code, _, err = run_cli(["calibrate", npz, "--out", tmp_path / "elsewhere"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "elsewhere" / "calibration.json").read_text())
    assert [t["far_requested"] for t in data["thresholds"]] == [1e-4, 1e-3, 1e-2, 1e-1]


def test_cli_bad_inputs(tmp_path, capsys):
    feats, pids, mods = random_file()
    unlabelled = write_npz(tmp_path / "unlabelled.npz", feats, np.full(len(pids), -1), mods)
    line = one_line_error(*run_cli(["calibrate", unlabelled], capsys)[::2])
    assert "unlabelled.npz" in line and "pid -1" in line

    one_mod = write_npz(tmp_path / "rgb_only.npz", feats, pids, np.zeros(len(pids)))
    line = one_line_error(*run_cli(["calibrate", one_mod], capsys)[::2])
    assert "0 infrared" in line

    disjoint = write_npz(tmp_path / "disjoint.npz", feats, np.where(mods == 1, pids + 5000, pids), mods)
    line = one_line_error(*run_cli(["calibrate", disjoint], capsys)[::2])
    assert "no genuine" in line

    ok = write_npz(tmp_path / "ok.npz", feats, pids, mods)
    line = one_line_error(*run_cli(["calibrate", ok, "--far", 1.5], capsys)[::2])
    assert "--far 1.5" in line

    line = one_line_error(*run_cli(["calibrate", tmp_path / "missing.npz"], capsys)[::2])
    assert "missing.npz" in line

    not_npz = tmp_path / "text.npz"
    not_npz.write_text("features")
    line = one_line_error(*run_cli(["calibrate", not_npz], capsys)[::2])
    assert "text.npz" in line
    assert not (tmp_path / "calibration.json").exists()
