"""Synthetic cross-modality person re-ID datasets written in the real on-disk layouts.

``write_synthetic("sysu_mm01", root)`` writes a SYSU-MM01-shaped dataset (and likewise RegDB, SYSU-MM02, LLCM,
Market-1501, market1501_gen) whose RGB and IR views of a person share geometry (body shape, clothing pattern,
accessories) but not appearance statistics: colours and IR emissivities are drawn independently, so matching
across modalities must rely on modality-invariant cues, as with real data. See docs/layouts.md for the layouts.
"""

from vireid.data.synthetic.writer import (
    DATASETS,
    MANIFEST,
    SynthImage,
    SynthManifest,
    canonical_name,
    describe,
    make_plan,
    write_synthetic,
)

__all__ = [
    "DATASETS", "MANIFEST", "SynthImage", "SynthManifest", "canonical_name", "describe", "make_plan",
    "write_synthetic",
]
