"""Training stages (joint baselines and branches, all from θ0) and merge stages.

Every branch makes one pass over its own group's training examples, so the branches of one
split together consume exactly the token budget of Joint (1 ep). A merge reads the branch
checkpoints leaf by leaf and writes θ̄ = Σ_k w_k θ_k with w_k = N_k / Σ_j N_j.
"""

import functools

import jax
import numpy as np
from absl import logging

from merit_jax.core import merge as merge_lib
from merit_jax.core import sharding as sharding_lib
from merit_jax.core import tree as tree_lib
from merit_jax.pipeline.context import Context
from merit_jax.pipeline.plan import RunSpec
from merit_jax.pipeline.workdir import atomic_directory, write_json_atomic
from merit_jax.training import checkpoint as checkpoint_lib
from merit_jax.training.trainer import Trainer


@functools.lru_cache(maxsize=None)
def _trainer(ctx: Context, placement: sharding_lib.Placement) -> Trainer:
    # One trainer per device group for all runs of the mixture, so its compiled step is shared.
    return Trainer(
        loss_fn=ctx.loss_fn,
        trainable=ctx.trainable,
        train_config=ctx.config.train,
        stacked_batches=ctx.family.stacked_batches,
        placement=placement,
    )


def run_training(ctx: Context, run: RunSpec, placement: sharding_lib.Placement | None = None) -> dict:
    """Train one run from θ0 on the training examples of its tasks, on `placement`'s devices."""
    placement = placement or ctx.placement()
    result = _trainer(ctx, placement).run(
        run_dir=ctx.workdir / "runs" / run.name,
        params=ctx.theta0(placement),
        epoch_batches=ctx.epoch_batches_fn(run.tasks, "train", run.name, ctx.config.train),
        num_epochs=run.num_epochs,
    )
    return {"steps": result.total_steps, "tasks": len(run.tasks)}


def run_merge(ctx: Context, model: str, groups: list[dict]) -> dict:
    """Merge the branches of `model` (one per group) with the weights of the config."""
    runs_dir = ctx.workdir / "runs"
    missing = [group["label"] for group in groups if not checkpoint_lib.is_checkpoint(runs_dir / f"{model}-b{group['label']}" / "params")]
    if missing:
        names = ", ".join(f"{model}-b{label}" for label in missing)
        raise FileNotFoundError(f"cannot merge {model}: branch checkpoints missing for {names}; train them first")

    budgets = np.array([group["tokens"] for group in groups], dtype=np.float64)
    weights = merge_lib.merge_weights(budgets, mode=ctx.config.merge.weights)
    sources = [checkpoint_lib.OrbaxLeafSource(runs_dir / f"{model}-b{group['label']}" / "params") for group in groups]
    merged_flat = merge_lib.merge_streaming(sources, weights)

    merged = jax.tree_util.tree_map_with_path(
        lambda key_path, _: merged_flat[tree_lib.path_string(key_path)], ctx.abstract_params
    )
    with atomic_directory(ctx.workdir / "merged" / model) as directory:
        checkpoint_lib.save_params(directory / "params", merged)
        write_json_atomic(
            directory / "weights.json",
            {
                "branches": [f"{model}-b{group['label']}" for group in groups],
                "token_budgets": budgets.tolist(),
                "weights": weights.tolist(),
                "mode": ctx.config.merge.weights,
            },
        )
    logging.info("merged %s from %d branches, weights %s", model, len(groups), np.round(weights, 4))
    return {"weights": weights.tolist()}
