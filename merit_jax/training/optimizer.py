"""Optimizers and learning-rate schedules built from a config.

Every run (θ0 warm-up, joint baselines, each branch) uses the same recipe: global-norm gradient
clipping, then AdamW (or plain SGD for learning-rate sweeps) with a linear warm-up and a cosine
decay that spans that run's own number of steps. The learning rate is applied outside the optax
chain, as a traced argument of the step, so one compiled step serves runs of any length.
"""

import math

import jax
import optax


def make_schedule(
    *, peak_learning_rate: float, total_steps: int, warmup_fraction: float, decay: str = "cosine"
) -> optax.Schedule:
    """Build linear warm-up over `warmup_fraction` of the steps, then cosine decay to 0 or constant."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")

    # At least one warm-up step, so the first update never uses the full peak rate.
    warmup_steps = max(1, math.ceil(warmup_fraction * total_steps))
    if decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak_learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1),
            end_value=0.0,
        )
    if decay == "constant":
        warmup = optax.linear_schedule(0.0, peak_learning_rate, warmup_steps)
        return optax.join_schedules([warmup, optax.constant_schedule(peak_learning_rate)], [warmup_steps])
    raise ValueError(f"unknown learning-rate decay {decay!r}; use 'cosine' or 'constant'")


def make_run_schedule(config, total_steps: int) -> optax.Schedule:
    """Build the schedule of `config` (a `config.train`-like ConfigDict) for a run of `total_steps`."""
    return make_schedule(
        peak_learning_rate=config.learning_rate,
        total_steps=total_steps,
        warmup_fraction=config.warmup_fraction,
        decay=config.get("decay", "cosine"),
    )


def make_optimizer(config) -> optax.GradientTransformation:
    """Build the direction part of the optimizer: clipping, then Adam moments and weight decay.

    The returned updates still have to be multiplied by −learning_rate (see `apply_learning_rate`);
    together this is exactly `optax.adamw` (or `optax.sgd`) after clipping.
    """
    name = config.get("optimizer", "adamw")
    if name == "adamw":
        parts = [
            optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps),
            optax.add_decayed_weights(config.weight_decay),
        ]
    elif name == "sgd":
        parts = []
    else:
        raise ValueError(f"unknown optimizer {name!r} in config.train.optimizer; use 'adamw' or 'sgd'")

    if config.clip_norm and config.clip_norm > 0:
        parts.insert(0, optax.clip_by_global_norm(config.clip_norm))
    return optax.chain(*parts)


def apply_learning_rate(updates, learning_rate):
    """Scale optimizer directions by −learning_rate (a traced scalar)."""
    return jax.tree.map(lambda u: -learning_rate * u, updates)
