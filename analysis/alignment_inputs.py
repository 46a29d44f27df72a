"""Full-coordinate task gradients at θ0 and their float64 inner products, for the Hessian alignment.

The gradient store keeps strided gradients, but Hessian eigenvectors live in the full flat
coordinates of the trainable subset, so the alignment recomputes the task gradients unstrided.
"""

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from merit_jax.core import gradients as gradients_lib

# Columns per float64 block when multiplying float32 (T, P) matrices on the host.
BLOCK = 1 << 18


def task_batches(ctx, names: list[str], examples_per_task: int, *, resample_rng=None) -> list:
    """Batch the first `examples_per_task` calibration examples of each task, sorted by length.

    With `resample_rng`, each task's examples are drawn with replacement (one bootstrap resample).
    """
    examples = []
    for name in names:
        chosen = list(ctx.encoded(name, "calibration")[:examples_per_task])
        if resample_rng is not None:
            chosen = [chosen[i] for i in resample_rng.integers(0, len(chosen), size=len(chosen))]
        examples += chosen
    examples.sort(key=lambda item: len(item.input_ids))
    # Rows beyond the example count would be padding that still costs a full forward pass.
    batch_size = min(ctx.config.eval.batch_size, len(names) * examples_per_task)
    return list(ctx.family.eval_batches(examples, batch_size=batch_size))


def full_gradients(ctx, theta0: dict, names: list[str], examples_per_task: int, flatten, *, subset=None,
                   resample_rng=None, description: str = "full task gradients") -> np.ndarray:
    """Compute token-weighted mean gradients (T, P) float32 in the Hessian operator's flat coordinates.

    `subset` is the operator's parameter predicate (default: the workdir's trainable parameters).
    """
    rows = []
    for name in tqdm(names, desc=description, unit="task", leave=resample_rng is None):
        batches = task_batches(ctx, [name], examples_per_task, resample_rng=resample_rng)
        mean = gradients_lib.dataset_mean_gradient(ctx.loss_fn, theta0, batches, trainable=subset or ctx.trainable,
                                                   description=name)
        rows.append(np.asarray(flatten(mean.gradient), dtype=np.float32))
    return np.stack(rows)


def rows_dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Multiply a float32 matrix (T, P) by a vector (P,), accumulating in float64 block by block."""
    total = np.zeros(matrix.shape[0])
    for start in range(0, matrix.shape[1], BLOCK):
        total += matrix[:, start : start + BLOCK].astype(np.float64) @ np.asarray(vector[start : start + BLOCK], np.float64)
    return total


def gram_and_projections(gradients: np.ndarray, eigenvectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return K = GGᵀ (T, T) and A = GVᵀ (T, k), both accumulated in float64 over column blocks."""
    gram = np.zeros((gradients.shape[0],) * 2)
    projections = np.zeros((gradients.shape[0], eigenvectors.shape[0]))
    for start in range(0, gradients.shape[1], BLOCK):
        block = gradients[:, start : start + BLOCK].astype(np.float64)
        gram += block @ block.T
        projections += block @ eigenvectors[:, start : start + BLOCK].T
    return 0.5 * (gram + gram.T), projections


def strided_gram(gradients: np.ndarray, stride: int) -> np.ndarray:
    """Gram matrix of the stride-subsampled rows (flat entries i ≡ 0 mod stride), in float64."""
    view = gradients[:, ::stride]
    gram = np.zeros((gradients.shape[0],) * 2)
    for start in range(0, view.shape[1], BLOCK):
        block = view[:, start : start + BLOCK].astype(np.float64)
        gram += block @ block.T
    return 0.5 * (gram + gram.T)


def _cosine(gram: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.diag(gram))
    return gram / np.outer(norms, norms)


def cosine_agreement(first_gram: np.ndarray, second_cosine: np.ndarray) -> dict:
    """Compare the off-diagonal cosines of a Gram matrix with another cosine matrix."""
    upper = np.triu_indices(first_gram.shape[0], k=1)
    a, b = _cosine(first_gram)[upper], second_cosine[upper]
    return {
        "pearson": float(stats.pearsonr(a, b)[0]),
        "spearman": float(stats.spearmanr(a, b)[0]),
        "mean_abs_difference": float(np.mean(np.abs(a - b))),
        "rmse": float(np.sqrt(np.mean((a - b) ** 2))),
    }


def combine_rows(coefficients: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Return Σ_t c_t matrix[t] (P,) for float32 rows, accumulated in float64 block by block."""
    result = np.zeros(matrix.shape[1])
    for start in range(0, matrix.shape[1], BLOCK):
        result[start : start + BLOCK] = np.asarray(coefficients, np.float64) @ matrix[:, start : start + BLOCK].astype(np.float64)
    return result
