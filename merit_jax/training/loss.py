"""The causal language-modelling loss in the form MERIT's core expects: (loss_sum, token_count).

Returning the sum of token cross-entropies and the number of supervised tokens, rather than a
mean, makes accumulation over micro-batches, datasets and devices exactly token-weighted.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in float32: logits (B, L, V), targets (B, L) -> (B, L)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def make_causal_lm_loss(apply_fn: Callable) -> Callable:
    """Build `loss_fn(params, batch) -> (loss_sum, token_count)` for a causal LM.

    `apply_fn(params, input_ids, attention_mask=...)` returns logits (B, L, V). The batch layout
    is the one of `merit_jax.data.batching`: `input_ids`, `targets`, `loss_mask` and
    `attention_mask`, all (B, L), where `loss_mask` selects the supervised target positions.
    """

    def loss_fn(params, batch):
        logits = apply_fn(params, batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["loss_mask"].astype(jnp.float32)
        token_loss = token_cross_entropy(logits, batch["targets"])
        return jnp.sum(token_loss * mask), jnp.sum(mask)

    return loss_fn

