"""MERIT end to end on the linear–quadratic toy model, through the real core functions.

Dataset gradients come from `dataset_mean_gradient` on a JAX quadratic loss (float32). Then
`cosine_from_gram`, `pca_embedding` and `weighted_median_split` (or `random_split`) choose the
groups, each branch runs plain GD on its group loss from θ(0) in float64, and `weighted_average`
merges the branches with token weights.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from merit_jax.core import conflicts, gradients, merge, quadratic, quadratic_split
from merit_jax.core import split as split_lib
from merit_jax.core import tree as tree_lib

# The Hessian is a frozen leaf of the toy parameter tree, so the runs also exercise the
# trainable-subset path of `dataset_mean_gradient`.
TRAINABLE = tree_lib.path_filter(include=r"^theta$")

SPLIT_METHODS = ("pca", "random")


def quadratic_dataset_loss(params: dict, batch: dict):
    """Return (n_t · ½(θ − θ_t⋆)ᵀH(θ − θ_t⋆), n_t): the `LossFn` of one toy dataset.

    params: {"theta": (d,), "hessian": (d, d)}. batch: {"optimum": θ_t⋆ (d,), "token_count": n_t}.
    """
    delta = params["theta"] - batch["optimum"]
    loss = 0.5 * delta @ params["hessian"] @ delta
    return batch["token_count"] * loss, batch["token_count"]


def toy_gradients(model: quadratic.LinearQuadraticModel, theta0: np.ndarray) -> np.ndarray:
    """Compute g_t = H(θ(0) − θ_t⋆) (T, d) float32 with `dataset_mean_gradient`."""
    params = {
        "theta": jnp.asarray(theta0, dtype=jnp.float32),
        "hessian": jnp.asarray(model.hessian, dtype=jnp.float32),
    }
    rows = []
    for optimum, token_count in zip(model.optima, model.token_counts):
        batch = {
            "optimum": jnp.asarray(optimum, dtype=jnp.float32),
            "token_count": jnp.float32(token_count),
        }
        result = gradients.dataset_mean_gradient(
            quadratic_dataset_loss, params, [batch], trainable=TRAINABLE
        )
        rows.append(np.asarray(result.gradient["theta"]))
    return np.stack(rows)


@dataclasses.dataclass(frozen=True)
class ToyMeritRun:
    """One toy run: split, branches and merge, with losses on the token-weighted mixture loss.

    gradients: (T, d) float32. cosine: (T, T) float64, None for a random split. branches: (K, d)
    float64. merged: (d,) float32 output of `weighted_average`. merged_exact: Σ_k w_k θ_k (d,) in
    float64. branch_losses: (K,). merged_loss: L(merged_exact). gain: Σ_k w_k L(θ_k) − L(θ̄_w).
    steps: (K,) GD steps per branch.
    """

    split: split_lib.Split
    merge_weights: np.ndarray
    steps: np.ndarray
    gradients: np.ndarray
    cosine: np.ndarray | None
    branches: np.ndarray
    merged: np.ndarray
    merged_exact: np.ndarray
    branch_losses: np.ndarray
    merged_loss: float
    gain: float


def choose_split(
    dataset_gradients: np.ndarray,
    weights: np.ndarray,
    *,
    r: int,
    method: str = "pca",
    seed: int = 0,
    pca_mode: str = "rows_colcentered",
) -> tuple[split_lib.Split, np.ndarray | None]:
    """Split T datasets into 2^r groups from their gradients (T, d) and return (split, cosine).

    cosine is None for a random split.
    """
    if method == "random":
        return split_lib.random_split(seed, weights, r), None
    if method != "pca":
        raise ValueError(f"unknown split method {method!r}; expected one of {SPLIT_METHODS}")

    rows = np.asarray(dataset_gradients, dtype=np.float64)
    cosine = conflicts.cosine_from_gram(rows @ rows.T)
    embedding = conflicts.pca_embedding(cosine, r, mode=pca_mode)
    return split_lib.weighted_median_split(embedding.scores, weights, r=r), cosine


def run_toy_merit(
    model: quadratic.LinearQuadraticModel,
    *,
    r: int,
    learning_rate: float,
    num_steps: int,
    method: str = "pca",
    seed: int = 0,
    budget_matched: bool = False,
    theta0: np.ndarray | None = None,
    pca_mode: str = "rows_colcentered",
) -> ToyMeritRun:
    """Run gradients → cosine → PCA → split → GD branches → merge on the toy model.

    θ(0) defaults to the joint optimum θ̄⋆. Every branch takes num_steps GD steps, or, with
    budget_matched, round(w_k · num_steps) steps (at least 1), so that the branches together
    take about as many steps as joint GD for num_steps.
    """
    theta0 = model.joint_optimum if theta0 is None else np.asarray(theta0, dtype=np.float64)
    dataset_gradients = toy_gradients(model, theta0)
    split, cosine = choose_split(
        dataset_gradients, model.token_counts, r=r, method=method, seed=seed, pca_mode=pca_mode
    )

    weights = merge.merge_weights([model.token_counts[group].sum() for group in split.groups])
    if budget_matched:
        steps = np.maximum(1, np.rint(weights * num_steps)).astype(np.int64)
    else:
        steps = np.full(len(split.groups), num_steps, dtype=np.int64)
    branches = quadratic_split.train_branches(model, split.groups, learning_rate, steps, theta0)

    # The real merge runs in float32; the exact float64 merge is kept for the loss identities.
    merged_tree = merge.weighted_average(
        [{"theta": branch.astype(np.float32)} for branch in branches], weights
    )
    mixture = model.mixture_loss()
    merged_exact = quadratic.merged_point(branches, weights)
    return ToyMeritRun(
        split=split,
        merge_weights=weights,
        steps=steps,
        gradients=dataset_gradients,
        cosine=cosine,
        branches=branches,
        merged=np.asarray(merged_tree["theta"]),
        merged_exact=merged_exact,
        branch_losses=mixture(branches),
        merged_loss=float(mixture(merged_exact)),
        gain=quadratic.merge_gain(mixture, branches, weights),
    )


def run_joint_gd(
    model: quadratic.LinearQuadraticModel,
    *,
    learning_rate: float,
    num_steps: int,
    theta0: np.ndarray | None = None,
) -> np.ndarray:
    """Run GD on the whole token-weighted mixture from θ(0) and return the trajectory (S + 1, d)."""
    theta0 = model.joint_optimum if theta0 is None else np.asarray(theta0, dtype=np.float64)
    return quadratic.gradient_descent(model.mixture_loss(), theta0, learning_rate, num_steps)
