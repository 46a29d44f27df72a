"""Conflict matrix of dataset gradients and its PCA embedding, in float64 on the host.

K = G Gᵀ is accumulated blockwise over columns of the (T, P) strided gradients G, and the
cosine ("conflict") matrix is C = D⁻¹ K D⁻¹ with D = diag(‖g_t‖). The embedding z_t is the
top-r PCA scores of C in one of three modes (MERIT, Choi and Kim, arXiv:2606.01717).
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tqdm
from absl import logging

from merit_jax.core.gradients import GradientStore

PCA_MODES = ("rows_colcentered", "gram_eig", "double_centered")

# 2**18 columns keep the float64 block at 2 MiB per dataset (352 MiB for T = 176).
DEFAULT_BLOCK_SIZE = 1 << 18

# A dataset whose gradient norm is below this fraction of the largest one has a direction
# dominated by float32 round-off, so its cosines would be noise.
DEFAULT_MIN_RELATIVE_NORM = 1e-6

# Relative tolerance of the symmetry check on input matrices.
_SYMMETRY_RTOL = 1e-8


def _is_positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _open_vectors(
    sources: GradientStore | Sequence[str | os.PathLike | np.ndarray],
) -> tuple[list[str], list[np.ndarray]]:
    """Return labels and read-only 1-D views of the gradient vectors, checking their lengths."""
    if isinstance(sources, GradientStore):
        labels = [str(path) for path in sources.paths()]
        vectors = [sources.load(name, mmap=True) for name in sources.names()]
    else:
        labels, vectors = [], []
        for index, source in enumerate(sources):
            if isinstance(source, np.ndarray):
                labels.append(f"array {index}")
                vectors.append(source)
            else:
                labels.append(str(source))
                vectors.append(np.load(source, mmap_mode="r"))

    if not vectors:
        raise ValueError("gram_blockwise needs at least one gradient vector")
    length = vectors[0].shape
    for label, vector in zip(labels, vectors):
        if vector.ndim != 1 or vector.shape != length:
            raise ValueError(
                f"gradient {label} has shape {vector.shape}, but {labels[0]} has {length}; "
                "every dataset needs a 1-D vector over the same strided coordinates"
            )
    return labels, vectors


def gram_blockwise(
    sources: GradientStore | Sequence[str | os.PathLike | np.ndarray],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: bool = False,
) -> np.ndarray:
    """Compute K = G Gᵀ (float64, (T, T)) from T gradient vectors of length P, block by block.

    `.npy` files are memory-mapped and read one column block at a time. The only copy of G in
    process memory is one (T, block_size) float64 block, and the mapped pages are page cache.
    """
    if not _is_positive_int(block_size):
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    _, vectors = _open_vectors(sources)
    num_datasets, length = len(vectors), vectors[0].shape[0]

    gram = np.zeros((num_datasets, num_datasets), dtype=np.float64)
    block = np.empty((num_datasets, min(block_size, max(length, 1))), dtype=np.float64)
    starts = range(0, length, block_size)
    for start in tqdm.tqdm(starts, desc="gram", disable=not progress, unit="block"):
        stop = min(start + block_size, length)
        rows = block[:, : stop - start]
        for row, vector in zip(rows, vectors):
            row[:] = vector[start:stop]
        gram += rows @ rows.T

    # BLAS may round the two triangles differently, and downstream checks expect symmetry.
    gram = 0.5 * (gram + gram.T)
    logging.info("Gram matrix of %d gradients over %d coordinates", num_datasets, length)
    return gram


def _validate_square(matrix: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {matrix.shape}")
    return matrix


def _validate_square_symmetric(matrix: np.ndarray, name: str) -> np.ndarray:
    matrix = _validate_square(matrix, name)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    scale = max(float(np.max(np.abs(matrix), initial=0.0)), np.finfo(np.float64).tiny)
    asymmetry = float(np.max(np.abs(matrix - matrix.T), initial=0.0))
    if asymmetry > _SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} is not symmetric: max |A - Aᵀ| = {asymmetry:.3g}")
    return matrix


def _validate_norms(
    squared_norms: np.ndarray, names: list[str], min_relative_norm: float
) -> np.ndarray:
    """Return the gradient norms sqrt(K_tt), raising for a non-finite, zero or tiny one."""
    for name, value in zip(names, squared_norms):
        if not np.isfinite(value):
            raise ValueError(
                f"{name}: gradient squared norm is {value}; its gradient has NaN or inf entries"
            )

    norms = np.sqrt(np.maximum(squared_norms, 0.0))
    largest = float(np.max(norms, initial=0.0))
    for name, norm in zip(names, norms):
        if not norm > min_relative_norm * largest:
            raise ValueError(
                f"{name}: gradient norm {norm:.3g} is zero or below {min_relative_norm:g} × the "
                f"largest norm {largest:.3g}, so its cosines are meaningless; check its "
                "calibration batches (supervised tokens, loss mask) or drop the dataset"
            )
    return norms


def cosine_from_gram(
    gram: np.ndarray,
    names: Sequence[str] | None = None,
    *,
    min_relative_norm: float = DEFAULT_MIN_RELATIVE_NORM,
) -> np.ndarray:
    """Return C_ij = K_ij / sqrt(K_ii K_jj) (float64, (T, T), diagonal exactly 1, within [−1, 1]).

    Raises ValueError naming the dataset whose gradient norm sqrt(K_tt) is non-finite, zero, or
    below `min_relative_norm` times the largest norm.
    """
    gram = _validate_square(gram, "Gram matrix")
    num_datasets = gram.shape[0]
    names = [f"dataset {index}" for index in range(num_datasets)] if names is None else list(names)
    if len(names) != num_datasets:
        raise ValueError(f"got {len(names)} names for a Gram matrix of {num_datasets} datasets")

    norms = _validate_norms(np.diagonal(gram), names, min_relative_norm)
    gram = _validate_square_symmetric(gram, "Gram matrix")

    cosine = gram / np.outer(norms, norms)
    cosine = np.clip(0.5 * (cosine + cosine.T), -1.0, 1.0)
    np.fill_diagonal(cosine, 1.0)
    return cosine


@dataclasses.dataclass(frozen=True)
class PCAResult:
    """Top-r PCA embedding of a (T, T) conflict matrix.

    Every mode factors a PSD matrix M = U Λ Uᵀ and sets scores = U_r Λ_r^{1/2}: M = X_c X_cᵀ
    (rows_colcentered, via the SVD of X_c), M = C (gram_eig) or M = J C J (double_centered).

    scores: (T, r) float64, z_t = scores[t].
    explained_variance_ratio: (r,) Λ_j / Σ_i Λ_i.
    eigenvalues: (T,) Λ in descending order (negative round-off clipped to 0).
    singular_values: (T,) Λ^{1/2}, the singular values of X_c in rows_colcentered mode.
    components: (r, T) principal axes in the column space of C: V_rᵀ from X_c = U S Vᵀ in
        rows_colcentered mode, U_rᵀ in the eigen modes.
    """

    scores: np.ndarray
    explained_variance_ratio: np.ndarray
    eigenvalues: np.ndarray
    singular_values: np.ndarray
    components: np.ndarray
    mode: str


def _eigh_descending(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return eigenvalues[::-1], eigenvectors[:, ::-1]


def _apply_sign_convention(scores: np.ndarray, components: np.ndarray) -> None:
    """Flip each axis in place so that its largest-|score| dataset has a positive score.

    Ties in |score| go to the lowest dataset index.
    """
    for axis in range(scores.shape[1]):
        leader = int(np.argmax(np.abs(scores[:, axis])))
        if scores[leader, axis] < 0:
            scores[:, axis] *= -1.0
            components[axis] *= -1.0


def pca_embedding(cosine: np.ndarray, r: int, *, mode: str = "rows_colcentered") -> PCAResult:
    """Embed the T datasets of a conflict matrix C (T, T) into r dimensions, in float64.

    rows_colcentered: X_c = J C with J = I − 11ᵀ/T (each row of C is a dataset's features,
    columns centered), X_c = U S Vᵀ, scores = U_r S_r. gram_eig: C = Q Λ Qᵀ, scores =
    Q_r Λ_r^{1/2}. double_centered: the same for J C J (classical MDS). Each axis is flipped so
    that the dataset with the largest |score| is positive.
    """
    if mode not in PCA_MODES:
        raise ValueError(f"unknown PCA mode {mode!r}; expected one of {PCA_MODES}")
    cosine = _validate_square_symmetric(cosine, "conflict matrix")
    num_datasets = cosine.shape[0]
    if not _is_positive_int(r) or r > num_datasets - 1:
        raise ValueError(
            f"PCA dimension r must be an integer in [1, T − 1] = [1, {num_datasets - 1}], "
            f"got {r!r}"
        )

    if mode == "rows_colcentered":
        centered = cosine - cosine.mean(axis=0, keepdims=True)
        left, singular_values, right_t = np.linalg.svd(centered)
        eigenvalues = singular_values**2
        scores = left[:, :r] * singular_values[:r]
        components = right_t[:r].copy()
    else:
        matrix = cosine
        if mode == "double_centered":
            centering = np.eye(num_datasets) - 1.0 / num_datasets
            matrix = centering @ cosine @ centering
        eigenvalues, eigenvectors = _eigh_descending(0.5 * (matrix + matrix.T))
        # C is a Gram matrix of unit vectors, so C and J C J are PSD and negative
        # eigenvalues are round-off.
        eigenvalues = np.maximum(eigenvalues, 0.0)
        singular_values = np.sqrt(eigenvalues)
        scores = eigenvectors[:, :r] * singular_values[:r]
        components = eigenvectors[:, :r].T.copy()

    total = float(np.sum(eigenvalues))
    if not total > 0:
        raise ValueError(
            f"the conflict matrix has no variance to embed in {mode} mode (all eigenvalues are 0)"
        )
    if eigenvalues[r - 1] <= 1e-12 * eigenvalues[0]:
        logging.warning(
            "PCA (%s): component %d has zero variance (rank below r = %d), so a split along "
            "it is arbitrary", mode, r, r,
        )

    _apply_sign_convention(scores, components)
    ratio = eigenvalues[:r] / total
    logging.info(
        "PCA (%s, r = %d): explained variance ratio %s", mode, r, np.round(ratio, 4).tolist()
    )
    return PCAResult(scores, ratio, eigenvalues, singular_values, components, mode)
