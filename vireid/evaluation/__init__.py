"""Evaluation: protocol-exact retrieval metrics for VI-ReID.

The pieces, in the order data flows through them::

    features file (.npz) --load_features--> FeatureSet --build_protocol--> ProtocolPlan
        --evaluate_protocol--> ProtocolResult --summary()--> dict (the JSON of ``vireid evaluate``)

and underneath, :func:`evaluate_ranking` (arrays in, arrays out) for any distance matrix.

NumPy/SciPy only: importing this package (and evaluating a features file on the CPU, re-ranking included) does not
import torch. Torch tensors, or a GPU ``device``, are handled by :mod:`vireid.evaluation._metrics_torch`, imported
only then.

Example::

    from vireid.evaluation import load_features, build_protocol, evaluate_protocol
    fs = load_features("feats.npz")
    plan = build_protocol("sysu", fs, mode="all")
    print(evaluate_protocol(fs.features, plan).summary()["rank1"])
"""

from vireid.evaluation.features import (
    FeatureSet,
    load_features,
    save_features,
    validate_features,
)
from vireid.evaluation.metrics import (
    RankingResult,
    evaluate_ranking,
    feature_distance_fn,
    pair_keys,
    pairwise_distance,
)
from vireid.evaluation.protocols import (
    PROTOCOLS,
    Pool,
    ProtocolPlan,
    ProtocolResult,
    Trial,
    build_protocol,
    evaluate_protocol,
    pool_from_samples,
)

__all__ = [
    "PROTOCOLS",
    "FeatureSet",
    "Pool",
    "ProtocolPlan",
    "ProtocolResult",
    "RankingResult",
    "Trial",
    "build_protocol",
    "evaluate_protocol",
    "evaluate_ranking",
    "feature_distance_fn",
    "load_features",
    "pair_keys",
    "pairwise_distance",
    "pool_from_samples",
    "save_features",
    "validate_features",
]
