"""Per-example gradients of the summed token loss at θ0, in the gradient store's strided coordinates.

Row i is a_i = ∇ loss_sum_i, so the pipeline's token-weighted mean gradient of a set S is
Σ_{i∈S} a_i / Σ_{i∈S} n_i with n_i the example's supervised tokens.
"""

import jax
import jax.numpy as jnp
import numpy as np

from merit_jax.core import gradients as gradients_lib
from merit_jax.core import tree as tree_lib

# Columns per float64 block of the per-example Gram matrix.
_BLOCK = 1 << 16


def make_example_gradient_fn(loss_fn, trainable: dict, stride: int):
    """Build the jitted `(trainable, frozen, batch) -> (strided gradients (B, P/s) float32, tokens (B,))`."""
    shapes = [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(trainable)]
    starts = [int(indices[0]) if indices.size else 0 for indices in gradients_lib.stride_indices(shapes, stride)]

    def one_example(params, frozen, row):
        gradient = jax.grad(lambda p: loss_fn(tree_lib.combine(p, frozen), row)[0])(params)
        # jax.tree_util.tree_leaves uses the canonical order of `stride_subsample`.
        leaves = jax.tree_util.tree_leaves(gradient)
        return jnp.concatenate([jnp.ravel(leaf.astype(jnp.float32))[start::stride] for leaf, start in zip(leaves, starts)])

    @jax.jit
    def example_gradients(params, frozen, batch):
        rows = jax.tree.map(lambda x: x[:, None], batch)
        gradients = jax.vmap(lambda row: one_example(params, frozen, row))(rows)
        return gradients, jnp.sum(batch["loss_mask"], axis=1)

    return example_gradients


def task_example_gradients(fn, trainable, frozen, encoded, batch_size: int, family) -> tuple[np.ndarray, np.ndarray]:
    """Compute strided per-example gradients (N, P/s) float32 and token counts (N,), in example order.

    Needs a family whose eval batches keep the example order and whose rows are independent
    (the text family), so that each row's gradient is its example's gradient.
    """
    if family.name != "qwen2":
        raise NotImplementedError(
            f"per-example gradients support the text model family only, not {family.name!r}: "
            "vision-language batches share image arrays across rows")
    batches = family.eval_batches(list(encoded), batch_size=batch_size)
    rows, tokens = [], []
    for batch in batches:
        gradients, counts = fn(trainable, frozen, batch)
        rows.append(np.asarray(gradients))
        tokens.append(np.asarray(counts, dtype=np.float64))
    count = len(encoded)
    return np.concatenate(rows)[:count], np.concatenate(tokens)[:count]


def gram(gradients: np.ndarray) -> np.ndarray:
    """Return X Xᵀ (N, N) of float32 rows, accumulated in float64 over column blocks."""
    result = np.zeros((gradients.shape[0],) * 2)
    for start in range(0, gradients.shape[1], _BLOCK):
        block = gradients[:, start : start + _BLOCK].astype(np.float64)
        result += block @ block.T
    return 0.5 * (result + result.T)

