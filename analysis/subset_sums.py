"""Storage of per-task subset gradient sums (D sets × T tasks) for recomputing PCA splits.

The split of draw d needs the T × T cosines of the tasks' d-th subset means, which only exist
once every task is processed. `ExactSums` keeps the strided sums in a memory-mapped scratch file
(D × T × P/s float32 on disk). `SketchedSums` keeps count sketches in memory instead, for models
where that file would not fit, and its cosines are off by about 1/√dimension.
"""

import os
import shutil
import tempfile

import numpy as np

from analysis import noise_scale
from analysis.example_gradients import gram


class ExactSums:
    """Exact strided subset sums in a scratch `.npy` memory map, deleted by `close`."""

    description = "exact strided coordinates"

    def __init__(self, directory, num_sets: int, num_tasks: int, length: int):
        os.makedirs(directory, exist_ok=True)
        self._scratch = tempfile.mkdtemp(prefix=".subset-sums-", dir=directory)
        self._sums = np.lib.format.open_memmap(os.path.join(self._scratch, "sums.npy"), mode="w+", dtype=np.float32,
                                               shape=(num_sets, num_tasks, length))

    def add(self, task: int, sums: np.ndarray) -> None:
        self._sums[:, task, :] = sums

    def gram(self, index: int) -> np.ndarray:
        """Return the Gram matrix (T, T) of the tasks' sums of set `index`, in float64."""
        return gram(np.asarray(self._sums[index]))

    def close(self) -> None:
        del self._sums
        shutil.rmtree(self._scratch, ignore_errors=True)


class SketchedSums:
    """Count sketches (D × T × dimension) of the subset sums, held in memory."""

    def __init__(self, rng, num_sets: int, num_tasks: int, length: int, dimension: int):
        self.description = f"count sketch of dimension {dimension} (cosine error about {1 / np.sqrt(dimension):.3f})"
        self._sketch = noise_scale.count_sketch(rng, length, dimension)
        self._sums = np.zeros((num_sets, num_tasks, dimension), dtype=np.float32)

    def add(self, task: int, sums: np.ndarray) -> None:
        self._sums[:, task, :] = np.asarray(self._sketch.T @ sums.T).T

    def gram(self, index: int) -> np.ndarray:
        vectors = self._sums[index].astype(np.float64)
        return vectors @ vectors.T

    def close(self) -> None:
        self._sums = None
