"""The embedding's projection (the model contract's OUTPUT_EMBEDDING): a PCA of a model's feature layer.

Numpy only, so any exporter can share it: the trained model's (components/trainer.py fits it on its
training faces) and an adopted model's (components/adopt.py fits it on the faces at hand).
"""

from __future__ import annotations

import numpy as np

from moodloop.core.contracts import EMBEDDING_DIMS


def pca_projection(values: np.ndarray, dims: int = EMBEDDING_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], components [D, dims]) of `values` [N, D]: embedding = (features - mean) @ components.

    Fewer features or faces than `dims` leave the missing components zero: the embedding keeps the
    contract's width whatever the model, and the drift job always finds the same columns."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    mean = values.mean(axis=0)
    _, _, vt = np.linalg.svd(values - mean, full_matrices=False)
    components = np.zeros((values.shape[1], dims))
    kept = vt[:dims].T
    components[:, : kept.shape[1]] = kept
    return mean.astype(np.float32), components.astype(np.float32)
