"""The validation protocol used for model selection during training (never the test set)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vireid.data.records import Sample
from vireid.evaluation.protocols import ProtocolPlan, Trial, pool_from_samples

__all__ = ["validation_plan"]


def validation_plan(val: Sequence[Sample]) -> ProtocolPlan:
    """IR queries against every RGB image of the held-out identities; standard CMC, nothing removed."""
    pool = pool_from_samples(val, "validation")
    query = np.flatnonzero(pool.modalities == 1)
    gallery = np.flatnonzero(pool.modalities == 0)
    never_q = np.full(len(pool.pids), -1, dtype=np.int64)
    return ProtocolPlan("validation", [Trial(0, query, gallery)], pool.pids, never_q, never_q - 1,
                        cmc="standard", direction="i2v")
