"""Balanced splits of the linear–quadratic model and their merging gains, in float64 NumPy.

With shared H, one GD step of size η from θ(0) = θ̄⋆ and a balanced sign vector s ∈ {±1}^T
(Σ_t s_t = 0, group 1 = {t : s_t = +1}), the gain is G_var(s) = η²/(2T²) sᵀMs with M = GHGᵀ,
and a uniformly random balanced s has E[sᵀMs] = T/(T−1) tr M when M1 = 0 (Choi and Kim,
arXiv:2606.01717, App. F.4, Propositions F.10 and F.11).
"""

import itertools
from collections.abc import Sequence

import numpy as np

from merit_jax.core import quadratic

# The three balanced partitions of the four-dataset example (datasets 0..3), group 1 first.
# P1 separates the signs of coordinate 1, P2 those of coordinate 2, P3 cancels both.
FOUR_DATASET_PARTITIONS = {
    "P1": ((0, 2), (1, 3)),
    "P2": ((0, 1), (2, 3)),
    "P3": ((0, 3), (1, 2)),
}


def balanced_signs(num_datasets: int) -> np.ndarray:
    """Return all C(T, T/2) balanced sign vectors as int8 (C(T, T/2), T), both s and −s included."""
    if num_datasets < 2 or num_datasets % 2:
        raise ValueError(f"balanced splits need an even T >= 2, got {num_datasets}")
    combinations = list(itertools.combinations(range(num_datasets), num_datasets // 2))
    signs = -np.ones((len(combinations), num_datasets), dtype=np.int8)
    for row, positive in enumerate(combinations):
        signs[row, list(positive)] = 1
    return signs


def signs_from_groups(group: Sequence[int], num_datasets: int) -> np.ndarray:
    """Return s (T,) int8 with s_t = +1 for t in `group` and −1 otherwise."""
    signs = -np.ones(num_datasets, dtype=np.int8)
    signs[list(group)] = 1
    return signs


def groups_from_signs(signs: np.ndarray) -> tuple[list[int], list[int]]:
    """Return (datasets with s_t = +1, datasets with s_t = −1), each in ascending order."""
    signs = np.asarray(signs)
    return np.flatnonzero(signs > 0).tolist(), np.flatnonzero(signs < 0).tolist()


def gain_matrix(gradients: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Return M = G H Gᵀ (T, T) for gradients G (T, d), so M_ij = Δ_iᵀH³Δ_j when g_t = −HΔ_t."""
    gradients = np.asarray(gradients, dtype=np.float64)
    matrix = gradients @ hessian @ gradients.T
    return 0.5 * (matrix + matrix.T)


def group_mean_difference(signs: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Return ḡ_1 − ḡ_2 = (2/T) Σ_t s_t g_t for balanced signs (..., T) and gradients (T, d)."""
    signs = np.asarray(signs, dtype=np.float64)
    return 2.0 / signs.shape[-1] * signs @ np.asarray(gradients, dtype=np.float64)


def sign_gain(signs: np.ndarray, matrix: np.ndarray, learning_rate: float) -> np.ndarray:
    """Return G_var(s) = η²/(2T²) sᵀMs for balanced signs (..., T), vectorized over leading axes."""
    signs = np.asarray(signs, dtype=np.float64)
    forms = np.einsum("...i,ij,...j->...", signs, matrix, signs)
    return learning_rate**2 / (2.0 * signs.shape[-1] ** 2) * forms


def mean_balanced_form(matrix: np.ndarray) -> float:
    """Return the exact mean of sᵀMs over uniform balanced s, T/(T−1) tr M − 1ᵀM1/(T−1).

    It follows from E[s_t²] = 1 and E[s_i s_j] = −1/(T−1) for i ≠ j. The second term vanishes
    when M1 = 0, which gives Proposition F.10.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    size = matrix.shape[0]
    return float(size / (size - 1) * np.trace(matrix) - matrix.sum() / (size - 1))


def expected_random_gain(matrix: np.ndarray, learning_rate: float) -> float:
    """Return E[G_rand] = η² tr M/(2T(T−1)) of Proposition F.10, which assumes M1 = 0."""
    size = matrix.shape[0]
    return float(learning_rate**2 * np.trace(matrix) / (2.0 * size * (size - 1)))


def principal_signs(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Return (s* = sign(v_1) as int8 (T,), v_1 (T,), μ_1) for the top eigenpair of M.

    Zero entries of v_1 get the sign +1. s* need not be balanced, although Proposition F.11
    assumes it is.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(matrix, dtype=np.float64))
    top = eigenvectors[:, -1]
    signs = np.where(top >= 0, 1, -1).astype(np.int8)
    return signs, top, float(eigenvalues[-1])


def principal_gain_bound(matrix: np.ndarray, learning_rate: float) -> float:
    """Return η²/(2T²) μ_1‖v_1‖_1², the lower bound of Eq. 9 on the gain of s* = sign(v_1)."""
    _, top, largest = principal_signs(matrix)
    size = matrix.shape[0]
    return float(learning_rate**2 / (2.0 * size**2) * largest * np.sum(np.abs(top)) ** 2)


def group_weights(
    model: quadratic.LinearQuadraticModel, groups: Sequence[Sequence[int]]
) -> np.ndarray:
    """Return the token merge weights N_k / Σ_j N_j (K,) of the given groups."""
    budgets = np.array([model.token_counts[list(group)].sum() for group in groups])
    return budgets / budgets.sum()


def train_branches(
    model: quadratic.LinearQuadraticModel,
    groups: Sequence[Sequence[int]],
    learning_rate: float,
    num_steps: int | Sequence[int],
    theta0: np.ndarray | None = None,
) -> np.ndarray:
    """Run GD on each group's loss from θ(0) (default θ̄⋆) and return the branches (K, d).

    num_steps is one count for every branch or one count per group.
    """
    theta0 = model.joint_optimum if theta0 is None else np.asarray(theta0, dtype=np.float64)
    steps = [num_steps] * len(groups) if np.ndim(num_steps) == 0 else list(num_steps)
    if len(steps) != len(groups):
        raise ValueError(f"got {len(steps)} step counts for {len(groups)} groups")
    return np.stack([
        quadratic.gradient_descent(model.group_loss(group), theta0, learning_rate, int(count))[-1]
        for group, count in zip(groups, steps)
    ])


def measured_gain(
    model: quadratic.LinearQuadraticModel,
    groups: Sequence[Sequence[int]],
    learning_rate: float,
    num_steps: int | Sequence[int] = 1,
    theta0: np.ndarray | None = None,
) -> float:
    """Train one GD branch per group and return Σ_k w_k L(θ_k) − L(θ̄_w) on the mixture loss."""
    branches = train_branches(model, groups, learning_rate, num_steps, theta0)
    return quadratic.merge_gain(model.mixture_loss(), branches, group_weights(model, groups))


def factorial_signs(dimension: int) -> np.ndarray:
    """Return the 2^d sign patterns (2^d, d) int8: dataset t is +1 on axis j iff bit j of t is 1."""
    bits = (np.arange(2**dimension)[:, None] >> np.arange(dimension)[None, :]) & 1
    return (2 * bits - 1).astype(np.int8)


def factorial_design(
    eigenvalues: Sequence[float], amplitudes: Sequence[float]
) -> quadratic.LinearQuadraticModel:
    """Build H = diag(λ) (d, d) and one dataset per sign pattern, Δ_t = s_t ⊙ α (T = 2^d).

    The joint optimum θ̄⋆ is 0.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    if eigenvalues.shape != amplitudes.shape or eigenvalues.ndim != 1:
        raise ValueError(
            f"eigenvalues {eigenvalues.shape} and amplitudes {amplitudes.shape} must be equal 1-D"
        )
    displacements = factorial_signs(eigenvalues.size) * amplitudes
    return quadratic.LinearQuadraticModel.from_displacements(np.diag(eigenvalues), displacements)


def factorial_groups(axes: Sequence[int], dimension: int) -> list[list[int]]:
    """Group the datasets of the factorial design by their signs on `axes` (2^len(axes) groups)."""
    signs = factorial_signs(dimension)[:, list(axes)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for dataset, pattern in enumerate(map(tuple, signs)):
        groups.setdefault(pattern, []).append(dataset)
    return [groups[key] for key in sorted(groups)]


def factorial_gain(
    eigenvalues: Sequence[float],
    amplitudes: Sequence[float],
    axes: Sequence[int],
    learning_rate: float,
) -> float:
    """Return (η²/2) Σ_{j ∈ axes} λ_j³α_j², the one-step gain of splitting the factorial design
    by the signs of `axes` (Remark F.13; the constant is our derivation)."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)[list(axes)]
    amplitudes = np.asarray(amplitudes, dtype=np.float64)[list(axes)]
    return float(learning_rate**2 / 2.0 * np.sum(eigenvalues**3 * amplitudes**2))


def four_dataset_model(
    lambda_1: float, lambda_2: float, alpha: float, beta: float
) -> quadratic.LinearQuadraticModel:
    """Build the T = 4, d = 2 example: H = diag(λ_1, λ_2) and Δ_1..Δ_4 = (±α, ±β).

    Dataset order: (α, β), (−α, β), (α, −β), (−α, −β).
    """
    displacements = np.array([[alpha, beta], [-alpha, beta], [alpha, -beta], [-alpha, -beta]])
    return quadratic.LinearQuadraticModel.from_displacements(
        np.diag([lambda_1, lambda_2]), displacements
    )


def four_dataset_gains(
    lambda_1: float, lambda_2: float, alpha: float, beta: float, learning_rate: float
) -> dict[str, float]:
    """Return the closed-form one-step gains of P1, P2, P3 and of a uniformly random partition.

    P1: (η²/2)λ_1³α², P2: (η²/2)λ_2³β², P3: 0, random (Corollary F.7): (η²/6)(λ_1³α² + λ_2³β²).
    """
    first = lambda_1**3 * alpha**2
    second = lambda_2**3 * beta**2
    return {
        "P1": learning_rate**2 / 2.0 * first,
        "P2": learning_rate**2 / 2.0 * second,
        "P3": 0.0,
        "random": learning_rate**2 / 6.0 * (first + second),
    }
