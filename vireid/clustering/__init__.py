"""Clustering for unsupervised / pseudo-label training: Jaccard distance (dense and sparse), DBSCAN, cosine k-means,
and AML's cross-modal association (per-modality clusters -> Ward merge -> Hungarian matching -> one label space).

``jaccard_distance`` is the clustering variant of k-reciprocal encoding (SPEC 2.6); the test-time
re-ranking variant (SPEC 2.5) lives in :mod:`vireid.evaluation.rerank` under a different name on purpose.
"""

from vireid.clustering.association import (
    Association,
    associate,
    cluster_centroids,
    cluster_cross_modal,
    hungarian_match,
    ward_merge,
)
from vireid.clustering.dbscan import cluster_dbscan, dbscan_sparse
from vireid.clustering.diagnostics import clustering_diagnostics, feature_diagnostics
from vireid.clustering.jaccard import (
    clustering_weights,
    jaccard_distance,
    jaccard_distance_sparse,
)
from vireid.clustering.kmeans import ClusteringError, cosine_kmeans, reference_kmeans

__all__ = [
    "Association",
    "ClusteringError",
    "associate",
    "cluster_centroids",
    "cluster_cross_modal",
    "cluster_dbscan",
    "clustering_diagnostics",
    "clustering_weights",
    "cosine_kmeans",
    "dbscan_sparse",
    "feature_diagnostics",
    "hungarian_match",
    "jaccard_distance",
    "jaccard_distance_sparse",
    "reference_kmeans",
    "ward_merge",
]
