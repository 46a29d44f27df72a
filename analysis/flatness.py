"""Displacement norms, the parallel-axis identity of a merge, and Gaussian weight perturbations.

For branch displacements δ_k = θ_k − θ0 and weights w_k (Σ w_k = 1) with δ̄ = Σ_k w_k δ_k:
Σ_k w_k‖δ_k‖² = ‖δ̄‖² + Σ_k w_k‖δ_k − δ̄‖², so a merge is closer to θ0 than its branches on average
by exactly the branches' weighted spread.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from merit_jax.core import tree as tree_lib

_LAYER = re.compile(r"layers/(\d+)/")


def layer_of(path: str) -> str:
    """Return the coarse group of a parameter path: `layer 3`, or its first two path components."""
    match = _LAYER.search(path)
    if match:
        return f"layer {int(match.group(1))}"
    return "/".join(path.split("/")[:2])


def displacement(tree: dict, theta0: dict) -> dict[str, np.ndarray]:
    """Return path → float64 leaf of θ − θ0 over the leaves of `tree` (the trainable subset)."""
    reference = dict(tree_lib.leaves_with_paths(theta0))
    return {
        path: np.asarray(leaf, dtype=np.float64) - np.asarray(reference[path], dtype=np.float64)
        for path, leaf in tree_lib.leaves_with_paths(tree)
    }


def squared_norms(delta: dict[str, np.ndarray]) -> dict[str, float]:
    """Return per-leaf sums of squares, accumulated in float64."""
    return {path: float(np.sum(np.square(leaf))) for path, leaf in delta.items()}


def by_layer(leaf_squares: dict[str, float]) -> dict[str, float]:
    """Return per-layer norms sqrt(Σ of the layer's per-leaf sums of squares)."""
    totals: dict[str, float] = {}
    for path, value in leaf_squares.items():
        totals[layer_of(path)] = totals.get(layer_of(path), 0.0) + value
    return {layer: float(np.sqrt(value)) for layer, value in totals.items()}


def parallel_axis(branch_deltas: list[dict], weights, merged_delta: dict) -> dict:
    """Evaluate both sides of Σ w_k‖δ_k‖² = ‖δ̄‖² + Σ w_k‖δ_k − δ̄‖² with δ̄ = `merged_delta`, leaf by leaf.

    Also returns ‖merged_delta − Σ w_k δ_k‖, which is round-off when δ̄ comes from a float32
    merged checkpoint and 0 when it is computed in float64 from the branches.
    """
    weights = np.asarray(weights, dtype=np.float64)
    weighted, merged, spread, mismatch = 0.0, 0.0, 0.0, 0.0
    for path, mean in merged_delta.items():
        leaves = [delta[path] for delta in branch_deltas]
        weighted += sum(w * np.sum(np.square(leaf)) for w, leaf in zip(weights, leaves))
        merged += np.sum(np.square(mean))
        spread += sum(w * np.sum(np.square(leaf - mean)) for w, leaf in zip(weights, leaves))
        mismatch += np.sum(np.square(mean - sum(w * leaf for w, leaf in zip(weights, leaves))))
    return {
        "weighted_branch_sq_norm": float(weighted),
        "merged_sq_norm": float(merged),
        "weighted_spread": float(spread),
        "relative_residual": float(abs(weighted - merged - spread) / weighted) if weighted else 0.0,
        "merged_vs_weighted_sum_norm": float(np.sqrt(mismatch)),
    }


def weighted_average(deltas: list[dict], weights) -> dict:
    """Return Σ_k w_k δ_k leaf by leaf in float64."""
    return {path: sum(w * delta[path] for w, delta in zip(weights, deltas)) for path in deltas[0]}


def perturb(trainable: dict, key, sigma, relative: bool) -> dict:
    """Return θ + σ·s_W·ξ per tensor W with ξ ~ N(0, I), where s_W = RMS(W) if `relative`, else 1.

    Leaf i draws its noise from fold_in(key, i) in canonical leaf order, so models with the same
    structure receive the same ξ for the same key (common random numbers).
    """
    leaves, treedef = jax.tree_util.tree_flatten(trainable)
    noisy = []
    for index, leaf in enumerate(leaves):
        leaf = jnp.asarray(leaf, jnp.float32)
        noise = jax.random.normal(jax.random.fold_in(key, index), leaf.shape, jnp.float32)
        scale = jnp.sqrt(jnp.mean(jnp.square(leaf))) if relative else jnp.float32(1.0)
        noisy.append(leaf + sigma * scale * noise)
    return jax.tree_util.tree_unflatten(treedef, noisy)


def trapezoid_auc(sigmas, values) -> float:
    """Integrate values(σ) by the trapezoid rule over the actual σ grid."""
    return float(np.trapezoid(np.asarray(values, dtype=np.float64), np.asarray(sigmas, dtype=np.float64)))
