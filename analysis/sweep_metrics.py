"""Learning-rate sensitivity, stable ranges and divergence of a learning-rate sweep.

Sensitivity follows Wortsman et al. (2023), adapted so that a collapsed run counts as the base
model's score: for a score A (higher is better) S = mean_η [A* − max(A(η), A_0)] with A* the best
score on the grid and A_0 the score of θ0; for a loss L, S = mean_η [min(L(η), L_0) − L*].
Lower S means less sensitive to the learning rate.
"""

import numpy as np
from scipy import stats

# A run whose loss exceeds this multiple of θ0's loss counts as diverged.
DIVERGENCE_FACTOR = 1.5


def diverged(loss: float, base_loss: float) -> bool:
    return bool(not np.isfinite(loss) or loss > DIVERGENCE_FACTOR * base_loss)


def score_sensitivity(scores, base_score: float) -> float:
    """Return mean_η [A* − max(A(η), A_0)] for scores where higher is better (NaN counts as collapsed)."""
    scores = np.where(np.isfinite(scores), np.asarray(scores, dtype=np.float64), -np.inf)
    best = max(np.max(scores), base_score)
    return float(np.mean(best - np.maximum(scores, base_score)))


def loss_sensitivity(losses, base_loss: float) -> float:
    """Return mean_η [min(L(η), L_0) − L*] for losses (a non-finite loss counts as collapsed)."""
    losses = np.where(np.isfinite(losses), np.asarray(losses, dtype=np.float64), np.inf)
    best = min(np.min(losses), base_loss)
    return float(np.mean(np.minimum(losses, base_loss) - best))


def stable_etas(etas, values, tolerance: float, higher_is_better: bool) -> list[float]:
    """List the learning rates whose value is within `tolerance` of the best value on the grid."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return []
    if higher_is_better:
        keep = finite & (values >= np.max(values[finite]) - tolerance)
    else:
        keep = finite & (values <= np.min(values[finite]) + tolerance)
    return [float(eta) for eta, kept in zip(etas, keep) if kept]


def log_log_slope(etas, gains, points: int = 3) -> dict:
    """Fit the slope of log gain on log η over the smallest `points` η with gain > 0.

    The first-order theory predicts a merge gain ∝ η² at small η (slope 2).
    """
    etas = np.asarray(etas, dtype=np.float64)
    gains = np.asarray(gains, dtype=np.float64)
    usable = np.flatnonzero(np.isfinite(gains) & (gains > 0))[:points]
    if usable.size < 2:
        return {"slope": None, "etas": etas[usable].tolist()}
    slope, intercept = np.polyfit(np.log(etas[usable]), np.log(gains[usable]), 1)
    return {"slope": float(slope), "intercept": float(intercept), "etas": etas[usable].tolist()}


def paired_difference(values, reference) -> dict:
    """Return the mean and 95% t-interval of per-seed differences (values − reference).

    A single seed gives no interval.
    """
    difference = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    mean = float(np.mean(difference))
    if difference.size < 2:
        return {"mean": mean, "ci95": None, "seeds": int(difference.size)}
    half = stats.t.ppf(0.975, difference.size - 1) * np.std(difference, ddof=1) / np.sqrt(difference.size)
    return {"mean": mean, "ci95": [mean - half, mean + half], "seeds": int(difference.size)}
