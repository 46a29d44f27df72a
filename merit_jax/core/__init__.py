"""MERIT's method over plain parameter pytrees: gradients, conflicts, PCA, split and merge.

This package does not depend on models, tokens or files, apart from the gradient store it
writes. Models enter only through `loss_fn(params, batch) -> (loss_sum, token_count)`.
"""

from merit_jax.core.conflicts import PCAResult, cosine_from_gram, gram_blockwise, pca_embedding
from merit_jax.core.gradients import (
    GradientStore,
    LossFn,
    MeanGradient,
    dataset_mean_gradient,
    stride_indices,
    stride_subsample,
)
from merit_jax.core.merge import (
    InMemoryLeafSource,
    LeafSource,
    MergeMismatchError,
    merge_streaming,
    merge_weights,
    weighted_average,
)
from merit_jax.core.split import (
    GroupBudgets,
    Split,
    group_budgets,
    random_split,
    weighted_median_split,
)
from merit_jax.core.tree import (
    PathFilter,
    combine,
    leaves_with_paths,
    partition,
    path_filter,
    path_string,
    tree_l2_norm,
    tree_size,
    tree_vdot,
)
