"""AML trains as the official CMAM code runs it (issue #10 item 3, SPEC 6 "corrected" items): each corrected element
pinned against values computed by hand (or by a plain formula written here) on tiny inputs.

Reference: wuancong/CMAM at commit 21d258fb6af3eb663aca27ecac2c5b09f40c362a (file:line in each test).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vireid.clustering import cluster_cross_modal, clustering_weights, jaccard_distance
from vireid.clustering.kmeans import ClusteringError, reference_kmeans
from vireid.losses import circle_logits
from vireid.losses.aml import symmetric_kl, two_way_kl


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def _kl(a: list[float], b: list[float]) -> float:
    """KL(a || b) = sum a (log a - log b)."""
    return sum(p * (math.log(p) - math.log(q)) for p, q in zip(a, b))


# --- stage-1 KL on the margin-adjusted Circle logits (mutual_framework.py:138-146, :180-181; circle.py:27-42) ------

COS = [[0.5, -0.2, 0.1], [0.3, 0.6, -0.4]]  # model A's cosines (2 samples x 3 classes)
COS_T = [[0.4, 0.1, 0.0], [-0.1, 0.7, 0.2]]  # model B's cosines
Y = [0, 1]


def _circle_by_hand(cos: list[list[float]], y: list[int], s: float = 64.0, m: float = 0.35) -> list[list[float]]:
    out = []
    for row, t in zip(cos, y):
        r = []
        for c, v in enumerate(row):
            if c == t:
                r.append(s * max(0.0, 1 + m - v) * (v - (1 - m)))
            else:
                r.append(s * max(0.0, v + m) * (v - m))
        out.append(r)
    return out


def test_stage1_kl_on_margin_adjusted_circle_logits_by_hand() -> None:
    # e.g. sample 0, target 0: 64 * (1.35 - 0.5) * (0.5 - 0.65) = -8.16; class 1: 64 * 0.15 * (-0.55) = -5.28
    student = _circle_by_hand(COS, Y)
    teacher = _circle_by_hand(COS_T, Y)
    assert student[0][0] == pytest.approx(-8.16) and student[0][1] == pytest.approx(-5.28)
    expected = sum(0.5 * (_kl(_softmax(t), _softmax(p)) + _kl(_softmax(p), _softmax(t)))
                   for p, t in zip(student, teacher))
    got = symmetric_kl(circle_logits(torch.tensor(COS), torch.tensor(Y)), circle_logits(torch.tensor(COS_T),
                                                                                     torch.tensor(Y)))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # the old reading, KL on 64 x cosine, is a different (here much larger) number: the corrected one is pinned
    plain = sum(0.5 * (_kl(_softmax([64 * v for v in t]), _softmax([64 * v for v in p]))
                       + _kl(_softmax([64 * v for v in p]), _softmax([64 * v for v in t])))
                for p, t in zip(COS, COS_T))
    assert abs(plain - expected) > 1.0


def test_stage1_kl_gradient_reaches_only_the_student() -> None:
    s = torch.tensor(COS, requires_grad=True)
    t = torch.tensor(COS_T, requires_grad=True)
    symmetric_kl(circle_logits(s, torch.tensor(Y)), circle_logits(t, torch.tensor(Y))).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0 and t.grad is None


# --- stage-2 KL without the 1/2 (mutual_framework.py:148-151, :211) ------------------------------------------------


def test_stage2_kl_value_without_half_by_hand() -> None:
    a = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.5]]
    b = [[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]]
    expected = sum(_kl(_softmax(q), _softmax(p)) + _kl(_softmax(p), _softmax(q)) for p, q in zip(a, b))
    got = two_way_kl(torch.tensor(a), torch.tensor(b))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(got) == pytest.approx(2 * float(symmetric_kl(torch.tensor(a), torch.tensor(b))), rel=1e-6)
    # nothing detached: both sides get a gradient
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    two_way_kl(ta, tb).backward()
    assert ta.grad is not None and tb.grad is not None and float(tb.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match=r"two_way_kl: logits must both be \[N, C\]"):
        two_way_kl(torch.zeros(2, 3), torch.zeros(2, 4))


# --- Jaccard on the un-renormalised concatenation (faiss_rerank.py:79; train_stage2.py:211-234) ---------------------


def _sqrt2_features() -> np.ndarray:
    """4 samples, each the concatenation of two unit 2-d halves (norm sqrt 2), as AML's [model1 || model2]."""
    angles = [(0.0, 0.1), (0.3, 0.2), (1.4, 1.2), (1.6, 1.5)]
    rows = [[math.cos(a), math.sin(a), math.cos(b), math.sin(b)] for a, b in angles]
    return np.array(rows, dtype=np.float32)


def test_jaccard_weights_on_sqrt2_norm_features_by_hand() -> None:
    x = _sqrt2_features()
    assert np.allclose(np.linalg.norm(x, axis=1), math.sqrt(2))
    # k1 = 4 = N: every sample is in every k-reciprocal set, so each row's expanded set is all 4 samples and the
    # weights are softmax_j(-(2 - 2 x_i.x_j)) over the raw dot products (x_i.x_i = 2); k2 = 1: no query expansion
    dots = x.astype(np.float64) @ x.T.astype(np.float64)
    expected = np.array([_softmax([-(2 - 2 * d) for d in row]) for row in dots])
    v = clustering_weights(x, k1=4, k2=1, normalize=False, device="cpu").toarray()
    np.testing.assert_allclose(v, expected, atol=1e-6)
    # renormalising first (the old behaviour) gives the softer weights of softmax(-(2 - 2 cos)): a different matrix
    cos = dots / 2.0
    softer = np.array([_softmax([-(2 - 2 * c) for c in row]) for row in cos])
    assert np.abs(softer - expected).max() > 0.05
    # Jaccard distance from these weights: d_ij = 1 - s / (2 - s), s = sum_k min(V_ik, V_jk)
    s = np.minimum(expected[:, None, :], expected[None, :, :]).sum(-1)
    np.testing.assert_allclose(jaccard_distance(x, k1=4, k2=1, normalize=False, device="cpu"),
                               np.maximum(1 - s / (2 - s), 0), atol=1e-6)


def test_cluster_cross_modal_uses_the_concatenation_as_given() -> None:
    """normalize=False: DBSCAN sees the Jaccard distance of the raw rows (eps chosen between the two readings)."""
    x = _sqrt2_features()
    raw = jaccard_distance(x, k1=4, k2=1, normalize=False, device="cpu")
    unit = jaccard_distance(x, k1=4, k2=1, normalize=True, device="cpu")
    # samples 0 and 1 are close, 2 and 3 are close; the sharper raw weights push the pair distances apart
    assert raw[0, 2] > unit[0, 2]
    assert raw[0, 1] < unit[0, 2] < raw[0, 2] and raw[2, 3] < unit[0, 2]
    eps = float((raw[0, 2] + unit[0, 2]) / 2)
    a = cluster_cross_modal(x, x, method="dbscan", k1=4, k2=1, eps=eps, min_samples=2, normalize=False, device="cpu")
    b = cluster_cross_modal(x, x, method="dbscan", k1=4, k2=1, eps=eps, min_samples=2, normalize=True, device="cpu")
    assert a.raw_labels_rgb is not None and b.raw_labels_rgb is not None
    assert len(set(a.raw_labels_rgb.tolist())) == 2  # {0, 1} and {2, 3}
    assert len(set(b.raw_labels_rgb.tolist())) == 1  # everything within eps: one cluster


# --- k-means as the reference runs it (train_stage2.py:239-242; fast_pytorch_kmeans KMeans(mode='cosine')) ----------


def _seed_with_init(n: int, k: int, wanted: set[int]) -> int:
    """A seed whose initial rows (torch.randperm(n, seed)[:k], the documented draw) are ``wanted``."""
    for seed in range(1000):
        if set(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist()) == wanted:
            return seed
    raise AssertionError("no seed found")


def test_reference_kmeans_by_hand_means_of_raw_rows() -> None:
    x = np.array([[1.0, 0.0], [3.0, 0.3], [0.0, 2.0], [0.2, 4.0]], dtype=np.float32)
    seed = _seed_with_init(4, 2, {0, 2})
    labels, c = reference_kmeans(x, 2, seed=seed)
    # round 1: x1 is nearer (cosine) to x0's direction, x3 to x2's; new centroids are plain means (not normalised):
    # {x0, x1} -> (2, 0.15), {x2, x3} -> (0.1, 3); round 2 assigns the same, centroids do not move: stop
    first = int(torch.randperm(4, generator=torch.Generator().manual_seed(seed))[0])
    a, b = (0, 1) if first == 0 else (1, 0)
    assert labels.tolist() == [a, a, b, b]
    np.testing.assert_allclose(c[a], [2.0, 0.15], atol=1e-6)
    np.testing.assert_allclose(c[b], [0.1, 3.0], atol=1e-6)


def test_reference_kmeans_empty_cluster_becomes_zero_and_never_wins() -> None:
    x = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]], dtype=np.float32)
    seed = _seed_with_init(4, 2, {0, 1})
    labels, c = reference_kmeans(x, 2, seed=seed)
    # round 1: centroids (1,0) and (3,0) have the same direction: every row ties, argmax takes the first centroid;
    # the other becomes empty -> zero vector (the reference's NaN -> 0). Centroid 0 = mean of all rows = (1, 1.5).
    # round 2: every row has cosine > 0 with (1, 1.5) and 0 with the zero centroid: nothing changes, stop.
    assert labels.tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(c, [[1.0, 1.5], [0.0, 0.0]], atol=1e-6)


def _kmeans_loop(x: np.ndarray, init: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """fast_pytorch_kmeans' fit_predict, written out plainly in NumPy (float64)."""
    c = x[init].astype(np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    closest = None
    for _ in range(max_iter):
        cn = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        closest = (xn @ cn.T).argmax(1)
        new = np.zeros_like(c)
        for j in range(len(c)):
            if (closest == j).any():
                new[j] = x[closest == j].mean(0)
        error = ((new - c) ** 2).sum()
        c = new
        if error <= tol:
            break
    assert closest is not None
    return closest


@pytest.mark.parametrize("max_iter", [1, 3, 100])
def test_reference_kmeans_equals_the_plain_loop(max_iter: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    x = (centres[rng.integers(0, 6, 120)] + 0.6 * rng.normal(size=(120, 16))).astype(np.float32)
    x *= rng.uniform(0.5, 2.0, size=(120, 1)).astype(np.float32)  # rows of different norms: means are not spherical
    init = torch.randperm(120, generator=torch.Generator().manual_seed(7))[:6].numpy()
    labels, _ = reference_kmeans(x, 6, seed=7, max_iter=max_iter)
    np.testing.assert_array_equal(labels, _kmeans_loop(x.astype(np.float64), init, max_iter, 1e-4))


def test_reference_kmeans_bad_arguments() -> None:
    with pytest.raises(ClusteringError, match="k must be an integer in 1..3"):
        reference_kmeans(np.ones((3, 2)), 4)
    with pytest.raises(ClusteringError, match="max_iter must be a positive integer"):
        reference_kmeans(np.ones((3, 2)), 2, max_iter=0)
    with pytest.raises(ClusteringError, match="NaN or inf"):
        reference_kmeans(np.full((3, 2), np.nan), 2)
    with pytest.raises(ClusteringError, match="kmeans_init must be 'random' or 'kmeans\\+\\+'"):
        cluster_cross_modal(np.ones((3, 2)), np.ones((3, 2)), method="kmeans", kmeans_init="faiss")  # type: ignore


def test_cluster_cross_modal_kmeans_default_is_the_reference() -> None:
    rng = np.random.default_rng(1)
    xr, xi = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    a = cluster_cross_modal(xr, xi, method="kmeans", k=5, seed=3, normalize=False)
    assert a.raw_labels_rgb is not None and a.raw_labels_ir is not None
    np.testing.assert_array_equal(a.raw_labels_rgb, reference_kmeans(xr, 5, seed=3)[0])
    np.testing.assert_array_equal(a.raw_labels_ir, reference_kmeans(xi, 5, seed=3)[0])


# --- stage-1 source pool: market1501_train + pseudo-labelled market1501_test (datasets/market1501.py:39-53) --------


def test_stage1_pool_takes_pseudo_labelled_test_images_with_their_twins(tmp_path: Path) -> None:
    import _layouts as L  # tests/ is on sys.path
    from vireid.data.datasets import load_dataset

    L.write_market1501_gen(tmp_path, pplr=False)
    # train: 0002_c1s1 -> 40, 0002_c2s1 -> 12, 0007_c3s1 unlabelled; test: 0010_c4s1 -> 12 (same pseudo id as a
    # train image), 0000_c2s1 unlabelled; the junk -1_c1s1 is never an image of the pool
    torch.save([("/a/0002_c1s1_000451_03.jpg", 40, 0), ("/a/0002_c2s1_000301_01.jpg", 12, 1),
                ("/b/0010_c4s1_000003_01.jpg", 12, 3)], tmp_path / "pplr_pseudo_labels.pth")
    ds = load_dataset("market1501_gen", tmp_path)
    assert len(ds.train) == 2 + 1 and ds.info["test_pool"] == 1
    assert [(s.path, s.twin, s.label) for s in ds.train] == [
        ("market1501_train/0002_c1s1_000451_03.jpg", "market1501_train_sysumm01/0002_c1s1_000451_03.jpg", 1),
        ("market1501_train/0002_c2s1_000301_01.jpg", "market1501_train_sysumm01/0002_c2s1_000301_01.jpg", 0),
        ("market1501_test/0010_c4s1_000003_01.jpg", "market1501_test_sysumm01/0010_c4s1_000003_01.jpg", 0),
    ]
    assert ds.num_classes == 2


def test_stage1_pool_size_on_synthetic_market1501_gen(tmp_path: Path) -> None:
    from vireid.data.datasets import load_dataset
    from vireid.data.datasets.market1501 import parse_name
    from vireid.data.synthetic import write_synthetic

    root = tmp_path / "gen"
    write_synthetic("market1501_gen", root, ids=12, seed=0, size=(32, 16))
    train_names = sorted(p.name for p in (root / "market1501_train").iterdir())
    test_names = sorted(p.name for p in (root / "market1501_test").iterdir())
    # label every train image and every second valid test image (pseudo label = pid, as a stand-in for PPLR)
    test_valid = [n for n in test_names if (parse_name(n) or (-1, 0))[0] != -1]
    labelled_test = test_valid[::2]
    entries = [(f"/x/{n}", (parse_name(n) or (0, 0))[0], 0) for n in train_names + labelled_test]
    torch.save(entries, root / "pplr_pseudo_labels.pth")
    ds = load_dataset("market1501_gen", root, target="sysumm02")
    train_valid = [n for n in train_names if (parse_name(n) or (-1, 0))[0] != -1]
    assert len(ds.train) == len(train_valid) + len(labelled_test) and ds.info["test_pool"] == len(labelled_test)
    assert all(s.twin and s.twin.split("/", 1)[0] == s.path.split("/", 1)[0].replace("_test", "_test_sysumm02")
               .replace("_train", "_train_sysumm02") for s in ds.train)


# --- diagnostics that split the bottleneck (per-modality clustering vs cross-modal association) --------------------


def test_diagnostics_split_per_modality_and_cross_modal_by_hand() -> None:
    from vireid.clustering import (
        Association,
        clustering_diagnostics,
        feature_diagnostics,
    )

    # RGB: ids 1,1,2,2 clustered perfectly (raw and final); IR: ids 1,1,2,2 clustered perfectly, but the association
    # swapped the two identities: per-modality ARI 1, match precision 0, per-sample match accuracy 0
    a = Association(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), 2, 2, 2, None,
                    raw_labels_rgb=np.array([0, 0, 1, 1]), raw_labels_ir=np.array([0, 0, 1, 1]))
    d = clustering_diagnostics(a, np.array([1, 1, 2, 2]), np.array([1, 1, 2, 2]))
    assert d["ari_rgb"] == 1.0 and d["ari_ir"] == 1.0 and d["ari_rgb_raw"] == 1.0 and d["ari_ir_raw"] == 1.0
    assert d["match_precision"] == 0.0 and d["match_accuracy_rgb"] == 0.0
    # features: RGB id 1 near (1, 0), id 2 near (0, 1); IR shifted so that id 1's IR lies nearer RGB id 2
    xr = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=np.float32)
    xi = np.array([[0.2, 1], [0.1, 1], [1, 0.3], [1, 0.2]], dtype=np.float32)
    f = feature_diagnostics(xr, xi, np.array([1, 1, 2, 2]), np.array([1, 1, 2, 2]))
    assert f == {"xmodal_rank1": 0.0, "oracle_match_precision": 0.0}
    f = feature_diagnostics(xr, xi[::-1], np.array([1, 1, 2, 2]), np.array([1, 1, 2, 2]))
    assert f == {"xmodal_rank1": 1.0, "oracle_match_precision": 1.0}
