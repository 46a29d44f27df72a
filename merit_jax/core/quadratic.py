"""Toy quadratic losses on which MERIT's merging theory is exact, in float64 NumPy.

Under L(θ) = ½(θ − θ⋆)ᵀH(θ − θ⋆) + c the merge θ̄_w = Σ_i w_i θ_i has the merging gain
Σ_i w_i L(θ_i) − L(θ̄_w) = ½ Σ_i w_i (δ_i − δ̄_w)ᵀH(δ_i − δ̄_w), δ_i = θ_i − θ⋆ (Choi and Kim,
arXiv:2606.01717, Theorem 3.1 and App. F). The linear–quadratic model of App. F.4 gives every
dataset t its own optimum θ_t⋆ under one shared H.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# Tolerance on Σ_i w_i = 1. The identities below are exact for any weights with that sum.
_WEIGHT_SUM_ATOL = 1e-12


def random_orthogonal(rng: np.random.Generator, dimension: int) -> np.ndarray:
    """Draw a Haar-distributed orthogonal matrix (d, d) from the QR factors of a Gaussian matrix."""
    q, r = np.linalg.qr(rng.normal(size=(dimension, dimension)))
    # Fixing the signs of R's diagonal makes the distribution uniform (Mezzadri 2007).
    return q * np.sign(np.diagonal(r))


def hessian_from_spectrum(
    eigenvalues: Sequence[float], basis: np.ndarray | None = None
) -> np.ndarray:
    """Return H = U diag(λ) Uᵀ (d, d) for eigenvalues λ (d,) and orthonormal columns U (or I)."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    if basis is None:
        return np.diag(eigenvalues)
    basis = np.asarray(basis, dtype=np.float64)
    hessian = (basis * eigenvalues) @ basis.T
    return 0.5 * (hessian + hessian.T)


def random_psd_hessian(
    rng: np.random.Generator, dimension: int, rank: int | None = None
) -> np.ndarray:
    """Draw a Wishart Hessian H = F Fᵀ / rank (d, d) with F ~ N(0, 1)^(d × rank).

    H is singular when rank < d.
    """
    rank = dimension if rank is None else rank
    if not 1 <= rank <= dimension:
        raise ValueError(f"rank must be in [1, {dimension}], got {rank}")
    factor = rng.normal(size=(dimension, rank))
    hessian = factor @ factor.T / rank
    return 0.5 * (hessian + hessian.T)


def random_indefinite_hessian(
    rng: np.random.Generator,
    dimension: int,
    negative_eigenvalues: Sequence[float] = (-1.0,),
    positive_range: tuple[float, float] = (0.5, 2.0),
) -> np.ndarray:
    """Draw H (d, d) in a random basis with the given negative eigenvalues.

    The other eigenvalues are uniform in positive_range.
    """
    negative = np.asarray(negative_eigenvalues, dtype=np.float64)
    if np.any(negative >= 0):
        raise ValueError(f"negative_eigenvalues must all be < 0, got {negative.tolist()}")
    positive = rng.uniform(*positive_range, size=dimension - negative.size)
    eigenvalues = np.concatenate([negative, positive])
    return hessian_from_spectrum(eigenvalues, random_orthogonal(rng, dimension))


@dataclasses.dataclass(frozen=True)
class QuadraticLoss:
    """L(θ) = ½(θ − θ⋆)ᵀH(θ − θ⋆) + bᵀθ + c on θ ∈ R^d, evaluated in float64.

    hessian: H (d, d), symmetric, not necessarily PSD. center: θ⋆ (d,), the minimizer when
    linear is None and H ≻ 0. linear: b (d,) or None. offset: c.
    """

    hessian: np.ndarray
    center: np.ndarray
    offset: float = 0.0
    linear: np.ndarray | None = None

    def __post_init__(self):
        # The dataclass is frozen, so the float64 copies are set through object.__setattr__.
        center = np.asarray(self.center, dtype=np.float64)
        hessian = np.asarray(self.hessian, dtype=np.float64)
        if center.ndim != 1 or hessian.shape != (center.size, center.size):
            raise ValueError(
                f"hessian {hessian.shape} and center {center.shape} must be (d, d) and (d,)"
            )
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "hessian", hessian)
        object.__setattr__(self, "offset", float(self.offset))
        if self.linear is not None:
            object.__setattr__(self, "linear", np.asarray(self.linear, dtype=np.float64))

    @property
    def dimension(self) -> int:
        """Number of parameters d."""
        return int(self.center.shape[0])

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        """Return L(θ) for θ of shape (..., d), as an array of shape (...)."""
        delta = np.asarray(theta, dtype=np.float64) - self.center
        value = 0.5 * np.einsum("...i,ij,...j->...", delta, self.hessian, delta) + self.offset
        if self.linear is not None:
            value = value + np.asarray(theta, dtype=np.float64) @ self.linear
        return value

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """Return ∇L(θ) = H(θ − θ⋆) + b for θ of shape (..., d)."""
        delta = np.asarray(theta, dtype=np.float64) - self.center
        gradient = delta @ self.hessian.T
        return gradient if self.linear is None else gradient + self.linear


def mix_quadratics(losses: Sequence[QuadraticLoss], weights: Sequence[float]) -> QuadraticLoss:
    """Return Σ_k w_k L_k as one QuadraticLoss with center 0, so that no H⁻¹ is needed.

    Expanding each L_k about 0 gives Hessian Σ_k w_k H_k, linear term Σ_k w_k (b_k − H_k θ_k⋆)
    and constant Σ_k w_k (½ θ_k⋆ᵀH_kθ_k⋆ + c_k).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(losses),):
        raise ValueError(f"expected {len(losses)} weights, got shape {weights.shape}")

    dimension = losses[0].dimension
    hessian = np.zeros((dimension, dimension))
    linear = np.zeros(dimension)
    offset = 0.0
    for weight, loss in zip(weights, losses):
        hessian += weight * loss.hessian
        linear += weight * (-loss.hessian @ loss.center)
        if loss.linear is not None:
            linear += weight * loss.linear
        offset += weight * (0.5 * loss.center @ loss.hessian @ loss.center + loss.offset)
    return QuadraticLoss(0.5 * (hessian + hessian.T), np.zeros(dimension), offset, linear)


def cubic_perturbed(
    loss: QuadraticLoss, rho: float, direction: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Return θ ↦ L(θ) + (ρ/6)(uᵀ(θ − θ⋆))³ with u = direction/‖direction‖ and θ⋆ = loss.center.

    The added term R satisfies |R(θ)| ≤ (ρ/6)‖θ − θ⋆‖³, the remainder bound of the paper's
    local quadratic model (Assumption 1(c)).
    """
    unit = np.asarray(direction, dtype=np.float64)
    unit = unit / np.linalg.norm(unit)

    def perturbed(theta: np.ndarray) -> np.ndarray:
        projection = (np.asarray(theta, dtype=np.float64) - loss.center) @ unit
        return loss(theta) + rho / 6.0 * projection**3

    return perturbed


def _validate_weights(weights: Sequence[float], count: int) -> np.ndarray:
    """Return weights (K,) in float64, which must sum to 1 but may be negative (affine merges)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,):
        raise ValueError(f"expected {count} weights, got shape {weights.shape}")
    if not np.all(np.isfinite(weights)) or abs(weights.sum() - 1.0) > _WEIGHT_SUM_ATOL:
        raise ValueError(f"weights must be finite and sum to 1, got {weights.tolist()}")
    return weights


def _validate_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"expected K points of shape (K, d), got shape {points.shape}")
    return points


def merged_point(thetas: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Return θ̄_w = Σ_i w_i θ_i (d,) for thetas (K, d)."""
    thetas = _validate_points(thetas)
    return _validate_weights(weights, thetas.shape[0]) @ thetas


def merge_gain(
    loss: Callable[[np.ndarray], np.ndarray], thetas: np.ndarray, weights: Sequence[float]
) -> float:
    """Return Σ_i w_i L(θ_i) − L(θ̄_w) for thetas (K, d) and any loss L on (d,) vectors."""
    thetas = _validate_points(thetas)
    weights = _validate_weights(weights, thetas.shape[0])
    branch_losses = np.array([float(loss(theta)) for theta in thetas])
    return float(weights @ branch_losses - float(loss(weights @ thetas)))


def weighted_variance(values: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Return Var_w(x) = Σ_i w_i x_i² − (Σ_i w_i x_i)² over axis 0 of values (K, ...)."""
    values = np.asarray(values, dtype=np.float64)
    weights = _validate_weights(weights, values.shape[0])
    mean = np.tensordot(weights, values, axes=1)
    return np.tensordot(weights, values**2, axes=1) - mean**2


def gain_spectral(hessian: np.ndarray, deltas: np.ndarray, weights: Sequence[float]) -> float:
    """Return ½ Σ_ℓ λ_ℓ Var_w(u_ℓᵀδ_i) for eigenpairs (λ_ℓ, u_ℓ) of H and deltas (K, d)."""
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    projections = _validate_points(deltas) @ eigenvectors
    return float(0.5 * eigenvalues @ weighted_variance(projections, weights))


def gain_centered(hessian: np.ndarray, deltas: np.ndarray, weights: Sequence[float]) -> float:
    """Return ½ Σ_i w_i (δ_i − δ̄_w)ᵀH(δ_i − δ̄_w) for deltas (K, d)."""
    deltas = _validate_points(deltas)
    weights = _validate_weights(weights, deltas.shape[0])
    centered = deltas - weights @ deltas
    return float(0.5 * weights @ np.einsum("ki,ij,kj->k", centered, hessian, centered))


def gain_pairwise(hessian: np.ndarray, deltas: np.ndarray, weights: Sequence[float]) -> float:
    """Return ¼ Σ_i Σ_j w_i w_j (δ_i − δ_j)ᵀH(δ_i − δ_j) for deltas (K, d)."""
    deltas = _validate_points(deltas)
    weights = _validate_weights(weights, deltas.shape[0])
    differences = deltas[:, None, :] - deltas[None, :, :]
    forms = np.einsum("abi,ij,abj->ab", differences, hessian, differences)
    return float(0.25 * weights @ forms @ weights)


def gain_uniform_pairwise(hessian: np.ndarray, deltas: np.ndarray) -> float:
    """Return (1/(4K²)) Σ_i Σ_j (δ_i − δ_j)ᵀH(δ_i − δ_j), the uniform-weight form (Theorem F.1)."""
    deltas = _validate_points(deltas)
    differences = deltas[:, None, :] - deltas[None, :, :]
    forms = np.einsum("abi,ij,abj->ab", differences, hessian, differences)
    return float(forms.sum() / (4.0 * deltas.shape[0] ** 2))


def first_order_gain(
    hessian: np.ndarray,
    group_gradients: np.ndarray,
    weights: Sequence[float],
    learning_rate: float,
) -> float:
    """Return (η²/2) Σ_k w_k (ḡ_k − ḡ_w)ᵀH(ḡ_k − ḡ_w), the gain after one GD step δ_k = −η ḡ_k.

    group_gradients: (K, d) mean gradient ḡ_k of each group at θ(0). For K = 2 and w = (½, ½)
    this is the paper's Eq. 7, (η²/8)(ḡ_1 − ḡ_2)ᵀH(ḡ_1 − ḡ_2).
    """
    return learning_rate**2 * gain_centered(hessian, group_gradients, weights)


@dataclasses.dataclass(frozen=True)
class ParallelAxisTerms:
    """Euclidean terms of Σ_i w_i‖δ_i‖² = ‖δ̄_w‖² + Σ_i w_i‖δ_i − δ̄_w‖² (Eq. 11, weighted).

    mean_square: Σ_i w_i‖δ_i‖². merged_square: ‖δ̄_w‖². spread: Σ_i w_i‖δ_i − δ̄_w‖².
    Eq. 2 of the paper is merged_square ≤ mean_square, which needs w ≥ 0.
    """

    mean_square: float
    merged_square: float
    spread: float


def parallel_axis_terms(deltas: np.ndarray, weights: Sequence[float]) -> ParallelAxisTerms:
    """Compute the three terms of the weighted parallel-axis identity for deltas (K, d)."""
    deltas = _validate_points(deltas)
    weights = _validate_weights(weights, deltas.shape[0])
    merged = weights @ deltas
    return ParallelAxisTerms(
        mean_square=float(weights @ np.sum(deltas**2, axis=1)),
        merged_square=float(merged @ merged),
        spread=float(weights @ np.sum((deltas - merged) ** 2, axis=1)),
    )


def cubic_remainder_bound(deltas: np.ndarray, weights: Sequence[float], rho: float) -> float:
    """Return (ρ/6)(‖δ̄_w‖³ + Σ_i w_i‖δ_i‖³), the bound on |Δ_HO| of Theorem F.2 (w ≥ 0)."""
    deltas = _validate_points(deltas)
    weights = _validate_weights(weights, deltas.shape[0])
    norms = np.linalg.norm(deltas, axis=1)
    return float(rho / 6.0 * (np.linalg.norm(weights @ deltas) ** 3 + weights @ norms**3))


def gradient_descent(
    loss: QuadraticLoss, theta0: np.ndarray, learning_rate: float, num_steps: int
) -> np.ndarray:
    """Run θ_{s+1} = θ_s − η∇L(θ_s) and return the trajectory (num_steps + 1, d), θ_0 first."""
    trajectory = np.empty((num_steps + 1, loss.dimension))
    trajectory[0] = theta0
    with np.errstate(over="ignore", invalid="ignore"):
        # A divergent run overflows to inf; callers detect that with `is_divergent`.
        for step in range(num_steps):
            gradient = loss.gradient(trajectory[step])
            trajectory[step + 1] = trajectory[step] - learning_rate * gradient
    return trajectory


def stability_threshold(hessian: np.ndarray) -> float:
    """Return 2/λ_max, the step size above which GD on a quadratic with Hessian H diverges.

    Returns inf when λ_max ≤ 0.
    """
    largest = float(np.linalg.eigvalsh(hessian)[-1])
    return 2.0 / largest if largest > 0 else float("inf")


def is_divergent(losses: Sequence[float], reference_loss: float, ratio: float = 1.5) -> bool:
    """Return whether any loss is non-finite or above ratio × reference_loss.

    This is the learning-rate sweep's divergence rule, with reference_loss = L(θ(0)).
    """
    losses = np.asarray(losses, dtype=np.float64)
    if not np.all(np.isfinite(losses)):
        return True
    return bool(np.any(losses > ratio * reference_loss))


@dataclasses.dataclass(frozen=True)
class LinearQuadraticModel:
    """T datasets with losses L_t(θ) = ½(θ − θ_t⋆)ᵀH(θ − θ_t⋆) under one shared H (App. F.4).

    hessian: H (d, d). optima: θ_t⋆ (T, d). token_counts: n_t (T,), the weights of the
    token-weighted mixture L = Σ_t n_t L_t / Σ_t n_t (uniform in the paper's model).
    """

    hessian: np.ndarray
    optima: np.ndarray
    token_counts: np.ndarray

    @classmethod
    def from_displacements(
        cls,
        hessian: np.ndarray,
        displacements: np.ndarray,
        center: np.ndarray | None = None,
        token_counts: Sequence[float] | None = None,
    ) -> "LinearQuadraticModel":
        """Build θ_t⋆ = θ̄⋆ + Δ_t after centering Δ (T, d) so that Σ_t n_t Δ_t = 0."""
        displacements = np.asarray(displacements, dtype=np.float64)
        num_datasets, dimension = displacements.shape
        counts = np.ones(num_datasets) if token_counts is None else np.asarray(token_counts, float)
        center = np.zeros(dimension) if center is None else np.asarray(center, dtype=np.float64)
        displacements = displacements - (counts / counts.sum()) @ displacements
        return cls(np.asarray(hessian, dtype=np.float64), center + displacements, counts)

    @property
    def num_datasets(self) -> int:
        """Number of datasets T."""
        return int(self.optima.shape[0])

    @property
    def mixture_weights(self) -> np.ndarray:
        """Token weights n_t / Σ_j n_j (T,)."""
        return self.token_counts / self.token_counts.sum()

    @property
    def joint_optimum(self) -> np.ndarray:
        """θ̄⋆ = Σ_t n_t θ_t⋆ / Σ_t n_t (d,), the minimizer of the mixture loss when H ≻ 0."""
        return self.mixture_weights @ self.optima

    @property
    def displacements(self) -> np.ndarray:
        """Δ_t = θ_t⋆ − θ̄⋆ (T, d), with token-weighted sum 0."""
        return self.optima - self.joint_optimum

    def gradients(self, theta: np.ndarray) -> np.ndarray:
        """Return g_t = H(θ − θ_t⋆) for every dataset (T, d), which is −HΔ_t at θ = θ̄⋆."""
        return (np.asarray(theta, dtype=np.float64) - self.optima) @ self.hessian.T

    def group_loss(self, group: Sequence[int]) -> QuadraticLoss:
        """Return the token-weighted mean loss of the datasets in `group` as one QuadraticLoss.

        With a shared H it is ½(θ − c)ᵀH(θ − c) + ½ Σ_t a_t (θ_t⋆ − c)ᵀH(θ_t⋆ − c), where a_t are
        the normalized token weights of the group and c = Σ_t a_t θ_t⋆.
        """
        group = list(group)
        if not group:
            raise ValueError("a group must contain at least one dataset")
        shares = self.token_counts[group] / self.token_counts[group].sum()
        center = shares @ self.optima[group]
        spread = self.optima[group] - center
        offset = 0.5 * shares @ np.einsum("ti,ij,tj->t", spread, self.hessian, spread)
        return QuadraticLoss(self.hessian, center, float(offset))

    def mixture_loss(self) -> QuadraticLoss:
        """Return the token-weighted mixture loss L = Σ_t n_t L_t / Σ_t n_t."""
        return self.group_loss(range(self.num_datasets))


def gaussian_kl(
    mean_q: np.ndarray, mean_p: np.ndarray, sigma_q: float, sigma_p: float
) -> float:
    """Return KL(N(μ_q, σ_q²I) ‖ N(μ_p, σ_p²I)) in nats for means of shape (d,).

    KL = (d/2)(σ_q²/σ_p² − 1 − ln(σ_q²/σ_p²)) + ‖μ_q − μ_p‖²/(2σ_p²).
    """
    difference = np.asarray(mean_q, dtype=np.float64) - np.asarray(mean_p, dtype=np.float64)
    ratio = (sigma_q / sigma_p) ** 2
    return float(0.5 * difference.size * (ratio - 1.0 - np.log(ratio))
                 + difference @ difference / (2.0 * sigma_p**2))


def pac_bayes_kl(theta: np.ndarray, theta0: np.ndarray, sigma: float) -> float:
    """Return KL(N(θ, σ²I) ‖ N(θ(0), σ²I)) = ‖θ − θ(0)‖²/(2σ²), the PAC-Bayes complexity term."""
    difference = np.asarray(theta, dtype=np.float64) - np.asarray(theta0, dtype=np.float64)
    return float(difference @ difference / (2.0 * sigma**2))
