"""Recursive weighted-median split of T datasets into K = 2^r groups along global PCA axes.

MERIT (Choi and Kim, arXiv:2606.01717) splits 50/50 at weighted medians. Here, at depth j every
group is ordered by (z_{t,j}, t) and cut after the m* datasets that minimize |2 c_m − W| (c_m the
cumulative weight, W the group's weight, smallest m on ties), so |W_low − W_high| ≤ max_t w_t.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class Split:
    """A partition of datasets 0..T−1 into 2^r groups, ordered by their bit-string labels.

    groups[k]: dataset indices of group k in ascending order. labels[k]: bits b_1…b_r, where b_j
    is 0 on the low side of the cut along axis j. group_weights[k]: total split weight.
    """

    groups: list[list[int]]
    labels: list[str]
    group_weights: list[float]

    @property
    def num_groups(self) -> int:
        """Number of groups K = 2^r."""
        return len(self.groups)

    def assignment(self) -> np.ndarray:
        """Return the group index of every dataset, int64 (T,)."""
        num_datasets = sum(len(group) for group in self.groups)
        assignment = np.full(num_datasets, -1, dtype=np.int64)
        for group_index, group in enumerate(self.groups):
            assignment[group] = group_index
        return assignment


def _validate_weights(weights: Sequence[float], num_datasets: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (num_datasets,):
        raise ValueError(f"expected {num_datasets} split weights, got shape {weights.shape}")
    invalid = np.flatnonzero(~(np.isfinite(weights) & (weights > 0)))
    if invalid.size:
        index = int(invalid[0])
        raise ValueError(
            "split weights must be positive and finite; "
            f"dataset {index} has weight {weights[index]}"
        )
    return weights


def _validate_depth(r: int, num_datasets: int) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
        raise ValueError(f"split depth r must be a non-negative integer, got {r!r}")
    if 2**r > num_datasets:
        largest = int(math.floor(math.log2(num_datasets))) if num_datasets else 0
        raise ValueError(
            f"cannot split T = {num_datasets} datasets into 2^r = {2**r} non-empty groups "
            f"(r = {r}); use r <= {largest}"
        )
    return int(r)


def _cut_point(ordered_weights: np.ndarray, min_side: int, label: str, depth: int) -> int:
    """Return m* = argmin |2 c_m − W| over m in [min_side, n − min_side], smallest m on ties.

    The unrestricted rule searches m in [1, n − 1]. `min_side` (the number of groups each side
    must still yield) only binds when heavy datasets would leave one side too small to split
    further, and then the balance bound can fail at this cut, which is logged.
    """
    cumulative = np.cumsum(ordered_weights)
    total = cumulative[-1]
    imbalance = np.abs(2.0 * cumulative[:-1] - total)  # entry m − 1 is the cut after m datasets
    unrestricted = int(np.argmin(imbalance)) + 1

    size = ordered_weights.size
    if min_side <= unrestricted <= size - min_side:
        return unrestricted
    restricted = min_side + int(np.argmin(imbalance[min_side - 1 : size - min_side]))
    logging.warning(
        "split group %r at depth %d: the weighted median would leave fewer than %d datasets on "
        "one side, so the cut moves from %d to %d datasets and may exceed the balance bound",
        label, depth, min_side, unrestricted, restricted,
    )
    return restricted


def weighted_median_split(
    scores: np.ndarray, weights: Sequence[float], *, r: int | None = None
) -> Split:
    """Split datasets by recursive weighted medians of the first r columns of `scores` (T, ≥ r).

    Axis j (global, never recomputed inside a group) is used at depth j, datasets are atomic,
    and both sides of every cut are non-empty. Only the order of scores along each axis
    matters, so a strictly increasing transform of an axis gives the same groups. Negating an
    axis gives the same partition with that bit flipped, unless two cuts balance equally well.

    NOTE: when the weighted median would leave a side with fewer datasets than the groups it must
    still yield (a few very heavy datasets), the cut moves inward with a logged warning, and at
    that cut |W_low − W_high| can exceed max_t w_t.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (T, r), got {scores.shape}")
    num_datasets, num_axes = scores.shape
    r = num_axes if r is None else r
    r = _validate_depth(r, num_datasets)
    if r > num_axes:
        raise ValueError(f"split depth r = {r} exceeds the {num_axes} score columns")
    if not np.all(np.isfinite(scores[:, :r])):
        raise ValueError("scores contain NaN or infinite values")
    weights = _validate_weights(weights, num_datasets)

    groups: list[list[int]] = [list(range(num_datasets))]
    labels = [""]
    for axis in range(r):
        new_groups, new_labels = [], []
        min_side = 2 ** (r - axis - 1)
        for group, label in zip(groups, labels):
            ordered = sorted(group, key=lambda t: (scores[t, axis], t))
            cut = _cut_point(weights[ordered], min_side, label, axis + 1)
            new_groups += [ordered[:cut], ordered[cut:]]
            new_labels += [label + "0", label + "1"]
        groups, labels = new_groups, new_labels

    groups = [sorted(group) for group in groups]
    group_weights = [float(np.sum(weights[group])) for group in groups]
    return Split(groups, labels, group_weights)


def random_scores(key_or_seed: int | jax.Array, num_datasets: int, r: int) -> np.ndarray:
    """Draw i.i.d. N(0, 1) scores (T, r) as `jax.random.normal(key, (T, r), float32)`, in float64.

    An int seed becomes `jax.random.key(seed)`; a key (typed or raw uint32[2]) is used as given.
    """
    if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
        key = jax.random.key(int(key_or_seed))
    else:
        key = key_or_seed
    return np.asarray(jax.random.normal(key, (num_datasets, r), dtype=np.float32), dtype=np.float64)


def random_split(key_or_seed: int | jax.Array, weights: Sequence[float], r: int) -> Split:
    """Split datasets at random into 2^r groups balanced by the same weighted-median rule."""
    num_datasets = len(weights)
    _validate_depth(r, num_datasets)
    return weighted_median_split(random_scores(key_or_seed, num_datasets, r), weights, r=r)


@dataclasses.dataclass(frozen=True)
class GroupBudgets:
    """Per-group totals in the order of `Split.groups`: Σ s_t (samples) and N_k (tokens)."""

    sample_counts: np.ndarray
    token_counts: np.ndarray


def group_budgets(
    split: Split, sample_counts: Sequence[float], token_counts: Sequence[float]
) -> GroupBudgets:
    """Sum sample counts s_t and token budgets n_t (each (T,)) over every group of `split`."""
    num_datasets = sum(len(group) for group in split.groups)
    covered = sorted(t for group in split.groups for t in group)
    if covered != list(range(num_datasets)):
        raise ValueError("split groups do not partition the datasets 0..T−1")

    totals = []
    for name, counts in (("sample_counts", sample_counts), ("token_counts", token_counts)):
        counts = np.asarray(counts)
        if counts.shape != (num_datasets,):
            raise ValueError(f"{name} must have shape ({num_datasets},), got {counts.shape}")
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError(f"{name} must be finite and non-negative")
        totals.append(np.array([counts[group].sum() for group in split.groups]))
    return GroupBudgets(*totals)
