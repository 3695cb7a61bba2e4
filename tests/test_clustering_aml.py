"""AML stage-2 re-clustering (SPEC 6): cosine k-means, Ward merge, Hungarian matching, association, diagnostics."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from vireid.clustering import (
    Association,
    ClusteringError,
    associate,
    cluster_centroids,
    cluster_cross_modal,
    clustering_diagnostics,
    cosine_kmeans,
    hungarian_match,
    ward_merge,
)
from vireid.clustering.kmeans import kmeans_plusplus
from vireid.clustering.reference import jaccard_distance_dense
from vireid.errors import VireidError


def _cross_modal(ids: int, per_rgb: int, per_ir: int, dim: int, noise: float, shift: float, seed: int):
    """RGB and IR features of the same ``ids`` identities: shared centres, IR moved by one common offset.

    Returns ``(x_rgb, ids_rgb, x_ir, ids_ir)``; rows are shuffled so that identities are interleaved.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    offset = shift * rng.normal(size=dim)
    y_rgb = rng.permutation(np.repeat(np.arange(ids), per_rgb))
    y_ir = rng.permutation(np.repeat(np.arange(ids), per_ir))
    x_rgb = centres[y_rgb] + noise * rng.normal(size=(y_rgb.size, dim))
    x_ir = centres[y_ir] + offset + noise * rng.normal(size=(y_ir.size, dim))
    return x_rgb.astype(np.float32), y_rgb, x_ir.astype(np.float32), y_ir


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the labels (a bijection between the label sets)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# --- k-means -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separated() -> tuple[np.ndarray, np.ndarray]:
    """Three tight groups of 6 points around orthogonal directions in 8-d (scaled: k-means must normalise)."""
    rng = np.random.default_rng(0)
    truth = rng.permutation(np.repeat(np.arange(3), 6))
    x = np.eye(8)[truth] + 0.05 * rng.normal(size=(18, 8))
    x *= rng.uniform(0.5, 3.0, size=(18, 1))
    return x.astype(np.float32), truth


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_backends_find_the_same_true_partition(separated, init) -> None:
    x, truth = separated
    lf, cf = cosine_kmeans(x, 3, backend="faiss", seed=1, init=init)
    lt, ct = cosine_kmeans(torch.from_numpy(x), 3, backend="torch", seed=1, init=init)
    assert lf.dtype == lt.dtype == np.int64 and cf.dtype == ct.dtype == np.float32
    assert cf.shape == (3, 8)
    assert _same_partition(lf, truth)
    np.testing.assert_array_equal(lf, lt)  # same seeded start -> same labels, not just the same partition
    np.testing.assert_allclose(cf, ct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cf, axis=1), 1.0, atol=1e-6)
    # converged centroid = normalised mean of the normalised members
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for c in range(3):
        mean = xn[lt == c].mean(0)
        np.testing.assert_allclose(ct[c], mean / np.linalg.norm(mean), atol=1e-5)


def test_kmeans_is_deterministic_and_euclidean_variant_agrees(separated) -> None:
    x, truth = separated
    a = cosine_kmeans(x, 3, backend="torch", seed=5)
    b = cosine_kmeans(x, 3, backend="torch", seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for backend in ("faiss", "torch"):
        labels, centroids = cosine_kmeans(x, 3, backend=backend, spherical=False, niter=10)
        assert _same_partition(labels, truth)
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-6)
    # k = N: every sample its own cluster
    labels, _ = cosine_kmeans(x, 18, backend="torch")
    assert sorted(labels.tolist()) == list(range(18))


def test_kmeans_restarts_find_well_separated_clusters_for_every_seed(synthetic) -> None:
    x_rgb, y_rgb, _, _ = synthetic
    # one greedy k-means++ start misses a cluster for some seeds (seed 0 here); two restarts keep the best inertia
    assert adjusted_rand_score(y_rgb, cosine_kmeans(x_rgb, 12, seed=0, backend="torch")[0]) < 0.95
    for seed in range(10):
        labels, _ = cosine_kmeans(x_rgb, 12, seed=seed, n_init=2, backend="torch")
        assert adjusted_rand_score(y_rgb, labels) == pytest.approx(1.0), seed
    with pytest.raises(ClusteringError, match="n_init"):
        cosine_kmeans(x_rgb, 12, n_init=0)


def test_kmeans_plusplus_never_picks_a_duplicate_seed() -> None:
    # 3 distinct points, each repeated 4 times: the 3 seeds must be one copy of each
    base = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    x = torch.from_numpy(np.repeat(base, 4, axis=0))
    for seed in range(5):
        idx = kmeans_plusplus(x, 3, seed).numpy()
        assert sorted((idx // 4).tolist()) == [0, 1, 2]


def test_kmeans_plusplus_on_a_random_projection_still_covers_every_cluster() -> None:
    # 10 tight clusters in 1024-d: seeding runs on a 256-d projection, yet must pick one row of each cluster
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(10), 20)
    x = torch.from_numpy((rng.normal(size=(10, 1024))[truth] + 0.01 * rng.normal(size=(200, 1024))).astype(np.float32))
    for seed in range(3):
        idx = kmeans_plusplus(x, 10, seed).numpy()
        assert sorted(truth[idx].tolist()) == list(range(10))
        assert not np.array_equal(idx, kmeans_plusplus(x, 10, seed + 1).numpy())  # the seed matters
    np.testing.assert_array_equal(kmeans_plusplus(x, 10, 0), kmeans_plusplus(x, 10, 0))


def test_kmeans_bad_arguments() -> None:
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with pytest.raises(ClusteringError, match="k = 6 clusters asked for only N = 5"):
        cosine_kmeans(x, 6)
    assert issubclass(ClusteringError, ValueError) and issubclass(ClusteringError, VireidError)
    with pytest.raises(ClusteringError, match="backend"):
        cosine_kmeans(x, 2, backend="sklearn")
    with pytest.raises(ClusteringError, match="NaN"):
        cosine_kmeans(np.full((3, 2), np.nan), 2)


# --- cluster centroids, Ward, Hungarian --------------------------------------------------------------------------


def test_cluster_centroids_ignores_outliers_and_sorts_ids() -> None:
    x = np.array([[1.0, 0.0], [9.0, 9.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    y = np.array([5, -1, 2, 5, 2, 2])
    ids, cent = cluster_centroids(x, y)
    assert ids.tolist() == [2, 5]
    np.testing.assert_allclose(cent, [[0.0, 2.0], [2.0, 0.0]])
    ids, cent = cluster_centroids(x, np.full(6, -1))
    assert ids.shape == (0,) and cent.shape == (0, 2)


def test_ward_merge_known_answers() -> None:
    two_groups = np.array([[0.0, 0.0], [10.0, 10.0], [0.1, 0.0], [10.1, 10.0], [0.0, 0.1]])
    assert ward_merge(two_groups, 2).tolist() == [0, 1, 0, 1, 0]
    # 1-d: {0,1} and {5,6} merge first (distance 1); at 2 groups {0,1} joins {5,6} and {20} stays alone
    # (Ward {0,1}-{5,6}: sqrt(2*2*2/4)*5 = 7.07 < {5,6}-{20}: sqrt(2*2*1/3)*14.5 = 16.7)
    line = np.array([[20.0], [0.0], [5.0], [1.0], [6.0]])
    assert ward_merge(line, 3).tolist() == [0, 1, 2, 1, 2]
    assert ward_merge(line, 2).tolist() == [0, 1, 1, 1, 1]
    assert ward_merge(line, 1).tolist() == [0] * 5
    assert ward_merge(line, 5).tolist() == [0, 1, 2, 3, 4]
    # tied merge heights (square corners): still exactly the asked number of groups
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    for n in (1, 2, 3, 4):
        assert len(set(ward_merge(square, n).tolist())) == n
    with pytest.raises(ClusteringError, match="n_clusters must be an integer in 1..5"):
        ward_merge(line, 6)


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_hungarian_recovers_a_permutation_and_beats_greedy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 5))
    perm = np.array([3, 0, 5, 1, 4, 2])
    b = a[perm] * rng.uniform(0.5, 4.0, size=(6, 1))  # b[j] = scaled a[perm[j]]: scaling must not matter
    assert hungarian_match(a, b).tolist() == np.argsort(perm).tolist()
    # a0 at 0 deg, a1 at 50 deg; b0 at 30 deg, b1 at 100 deg. Greedy from a1 takes b0 (20 deg) and leaves a0 with
    # b1 (100 deg): cost (2-2cos20) + (2-2cos100) = 2.468; the optimum a0-b0, a1-b1 costs
    # (2-2cos30) + (2-2cos50) = 0.982.
    a2 = np.array([_unit(0), _unit(50)])
    b2 = np.array([_unit(30), _unit(100)]) * 3.0
    assert hungarian_match(a2, b2).tolist() == [0, 1]
    with pytest.raises(ClusteringError, match="same C"):
        hungarian_match(a, b[:5])


# --- association -------------------------------------------------------------------------------------------------


def _points(deg: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.array(_unit(deg)) + 0.01 * rng.normal(size=(n, 2))


def test_associate_merges_the_two_nearest_rgb_clusters() -> None:
    rng = np.random.default_rng(0)
    # RGB: clusters 10 (at 0 deg) and 11 (at 10 deg) are close; 12 is at 90 deg; two outliers
    x_rgb = np.concatenate([_points(0, 3, rng), _points(90, 4, rng), _points(10, 3, rng), _points(200, 2, rng)])
    y_rgb = np.array([10] * 3 + [12] * 4 + [11] * 3 + [-1] * 2)
    # IR: cluster 7 at 5 deg, cluster 3 at 88 deg; one outlier
    x_ir = np.concatenate([_points(5, 4, rng), _points(88, 3, rng), _points(300, 1, rng)])
    y_ir = np.array([7] * 4 + [3] * 3 + [-1])
    a = associate(x_rgb, y_rgb, x_ir, y_ir)
    assert (a.num_clusters, a.clusters_rgb, a.clusters_ir, a.merged) == (2, 3, 2, "rgb")
    # IR ids ascending -> shared labels: 3 -> 0, 7 -> 1. RGB 10 and 11 merge and pair with IR 7; 12 pairs with IR 3.
    assert a.labels_ir.tolist() == [1] * 4 + [0] * 3 + [-1]
    assert a.labels_rgb.tolist() == [1] * 3 + [0] * 4 + [1] * 3 + [-1] * 2
    assert a.rgb_cluster_map.tolist() == [1, 1, 0]  # RGB clusters 10, 11, 12
    assert a.ir_cluster_map.tolist() == [0, 1]  # IR clusters 3, 7
    assert a.labels_rgb.dtype == a.labels_ir.dtype == np.int64
    assert (a.outliers_rgb, a.outliers_ir) == (2, 1)

    # the other way round: IR has more clusters and is the one merged
    b = associate(x_ir, y_ir, x_rgb, y_rgb)
    assert (b.num_clusters, b.clusters_rgb, b.clusters_ir, b.merged) == (2, 2, 3, "ir")
    # IR clusters 10, 11, 12 -> Ward groups {10, 11} = 0, {12} = 1; RGB 7 (5 deg) pairs with group 0, RGB 3 with 1
    assert b.labels_rgb.tolist() == [0] * 4 + [1] * 3 + [-1]
    assert b.labels_ir.tolist() == [0] * 3 + [1] * 4 + [0] * 3 + [-1] * 2


def test_associate_with_no_clusters_in_one_modality(caplog) -> None:
    x = np.random.default_rng(0).normal(size=(4, 3))
    with caplog.at_level(logging.WARNING, logger="vireid.clustering.association"):
        a = associate(x, np.full(4, -1), x, np.array([0, 0, 1, 1]))
    assert a.labels_rgb.tolist() == [-1] * 4 and a.labels_ir.tolist() == [-1] * 4
    assert (a.num_clusters, a.clusters_rgb, a.clusters_ir) == (0, 0, 2)
    assert "no cross-modal pairs" in caplog.text
    d = clustering_diagnostics(a, np.arange(4), np.arange(4))
    assert d["matched_pairs"] == 0 and d["outlier_fraction_rgb"] == 1.0
    assert math.isnan(d["ari"]) and math.isnan(d["match_precision"])
    with pytest.raises(ClusteringError, match="labels must be \\[N\\] with N = 4"):
        associate(x, np.zeros(3), x, np.zeros(4))


# --- diagnostics -------------------------------------------------------------------------------------------------


def _assoc(lr, li, num) -> Association:
    lr, li = np.array(lr), np.array(li)
    return Association(lr, li, num, num, num)


def test_diagnostics_perfect_and_permuted_labellings() -> None:
    true_r, true_i = np.array([4, 4, 9, 9, 2]), np.array([2, 9, 4, 4])
    perfect = clustering_diagnostics(_assoc([0, 0, 1, 1, 2], [2, 1, 0, 0], 3), true_r, true_i)
    permuted = clustering_diagnostics(_assoc([2, 2, 0, 0, 1], [1, 0, 2, 2], 3), true_r, true_i)
    for d in (perfect, permuted):
        assert d["ari"] == pytest.approx(1.0) and d["nmi"] == pytest.approx(1.0)
        assert d["ari_all"] == pytest.approx(1.0) and d["match_precision"] == 1.0
        assert d["matched_pairs"] == 3 and d["outlier_fraction_rgb"] == 0.0


def test_diagnostics_small_case_by_hand() -> None:
    # non-outliers: pseudo [0, 1 | 0, 1], true [0, 0 | 0, 1]
    a = _assoc([0, 1, -1], [0, 1, -1], 2)
    d = clustering_diagnostics(a, np.array([0, 0, 9]), np.array([0, 1, 8]))
    assert d["clusters_rgb"] == 2 and d["num_clusters"] == 2 and d["matched_pairs"] == 2
    assert d["outlier_fraction_rgb"] == pytest.approx(1 / 3) and d["outlier_fraction_ir"] == pytest.approx(1 / 3)
    # ARI: contingency {p0: t0 x2; p1: t0, t1}: sum C(n_ij, 2) = 1; rows (2, 2) -> 2; cols (3, 1) -> 3; C(4, 2) = 6;
    # expected 2 * 3 / 6 = 1, max (2 + 3) / 2 = 2.5 -> ARI = (1 - 1) / (2.5 - 1) = 0
    assert d["ari"] == pytest.approx(0.0, abs=1e-12)
    # NMI (arithmetic): MI = .5 ln(4/3) + .25 ln(2/3) + .25 ln 2; H(true) = -(.75 ln .75 + .25 ln .25); H(pseudo) = ln 2
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_t = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert d["nmi"] == pytest.approx(mi / ((h_t + math.log(2)) / 2), rel=1e-9)
    # all 6 samples, outliers as singletons: sum C = 1; rows (2, 2, 1, 1) -> 2; cols (t0: 3, t1, t8, t9) -> 3;
    # C(6, 2) = 15: expected 0.4, max 2.5 -> ARI = 0.6 / 2.1
    assert d["ari_all"] == pytest.approx(0.6 / 2.1)
    # label 0: RGB majority 0, IR majority 0 (agree); label 1: RGB 0, IR 1 (disagree)
    assert d["match_precision"] == 0.5
    with pytest.raises(ClusteringError, match="both modalities"):
        clustering_diagnostics(a, np.array([0, 0, 9]))
    with pytest.raises(ClusteringError, match="true_ir must be \\[N\\] with N = 3"):
        clustering_diagnostics(a, np.array([0, 0, 9]), np.array([0, 1]))


def test_majority_vote_ties_go_to_the_smaller_id() -> None:
    # label 0 holds RGB true ids {5, 3} (tie -> 3) and IR {3}: agree; label 1 RGB {7, 7, 2}, IR {2, 2}: disagree
    a = _assoc([0, 0, 1, 1, 1], [0, 1, 1], 2)
    d = clustering_diagnostics(a, np.array([5, 3, 7, 7, 2]), np.array([3, 2, 2]))
    assert d["match_precision"] == 0.5


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    return _cross_modal(ids=12, per_rgb=20, per_ir=14, dim=64, noise=0.3, shift=0.3, seed=0)


@pytest.mark.parametrize("method", ["dbscan", "kmeans"])
def test_cluster_cross_modal_recovers_identities(synthetic, method) -> None:
    x_rgb, y_rgb, x_ir, y_ir = synthetic
    a = cluster_cross_modal(x_rgb, x_ir, method=method, k=12, k1=20, k2=6, eps=0.4, device="cpu", kmeans_n_init=2,
                            kmeans_init="kmeans++")
    d = clustering_diagnostics(a, y_rgb, y_ir)
    assert a.num_clusters == 12 and d["matched_pairs"] == 12
    assert d["ari"] > 0.99 and d["match_precision"] == 1.0
    assert d["outlier_fraction_rgb"] < 0.05 and d["outlier_fraction_ir"] < 0.05
    if method == "kmeans":
        assert d["outlier_fraction_rgb"] == 0.0 and d["ari_all"] > 0.99
    else:  # per-modality labels = sklearn DBSCAN on the dense reference Jaccard matrix
        for x, raw in ((x_rgb, a.raw_labels_rgb), (x_ir, a.raw_labels_ir)):
            dense = jaccard_distance_dense(x, k1=20, k2=6)
            np.testing.assert_array_equal(raw, DBSCAN(eps=0.4, min_samples=4, metric="precomputed").fit_predict(dense))


def test_cluster_cross_modal_kmeans_clamps_k_and_takes_tensors(synthetic, caplog) -> None:
    x_rgb, _, x_ir, _ = synthetic
    rgb, ir = torch.from_numpy(x_rgb[:30]), torch.from_numpy(x_ir[:20])
    with caplog.at_level(logging.WARNING, logger="vireid.clustering.association"):
        a = cluster_cross_modal(rgb, ir, method="kmeans", k=25, kmeans_backend="torch", kmeans_init="kmeans++")
    assert "k = 25 > 20 ir samples; using k = 20" in caplog.text
    assert (a.clusters_rgb, a.clusters_ir, a.num_clusters, a.merged) == (25, 20, 20, "rgb")
    assert sorted(set(a.labels_rgb.tolist())) == list(range(20)) and sorted(a.labels_ir.tolist()) == list(range(20))
    with pytest.raises(ClusteringError, match="method must be 'dbscan' or 'kmeans'"):
        cluster_cross_modal(rgb, ir, method="hdbscan")
