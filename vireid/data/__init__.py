"""Data side of vireid: records, dataset parsers, synthetic layouts, image cache, samplers and transforms."""

from vireid.data.records import INFRARED, VISIBLE, CrossModalDataset, Modality, Problem, Sample

__all__ = ["CrossModalDataset", "INFRARED", "Modality", "Problem", "Sample", "VISIBLE"]
