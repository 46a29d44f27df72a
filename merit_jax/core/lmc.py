"""Linear mode connectivity: barriers of a loss curve L(α) along θ_α = (1 − α)θ_a + αθ_b.

The linear-interpolation barrier B_lin = max_α [L(α) − ((1 − α)L(0) + αL(1))] (Entezari et al.
2022, the definition MERIT's Table 5 uses) is ≥ 0 and 0 exactly when the curve never rises above
its chord. The functions here take the curve as arrays, so they know nothing about models.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Endpoint α values must equal 0 and 1 to this tolerance.
_ENDPOINT_ATOL = 1e-12


def interpolate(params_a: Any, params_b: Any, alpha: float | jax.Array) -> Any:
    """Return (1 − α)θ_a + αθ_b leaf by leaf in float32. α may be a traced scalar."""
    alpha = jnp.asarray(alpha, dtype=jnp.float32)

    def mix(leaf_a, leaf_b):
        return (1.0 - alpha) * jnp.asarray(leaf_a, jnp.float32) + alpha * jnp.asarray(
            leaf_b, jnp.float32
        )

    return jax.tree.map(mix, params_a, params_b)


def _sorted_curve(alphas: Sequence[float], losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (α (A,), losses (A, ...)) sorted by α, checking that α = 0 and α = 1 are the ends."""
    alphas = np.asarray(alphas, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size < 2:
        raise ValueError(f"alphas must be 1-D with at least 2 points, got shape {alphas.shape}")
    if losses.shape[0] != alphas.size:
        raise ValueError(f"got {losses.shape[0]} losses for {alphas.size} alphas")
    if not (np.all(np.isfinite(alphas)) and np.all(np.isfinite(losses))):
        raise ValueError(
            "alphas and losses must be finite, but a value is NaN or infinite (a diverged model?)"
        )

    order = np.argsort(alphas, kind="stable")
    alphas, losses = alphas[order], losses[order]
    if abs(alphas[0]) > _ENDPOINT_ATOL or abs(alphas[-1] - 1.0) > _ENDPOINT_ATOL:
        raise ValueError(
            f"the α grid must contain both endpoints 0 and 1, got range [{alphas[0]}, {alphas[-1]}]"
        )
    return alphas, losses


def chord(alphas: Sequence[float], losses: Sequence[float]) -> np.ndarray:
    """Return (1 − α)L(0) + αL(1) at every α, in the order of `alphas`."""
    _, sorted_losses = _sorted_curve(alphas, losses)
    alphas = np.asarray(alphas, dtype=np.float64)
    return (1.0 - alphas) * sorted_losses[0] + alphas * sorted_losses[-1]


def _excess(alphas: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Return L(α) − chord(α) for a sorted curve whose losses may carry trailing resample axes."""
    weight = alphas.reshape((-1,) + (1,) * (losses.ndim - 1))
    return losses - ((1.0 - weight) * losses[0] + weight * losses[-1])


def linear_barrier(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """Return B_lin = max_α [L(α) − chord(α)] ≥ 0 over the grid (0 at both endpoints)."""
    alphas, losses = _sorted_curve(alphas, losses)
    return float(np.max(_excess(alphas, losses)))


def midpoint_barrier(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """Return B_mid = max_α L(α) − ½(L(0) + L(1)) ≥ ½|L(0) − L(1)|, for literature comparisons."""
    alphas, losses = _sorted_curve(alphas, losses)
    return float(np.max(losses) - 0.5 * (losses[0] + losses[-1]))


def dip(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """Return D = min_α [L(α) − chord(α)] ≤ 0, which is −⅛ΔᵀHΔ at α = ½ on a quadratic."""
    alphas, losses = _sorted_curve(alphas, losses)
    return float(np.min(_excess(alphas, losses)))


@dataclasses.dataclass(frozen=True)
class CurveSummary:
    """The numbers reported per interpolation path (α values are those of the grid)."""

    loss_a: float
    loss_b: float
    min_loss: float
    argmin_alpha: float
    linear_barrier: float
    argmax_alpha: float
    midpoint_barrier: float
    dip: float
    dip_alpha: float


def summarize_curve(alphas: Sequence[float], losses: Sequence[float]) -> CurveSummary:
    """Return L(0), L(1), min_α L with its α, B_lin with its α, B_mid and the dip with its α."""
    alphas, losses = _sorted_curve(alphas, losses)
    excess = _excess(alphas, losses)
    return CurveSummary(
        loss_a=float(losses[0]),
        loss_b=float(losses[-1]),
        min_loss=float(np.min(losses)),
        argmin_alpha=float(alphas[np.argmin(losses)]),
        linear_barrier=float(np.max(excess)),
        argmax_alpha=float(alphas[np.argmax(excess)]),
        midpoint_barrier=float(np.max(losses) - 0.5 * (losses[0] + losses[-1])),
        dip=float(np.min(excess)),
        dip_alpha=float(alphas[np.argmin(excess)]),
    )


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap of B_lin over evaluation examples.

    barrier: B_lin of the full sample. standard_error: standard deviation of the resampled
    barriers. ci_low, ci_high: 2.5% and 97.5% percentiles. samples: (num_resamples,) barriers.
    """

    barrier: float
    standard_error: float
    ci_low: float
    ci_high: float
    samples: np.ndarray


def bootstrap_barrier(
    alphas: Sequence[float],
    loss_sums: np.ndarray,
    token_counts: np.ndarray,
    *,
    num_resamples: int = 1000,
    seed: int = 0,
) -> BootstrapResult:
    """Bootstrap B_lin by resampling examples, recomputing the whole token-weighted curve each time.

    loss_sums: (A, N) summed token loss of example n at α_a. token_counts: (N,) or (A, N)
    supervised tokens per example. Every resample draws N examples with replacement from
    `numpy.random.default_rng(seed)` and uses the same draw at every α (common random numbers),
    so L(α) = Σ_n c_n loss_sums[a, n] / Σ_n c_n token_counts[a, n] with multiplicities c_n.
    """
    loss_sums = np.asarray(loss_sums, dtype=np.float64)
    token_counts = np.broadcast_to(np.asarray(token_counts, dtype=np.float64), loss_sums.shape)
    if loss_sums.ndim != 2:
        raise ValueError(f"loss_sums must have shape (A, N), got {loss_sums.shape}")
    if num_resamples < 2:
        raise ValueError(f"num_resamples must be at least 2, got {num_resamples}")
    if not np.all(token_counts.sum(axis=1) > 0):
        raise ValueError("the examples contain no supervised tokens at some α")
    num_examples = loss_sums.shape[1]

    barrier = linear_barrier(alphas, loss_sums.sum(axis=1) / token_counts.sum(axis=1))

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_examples, size=(num_resamples, num_examples))
    multiplicities = np.stack([np.bincount(row, minlength=num_examples) for row in draws])
    resampled_tokens = token_counts @ multiplicities.T
    if not np.all(resampled_tokens > 0):
        raise ValueError(
            "a resample drew only examples without supervised tokens; drop such examples first"
        )
    # (A, B) curves: the token-weighted loss at every α for every resample.
    curves = (loss_sums @ multiplicities.T) / resampled_tokens
    sorted_alphas, sorted_curves = _sorted_curve(alphas, curves)
    samples = np.max(_excess(sorted_alphas, sorted_curves), axis=0)

    low, high = np.percentile(samples, [2.5, 97.5])
    standard_error = float(np.std(samples, ddof=1))
    return BootstrapResult(barrier, standard_error, float(low), float(high), samples)


def is_zero_barrier(barrier: float, standard_error: float, tol_abs: float) -> bool:
    """Return whether B_lin ≤ max(tol_abs, 2·SE), the zero-barrier rule for noisy curves."""
    return bool(barrier <= max(tol_abs, 2.0 * standard_error))
