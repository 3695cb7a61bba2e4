"""Loss functions: plain functions of tensors, each computed in float32 whatever the autocast state.

Supervised (AGW, CAJ, MSCLNet): :func:`cross_entropy`, :func:`circle_logits`, :func:`weighted_regularized_triplet`,
:func:`enhanced_squared_difference` (CAJ's ESD),
:func:`batch_hard_triplet`, and the MSCLNet terms :func:`modality_diversity`, :func:`local_complement`,
:func:`global_complement`, :func:`subclass_center`, :func:`intra_center`, :func:`inter_center`.
Mutual learning (AML): :func:`symmetric_kl`, :func:`similarity_structure`, :func:`distance_structure`; AML's
stage-2 cluster memory (a module, updated in backward): :class:`ClusterMemory`.
Weighting and switching terms off: :func:`combine`, :func:`enabled`.

Example::

    from vireid import losses
    w = {"ce": 1.0, "wrt": 1.0}
    terms = {"ce": losses.cross_entropy(out.logits, labels)}
    if losses.enabled(w, "wrt"):
        terms["wrt"] = losses.weighted_regularized_triplet(out.pooled, labels)
    total, logs = losses.combine(terms, w)
"""

from .aml import distance_structure, similarity_structure, symmetric_kl
from .classification import circle_logits, cross_entropy
from .combine import combine, enabled
from .memory import ClusterMemory
from .metric import (
    batch_hard_triplet,
    enhanced_squared_difference,
    pairwise_euclidean,
    weighted_regularized_triplet,
)
from .msclnet import (
    global_complement,
    inter_center,
    intra_center,
    local_complement,
    modality_diversity,
    subclass_center,
)

__all__ = [
    "ClusterMemory",
    "batch_hard_triplet",
    "circle_logits",
    "combine",
    "cross_entropy",
    "distance_structure",
    "enabled",
    "enhanced_squared_difference",
    "global_complement",
    "inter_center",
    "intra_center",
    "local_complement",
    "modality_diversity",
    "pairwise_euclidean",
    "similarity_structure",
    "subclass_center",
    "symmetric_kl",
    "weighted_regularized_triplet",
]
