"""Using a trained model: feature extraction (and, later, search, export and visualisation)."""

from vireid.inference.extract import extract_features

__all__ = ["extract_features"]
