"""Clustering for unsupervised / pseudo-label training: Jaccard distance (dense and sparse) and DBSCAN.

``jaccard_distance`` is the clustering variant of k-reciprocal encoding (SPEC 2.6); the test-time
re-ranking variant (SPEC 2.5) lives in :mod:`vireid.evaluation.rerank` under a different name on purpose.
"""

from vireid.clustering.dbscan import cluster_dbscan, dbscan_sparse
from vireid.clustering.jaccard import clustering_weights, jaccard_distance, jaccard_distance_sparse

__all__ = [
    "jaccard_distance",
    "jaccard_distance_sparse",
    "clustering_weights",
    "dbscan_sparse",
    "cluster_dbscan",
]
