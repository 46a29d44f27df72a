"""One-shot merge of branch checkpoints: θ̄ = Σ_k w_k θ_k with w_k = N_k / Σ_j N_j.

This is MERIT's only cross-branch step (Choi and Kim, arXiv:2606.01717). Leaves are accumulated
in float32 and cast back to their stored dtype, and every branch must have the same leaf paths,
shapes and dtypes.
"""

from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from merit_jax.core import tree as tree_lib

LeafSpec = tuple[tuple[int, ...], np.dtype]

# Tolerance on Σ_k w_k = 1 for the weights handed to the merge functions.
_WEIGHT_SUM_ATOL = 1e-6


class MergeMismatchError(ValueError):
    """Error for branch checkpoints that cannot be merged leaf by leaf.

    `branch` and `path` name the first branch and leaf, in canonical order, that differ from
    branch 0, and `reason` describes the difference (missing or extra leaf, shape, dtype).
    """

    def __init__(self, branch: int, path: str, reason: str):
        self.branch = branch
        self.path = path
        self.reason = reason
        super().__init__(f"branch {branch} does not match branch 0 at leaf {path!r}: {reason}")


class LeafSource(Protocol):
    """Read access to one checkpoint, one leaf at a time."""

    def leaf_specs(self) -> dict[str, LeafSpec]:
        """Return a dict from every leaf path string to (shape, dtype), in canonical order."""
        ...

    def read(self, path: str) -> np.ndarray:
        """Load the leaf at `path` into host memory."""
        ...


class InMemoryLeafSource:
    """`LeafSource` over a parameter tree that is already in memory."""

    def __init__(self, tree: Any):
        self._leaves = dict(tree_lib.leaves_with_paths(tree))

    def leaf_specs(self) -> dict[str, LeafSpec]:
        return {path: _leaf_spec(leaf) for path, leaf in self._leaves.items()}

    def read(self, path: str) -> np.ndarray:
        return np.asarray(self._leaves[path])


def merge_weights(budgets: Sequence[float], mode: str = "tokens") -> np.ndarray:
    """Return merge weights float64 (K,): w_k = N_k / Σ_j N_j ("tokens") or 1/K ("uniform")."""
    budgets = np.asarray(budgets, dtype=np.float64)
    if budgets.ndim != 1 or budgets.size == 0:
        raise ValueError(f"budgets must be a non-empty 1-D sequence, got shape {budgets.shape}")
    if mode == "uniform":
        return np.full(budgets.size, 1.0 / budgets.size)
    if mode != "tokens":
        raise ValueError(f"unknown merge weight mode {mode!r}; expected 'tokens' or 'uniform'")

    if not np.all(np.isfinite(budgets)) or np.any(budgets < 0):
        raise ValueError(f"token budgets must be finite and non-negative, got {budgets.tolist()}")
    total = float(np.sum(budgets))
    if not total > 0:
        raise ValueError("token budgets sum to 0; every group has an empty token budget")
    return budgets / total


def _validate_weights(weights: Sequence[float], num_branches: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (num_branches,):
        raise ValueError(f"expected {num_branches} merge weights, got shape {weights.shape}")
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"merge weights must be finite, got {weights.tolist()}")
    if abs(float(np.sum(weights)) - 1.0) > _WEIGHT_SUM_ATOL:
        raise ValueError(
            f"merge weights sum to {np.sum(weights):.9g}, not 1; normalize them with merge_weights"
        )
    return weights


def _find_mismatch(
    reference: dict[str, LeafSpec], other: dict[str, LeafSpec]
) -> tuple[str, str] | None:
    """Return (path, reason) for the first leaf, in canonical order, where two spec lists differ."""
    reference_paths, other_paths = list(reference), list(other)
    for index in range(max(len(reference_paths), len(other_paths))):
        expected = reference_paths[index] if index < len(reference_paths) else None
        found = other_paths[index] if index < len(other_paths) else None

        if expected != found:
            if expected is not None and expected not in other:
                return expected, "leaf is missing"
            if found is not None and found not in reference:
                return found, "leaf is extra (absent from branch 0)"
            return expected, f"leaf order differs (found {found!r} at this position)"

        expected_shape, expected_dtype = reference[expected]
        found_shape, found_dtype = other[found]
        if tuple(expected_shape) != tuple(found_shape):
            return expected, f"shape {tuple(found_shape)} differs from {tuple(expected_shape)}"
        if np.dtype(expected_dtype) != np.dtype(found_dtype):
            found_dtype, expected_dtype = np.dtype(found_dtype), np.dtype(expected_dtype)
            return expected, f"dtype {found_dtype} differs from {expected_dtype}"
    return None


def check_compatible(specs: Sequence[dict[str, LeafSpec]]) -> None:
    """Raise MergeMismatchError unless every branch's specs equal branch 0's, leaf by leaf."""
    for branch, branch_specs in enumerate(specs[1:], start=1):
        mismatch = _find_mismatch(specs[0], branch_specs)
        if mismatch is not None:
            raise MergeMismatchError(branch, *mismatch)


def _leaf_spec(leaf: Any) -> LeafSpec:
    return tuple(np.shape(leaf)), np.dtype(leaf.dtype)


def _tree_specs(tree: Any) -> dict[str, LeafSpec]:
    return {path: _leaf_spec(leaf) for path, leaf in tree_lib.leaves_with_paths(tree)}


def _log_weights(weights: np.ndarray, num_leaves: int, num_parameters: int) -> None:
    logging.info(
        "merging %d branches (%d leaves, %d parameters each) with weights %s",
        weights.size, num_leaves, num_parameters, np.round(weights, 6).tolist(),
    )


def _is_float(dtype: np.dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def _merge_jax_leaf(path: str, leaves: Sequence[Any], weights: np.ndarray) -> Any:
    """Return Σ_k w_k leaves[k] summed in float32 and cast back, or leaves[0] if all are equal."""
    first = leaves[0]
    # Frozen leaves are identical in every branch; copying them keeps them bit-identical,
    # which a float32 weighted sum would not.
    differing = [k for k, leaf in enumerate(leaves) if k and not bool(jnp.array_equal(first, leaf))]
    if not differing:
        return jnp.asarray(first)
    if not _is_float(np.dtype(first.dtype)):
        reason = f"non-float leaf ({first.dtype}) differs from branch 0"
        raise MergeMismatchError(differing[0], path, reason)

    accumulator = jnp.zeros(jnp.shape(first), dtype=jnp.float32)
    for weight, leaf in zip(weights, leaves):
        accumulator = accumulator + np.float32(weight) * jnp.asarray(leaf).astype(jnp.float32)
    return accumulator.astype(first.dtype)


def weighted_average(trees: Sequence[Any], weights: Sequence[float]) -> Any:
    """Return θ̄ = Σ_k w_k θ_k with the structure of trees[0] (weights (K,) summing to 1).

    Each leaf is accumulated in float32 and cast back to its dtype; a leaf that is equal in every
    tree (frozen parameters) is returned unchanged. Raises MergeMismatchError before any
    arithmetic if a tree's leaf paths, shapes or dtypes differ from trees[0].
    """
    if not trees:
        raise ValueError("weighted_average needs at least one tree")
    weights = _validate_weights(weights, len(trees))
    specs = [_tree_specs(tree) for tree in trees]
    check_compatible(specs)
    _log_weights(weights, len(specs[0]), sum(int(np.prod(shape)) for shape, _ in specs[0].values()))

    flat_trees = [jax.tree_util.tree_leaves(tree) for tree in trees]
    paths = list(specs[0])
    merged = [
        _merge_jax_leaf(path, [flat[index] for flat in flat_trees], weights)
        for index, path in enumerate(paths)
    ]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(trees[0]), merged)


def _read_checked(source: LeafSource, branch: int, path: str, spec: LeafSpec) -> np.ndarray:
    leaf = np.asarray(source.read(path))
    if leaf.shape != tuple(spec[0]) or leaf.dtype != np.dtype(spec[1]):
        expected = f"{np.dtype(spec[1])} {tuple(spec[0])}"
        reason = f"read {leaf.dtype} {leaf.shape}, but its spec is {expected}"
        raise MergeMismatchError(branch, path, reason)
    return leaf


def merge_streaming(
    sources: Sequence[LeafSource], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Merge K checkpoints leaf by leaf into a dict path → array, in canonical order.

    All leaf specs are compared before any leaf is read. Besides the merged leaves, memory holds
    only the leaf being merged: its float32 accumulator, the branch copy being read (or its
    float32 copy) and, while every branch read so far equals it, branch 0's copy. A leaf equal in
    every branch is copied unchanged.
    """
    if not sources:
        raise ValueError("merge_streaming needs at least one source")
    weights = _validate_weights(weights, len(sources))
    specs = [source.leaf_specs() for source in sources]
    check_compatible(specs)
    _log_weights(weights, len(specs[0]), sum(int(np.prod(shape)) for shape, _ in specs[0].values()))

    merged = {}
    for path, spec in specs[0].items():
        merged[path] = _merge_streamed_leaf(sources, weights, path, spec)
    return merged


def _merge_streamed_leaf(
    sources: Sequence[LeafSource], weights: np.ndarray, path: str, spec: LeafSpec
) -> np.ndarray:
    dtype = np.dtype(spec[1])
    first = _read_checked(sources[0], 0, path, spec)
    accumulator = np.float32(weights[0]) * first.astype(np.float32)

    for branch in range(1, len(sources)):
        leaf = _read_checked(sources[branch], branch, path, spec)
        if first is not None and not np.array_equal(first, leaf):
            if not _is_float(dtype):
                reason = f"non-float leaf ({dtype}) differs from branch 0"
                raise MergeMismatchError(branch, path, reason)
            # Branch 0's copy is only needed while every branch so far is identical to it.
            first = None
        scaled = leaf.astype(np.float32)
        del leaf
        scaled *= np.float32(weights[branch])
        accumulator += scaled
        del scaled

    return first if first is not None else accumulator.astype(dtype)
