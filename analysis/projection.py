"""Parameter-space conflict directions in the strided coordinates of the gradient store.

With unit gradient rows G̃ (T, P/s) and the eigenpairs (λ_k, u_k) of the double-centered cosine
matrix JCJ (J = I − 11ᵀ/T), p_k = (JG̃)ᵀu_k / √λ_k are orthonormal, and because u_k ⊥ 1 this is
G̃ᵀu_k / √λ_k. So ⟨δ, p_k⟩ = (G̃δ)ᵀu_k / √λ_k needs only the T products ⟨g̃_t, δ⟩, and p_k is never
formed.
"""

import numpy as np

from merit_jax.core import gradients as gradients_lib


def double_centered_axes(cosine: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the top-r eigenpairs of JCJ: eigenvalues (r,) descending and eigenvectors (T, r), float64.

    Raises ValueError when fewer than r eigenvalues are positive.
    """
    size = cosine.shape[0]
    centering = np.eye(size) - 1.0 / size
    matrix = centering @ np.asarray(cosine, dtype=np.float64) @ centering
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    order = np.argsort(eigenvalues)[::-1][:r]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    if np.any(eigenvalues <= 1e-12 * max(eigenvalues[0], 1e-300)):
        raise ValueError(f"the double-centered cosine matrix has fewer than {r} positive eigenvalues")
    return eigenvalues, eigenvectors


def match_signs(eigenvectors: np.ndarray, eigenvalues: np.ndarray, reference_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip each axis so its dataset scores correlate positively with the split's scores.

    Returns the flipped eigenvectors and the (r, r) correlation matrix between the flipped
    double-centered scores (rows) and the reference scores (columns). A diagonal near 1 shows
    that the axes correspond in order and sign.
    """
    scores = eigenvectors * np.sqrt(eigenvalues)
    r = eigenvectors.shape[1]
    correlation = np.corrcoef(scores.T, reference_scores[:, :r].T)[:r, r:]
    signs = np.where(np.diag(correlation) < 0, -1.0, 1.0)
    return eigenvectors * signs, correlation * signs[:, None]


def strided(tree, stride: int) -> np.ndarray:
    """Return a float64 copy of `stride_subsample(tree)`, the gradient store's coordinates."""
    return gradients_lib.stride_subsample(tree, stride).astype(np.float64)


def unit_gradient_products(store: gradients_lib.GradientStore, names: list[str], vectors: np.ndarray) -> np.ndarray:
    """Return ⟨g_t / ‖g_t‖, v_i⟩ (n, T) for every stored gradient t and row v_i of `vectors` (n, P/s).

    The stored vectors are read one at a time (memory-mapped).
    """
    products = np.zeros((vectors.shape[0], len(names)))
    for column, name in enumerate(names):
        gradient = np.asarray(store.load(name), dtype=np.float64)
        products[:, column] = vectors @ gradient / np.linalg.norm(gradient)
    return products


def project(products: np.ndarray, eigenvectors: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """Return the coordinates ⟨δ_i, p_k⟩ (n, r) from the products G̃δ_i (n, T)."""
    return products @ eigenvectors / np.sqrt(eigenvalues)


def cut_positions(scores: np.ndarray, labels: list[str]) -> dict:
    """Locate the weighted-median cuts as midpoints between the two sides along each axis.

    Returns {"": PC1 cut} for the level-1 cut and {"0": PC2 cut of the low half, "1": ...} for
    level-2 cuts (labels are the split's bit strings).
    """
    labels = np.asarray(labels)
    depth = len(labels[0])
    cuts = {}
    for level in range(min(depth, 2)):
        for prefix in sorted({label[:level] for label in labels}):
            low = np.array([label.startswith(prefix + "0") for label in labels])
            high = np.array([label.startswith(prefix + "1") for label in labels])
            cuts[prefix] = 0.5 * (scores[low, level].max() + scores[high, level].min())
    return cuts
