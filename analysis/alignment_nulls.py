"""Alignment metrics between direction sets and Hessian eigenvectors, and their null distributions.

Every direction here is a combination Gᵀc of the T full-coordinate task gradients, so with the
Gram matrix K = GGᵀ (T, T) and A = GVᵀ (T, k) for the eigenvectors V (k, P), all metrics of a
direction set follow from its coefficients (r, T) without another P-length vector. The uniform
null is exact for random unit vectors in R^P: for a Haar-random r-frame U, VᵀU has the law of
A(AᵀA + W)^(−1/2) with A ~ N(0, 1)^(k×r) and W ~ Wishart_r(P − k, I).
"""

import numpy as np
from scipy import special, stats


def orthonormal_coefficients(coefficients: np.ndarray, gram: np.ndarray, tolerance: float = 1e-10) -> np.ndarray:
    """Orthonormalize the directions Gᵀc_i symmetrically (Löwdin): S^(−1/2)C in the metric K.

    Directions that are already orthogonal keep their order and only get unit norm. Raises
    ValueError when the directions are linearly dependent (S singular).
    """
    coefficients = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
    overlap = coefficients @ gram @ coefficients.T
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (overlap + overlap.T))
    if eigenvalues.min() <= tolerance * max(eigenvalues.max(), 1e-300):
        raise ValueError("the directions are linearly dependent; cannot orthonormalize them")
    inverse_root = eigenvectors @ np.diag(eigenvalues ** -0.5) @ eigenvectors.T
    return inverse_root @ coefficients


def metrics_from_cosines(cosines: np.ndarray) -> dict:
    """Compute alignment metrics from the cosines of orthonormal directions (rows) with eigenvectors (columns)."""
    cosines = np.atleast_2d(cosines)
    absolute = np.abs(cosines)
    principal = np.clip(np.linalg.svd(cosines, compute_uv=False), 0.0, 1.0)
    energy = np.sum(cosines**2, axis=1)
    return {
        "abs_cos": absolute,
        "max_abs_cos": float(absolute.max()),
        "mean_top1_abs_cos": float(absolute.max(axis=1).mean()),
        "principal_cosines": principal,
        "leading_angle_deg": float(np.degrees(np.arccos(principal[0]))),
        "energy_per_direction": energy,
        "subspace_energy": float(energy.mean()),
    }


def alignment_metrics(coefficients: np.ndarray, gram: np.ndarray, projections: np.ndarray) -> dict:
    """Compute the metrics of the directions Gᵀc_i (orthonormalized) against V from A = GVᵀ (T, k)."""
    orthonormal = orthonormal_coefficients(coefficients, gram)
    return metrics_from_cosines(orthonormal @ projections)


SCALAR_METRICS = ("max_abs_cos", "mean_top1_abs_cos", "leading_angle_deg", "subspace_energy")


def uniform_null(rng: np.random.Generator, size: int, k: int, r: int, draws: int) -> dict:
    """Sample the scalar metrics of `draws` uniformly random r-frames in R^size against a fixed k-frame."""
    samples = {name: np.empty(draws) for name in SCALAR_METRICS}
    degrees = size - k
    for draw in range(draws):
        projections = rng.standard_normal((k, r))
        # Bartlett: W = LLᵀ, L lower triangular, L_ii² ~ χ²(ν − i), L_ij ~ N(0, 1) below the diagonal.
        lower = np.tril(rng.standard_normal((r, r)), k=-1)
        lower[np.diag_indices(r)] = np.sqrt(rng.chisquare(degrees - np.arange(r)))
        overlap = projections.T @ projections + lower @ lower.T
        eigenvalues, eigenvectors = np.linalg.eigh(overlap)
        frame = projections @ eigenvectors @ np.diag(eigenvalues ** -0.5) @ eigenvectors.T
        metrics = metrics_from_cosines(frame.T)
        for name in SCALAR_METRICS:
            samples[name][draw] = metrics[name]
    return samples


def beta_log_tail(x: float, a: float, b: float) -> float:
    """Return log P(X ≥ x) for X ~ Beta(a, b), also where the probability underflows float64.

    Uses `scipy.stats.beta.logsf` while it is finite. Beyond that it uses the leading term of
    Laplace's method at the lower limit, log f(x) − log(−(log f)'(x)) with f the density, whose
    relative error is O(1/(b·x)), tiny in the far tail where it is used.
    """
    exact = float(stats.beta.logsf(x, a, b))
    if np.isfinite(exact) and exact > -700:
        return exact
    log_density = (a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - special.betaln(a, b)
    slope = (a - 1) / x - (b - 1) / (1 - x)
    return float(log_density - np.log(-slope))


def uniform_tails(size: int, k: int, max_abs_cos: float, energies) -> dict:
    """Compute exact tails for uniform unit vectors: cos² ~ Beta(½, (P−1)/2), ‖Vᵀu‖² ~ Beta(k/2, (P−k)/2)."""
    log_mean = special.gammaln(size / 2.0) - special.gammaln((size + 1) / 2.0) - 0.5 * np.log(np.pi)
    return {
        "expected_abs_cos": float(np.exp(log_mean)),
        "sd_abs_cos": float(np.sqrt(1.0 / size - np.exp(2 * log_mean))),
        "log10_p_single_pair_abs_cos_ge_observed_max": beta_log_tail(max_abs_cos**2, 0.5, (size - 1) / 2.0) / np.log(10),
        "log10_p_energy_per_direction": [beta_log_tail(e, k / 2.0, (size - k) / 2.0) / np.log(10) for e in energies],
        "expected_energy_per_direction": k / size,
    }


def span_coefficients(rng: np.random.Generator, gram: np.ndarray, r: int, tolerance: float = 1e-10) -> np.ndarray:
    """Draw the coefficients (r, T) of r isotropic Gaussian directions inside span{g_1, …, g_T}.

    An orthonormal basis of the span is q_j = Gᵀu_j / √σ_j from K = UΣUᵀ, so Σ_j z_j q_j with
    z ~ N(0, I) has coefficients UΣ^(−1/2)z.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    keep = eigenvalues > tolerance * eigenvalues.max()
    basis = eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])
    return (basis @ rng.standard_normal((int(keep.sum()), r))).T


def conflict_coefficients(gram: np.ndarray, tasks: list[int], r: int, centered: bool) -> np.ndarray:
    """Return the top-r eigenvectors of the selected tasks' Gram matrix (double-centered if asked) as (r, T)."""
    sub = gram[np.ix_(tasks, tasks)]
    if centered:
        centering = np.eye(len(tasks)) - 1.0 / len(tasks)
        sub = centering @ sub @ centering
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (sub + sub.T))
    order = np.argsort(eigenvalues)[::-1][:r]
    coefficients = np.zeros((r, gram.shape[0]))
    coefficients[:, tasks] = eigenvectors[:, order].T
    return coefficients


def group_mean_coefficients(groups: list[list[int]], tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return token-weighted group means ḡ_k = Σ_t a_kt g_t as rows a_k (K, T), and weights w_k = N_k / N."""
    tokens = np.asarray(tokens, dtype=np.float64)
    means = np.zeros((len(groups), tokens.size))
    for row, members in enumerate(groups):
        means[row, members] = tokens[members] / tokens[members].sum()
    budgets = np.array([tokens[members].sum() for members in groups])
    return means, budgets / budgets.sum()


def split_gain(curvature: np.ndarray, groups: list[list[int]], tokens: np.ndarray) -> float:
    """Return Σ_k w_k (ḡ_k − ḡ_w)ᵀH(ḡ_k − ḡ_w) from M = GHGᵀ, the first-order merge gain up to η²/2."""
    means, weights = group_mean_coefficients(groups, tokens)
    centered = means - weights @ means
    return float(np.einsum("k,kt,ts,ks->", weights, centered, curvature, centered))


def null_summary(observed: float, samples: np.ndarray, larger_is_aligned: bool = True) -> dict:
    """Compare an observed value with a null sample: mean, sd, 95% interval, percentile, empirical p, ratio."""
    samples = np.asarray(samples, dtype=np.float64)
    extreme = samples >= observed if larger_is_aligned else samples <= observed
    below = samples < observed if larger_is_aligned else samples > observed
    return {
        "observed": float(observed),
        "null_mean": float(samples.mean()),
        "null_sd": float(samples.std(ddof=1)) if samples.size > 1 else 0.0,
        "null_ci95": [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))],
        "percentile": float(100.0 * below.mean()),
        "p_value": float((1 + extreme.sum()) / (1 + samples.size)),
        "ratio_to_null_mean": float(observed / samples.mean()) if samples.mean() != 0 else None,
        "draws": int(samples.size),
    }
