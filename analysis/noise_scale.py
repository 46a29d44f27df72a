"""Noise-scale model of calibration-size sensitivity, and agreement between two splits.

Per-example gradients x_i = μ + ε_i with covariance Σ, noise scale B = tr Σ / ‖μ‖² (the simple
noise scale of McCandlish et al. 2018). In high dimension the cosine between means of n and N
independent examples is [(1 + B/n)(1 + B/N)]^(−1/2). When the n examples are part of the N
(nested), it is √((1 + B/N)/(1 + B/n)), and two disjoint halves of m give 1/(1 + B/m).
"""

import numpy as np
from scipy import optimize, sparse
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

# cos ≥ 0.9 to the true mean needs n ≥ B / (0.9⁻² − 1) ≈ 4.26 B.
N_090_FACTOR = 1.0 / (0.9**-2 - 1.0)


def independent_cosine(noise_scale, n, reference):
    return 1.0 / np.sqrt((1.0 + noise_scale / np.asarray(n)) * (1.0 + noise_scale / np.asarray(reference)))


def nested_cosine(noise_scale, n, reference):
    return np.sqrt((1.0 + noise_scale / np.asarray(reference)) / (1.0 + noise_scale / np.asarray(n)))


def split_half_cosine(noise_scale, m):
    return 1.0 / (1.0 + noise_scale / np.asarray(m))


def effective_n(weights) -> float:
    """Return (Σw)² / Σw² of the example weights (token counts) of one mean."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(weights.sum() ** 2 / np.sum(weights**2))


def fit_noise_scale(model, cosines, *arguments, bounds=(1e-4, 1e7)) -> float:
    """Fit B ≥ 0 of `model(B, *arguments)` to observed cosines by least squares on log B."""
    cosines = np.asarray(cosines, dtype=np.float64)

    def loss(log_b):
        return float(np.sum((model(np.exp(log_b), *arguments) - cosines) ** 2))

    result = optimize.minimize_scalar(loss, bounds=np.log(bounds), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def moment_noise_scale(gram: np.ndarray, tokens: np.ndarray) -> float:
    """Estimate B by moments from the Gram matrix of per-example gradient sums a_i = n_i x_i.

    With weights w_i = n_i, μ̂ = Σa_i / Σn_i; tr Σ̂ = Σ w_i‖x_i − μ̂‖² / (Σw − Σw²/Σw) (unbiased for
    reliability weights) and ‖μ‖² ≈ ‖μ̂‖² − tr Σ̂ / n_eff. Returns inf when ‖μ‖² is not positive.
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    total = tokens.sum()
    mean_sq = gram.sum() / total**2
    cross = gram.sum(axis=1) / total
    deviations = np.diag(gram) / tokens**2 - 2.0 * cross / tokens + mean_sq
    trace = float(np.sum(tokens * deviations) / (total - np.sum(tokens**2) / total))
    signal = mean_sq - trace / effective_n(tokens)
    return float(trace / signal) if signal > 0 else float("inf")


def subset_cosine(gram: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """Return the cosine between Σ_{i∈first} a_i and Σ_{i∈second} a_i from the per-example Gram matrix.

    Token weighting only rescales each mean (mean = Σa_i / Σn_i), so it cancels in the cosine.
    """
    u = np.zeros(gram.shape[0])
    v = np.zeros(gram.shape[0])
    np.add.at(u, first, 1.0)
    np.add.at(v, second, 1.0)
    return float(u @ gram @ v / np.sqrt((u @ gram @ u) * (v @ gram @ v)))


def count_sketch(rng: np.random.Generator, length: int, dimension: int) -> sparse.csr_matrix:
    """Draw a sparse (length, dimension) count sketch S with one ±1 per row, so ⟨Sᵀa, Sᵀb⟩ is unbiased for ⟨a, b⟩."""
    buckets = rng.integers(0, dimension, size=length)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=length)
    return sparse.csr_matrix((signs, (np.arange(length), buckets)), shape=(length, dimension))


def matched_agreement(first, second) -> float:
    """Return the fraction of datasets in the same group after the best one-to-one matching of labels."""
    first_labels, first_index = np.unique(np.asarray(first), return_inverse=True)
    second_labels, second_index = np.unique(np.asarray(second), return_inverse=True)
    table = np.zeros((first_labels.size, second_labels.size))
    np.add.at(table, (first_index, second_index), 1.0)
    rows, columns = linear_sum_assignment(-table)
    return float(table[rows, columns].sum() / len(first_index))


def split_agreement(first, second) -> dict:
    return {"adjusted_rand_index": float(adjusted_rand_score(first, second)),
            "matched_agreement": matched_agreement(first, second)}
