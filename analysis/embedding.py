"""Exact low-dimensional coordinates of unit gradients from their cosine matrix, and t-SNE quality.

For unit vectors ‖a − b‖² = 2 − 2 cos(a, b), so the rows of X = QΛ^{1/2} (C = QΛQᵀ, positive
eigenvalues only) have the same pairwise distances as the P-dimensional unit gradients.
"""

import itertools

import numpy as np
from scipy.spatial import procrustes
from scipy.spatial.distance import pdist
from sklearn.manifold import TSNE, trustworthiness


def exact_coordinates(cosine: np.ndarray, relative_tolerance: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Return X (T, m) with X Xᵀ = C and the m kept eigenvalues (those above tol × the largest)."""
    cosine = np.asarray(cosine, dtype=np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (cosine + cosine.T))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    keep = eigenvalues > relative_tolerance * eigenvalues[0]
    return eigenvectors[:, keep] * np.sqrt(eigenvalues[keep]), eigenvalues[keep]


def distance_error(cosine: np.ndarray, coordinates: np.ndarray) -> float:
    """Max |‖x_i − x_j‖ − sqrt(2 − 2 C_ij)| over pairs: how exactly X reproduces the distances."""
    upper = np.triu_indices(cosine.shape[0], k=1)
    target = np.sqrt(np.maximum(2.0 - 2.0 * cosine[upper], 0.0))
    return float(np.max(np.abs(pdist(coordinates) - target), initial=0.0))


def run_tsne(
    coordinates: np.ndarray, *, perplexity: float, seed: int, max_iter: int, init: str = "pca"
) -> tuple[np.ndarray, float, int]:
    """Exact t-SNE; returns (embedding (T, 2), final KL divergence, iterations run)."""
    model = TSNE(
        n_components=2,
        perplexity=perplexity,
        method="exact",
        init=init,
        learning_rate="auto",
        max_iter=max_iter,
        random_state=seed,
    )
    embedding = model.fit_transform(coordinates)
    return embedding, float(model.kl_divergence_), int(model.n_iter_)


def trustworthiness_scores(coordinates: np.ndarray, embedding: np.ndarray, neighbours: list[int]) -> dict:
    """Trustworthiness at each k < T/2 (scikit-learn's bound); larger k are skipped."""
    size = coordinates.shape[0]
    return {
        int(k): float(trustworthiness(coordinates, embedding, n_neighbors=k))
        for k in neighbours
        if k < size / 2
    }


def procrustes_disparity(first: np.ndarray, second: np.ndarray) -> float:
    """Procrustes disparity (0 = equal up to translation, rotation, reflection and scale)."""
    return float(procrustes(first, second)[2])


def pairwise_disparities(embeddings: list[np.ndarray]) -> np.ndarray:
    """Symmetric (S, S) matrix of Procrustes disparities between the seeds' embeddings."""
    count = len(embeddings)
    matrix = np.zeros((count, count))
    for i, j in itertools.combinations(range(count), 2):
        matrix[i, j] = matrix[j, i] = procrustes_disparity(embeddings[i], embeddings[j])
    return matrix
