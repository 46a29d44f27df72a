"""Leaf paths, path filters and the split of a parameter tree into trainable and frozen parts.

Parameter trees are nested dicts (str or int keys) of arrays, as `flax.nnx.to_pure_dict` returns.
A leaf's path string joins its keys with "/" (`model/layers/3/self_attn/q_proj/kernel`). The
canonical leaf order is the order of `jax.tree_util.tree_flatten_with_path`: dict keys sorted at
every level (int keys numerically), which every module of `merit_jax.core` relies on.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

PathPredicate = Callable[[str], bool]

# Number of example paths quoted in errors about filters that match nothing.
_EXAMPLE_PATHS = 5


def _key_name(key: Any) -> str:
    """Return the name of one entry of a JAX key path (dict key, sequence index or attribute)."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_string(key_path: Sequence[Any]) -> str:
    """Join a JAX key path into a path string such as `model/layers/3/mlp/up_proj/kernel`."""
    return "/".join(_key_name(key) for key in key_path)


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """Return `(path_string, leaf)` for every leaf of `tree`, in canonical order.

    Raises ValueError when two leaves share a path string (a key "a/b" next to a nested
    a → b), because every consumer addresses leaves by path.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    result = [(path_string(key_path), leaf) for key_path, leaf in flat]

    seen = set()
    for path, _ in result:
        if path in seen:
            raise ValueError(f"two leaves share the path string {path!r}; rename one of the keys")
        seen.add(path)
    return result


@dataclasses.dataclass(frozen=True)
class PathFilter:
    """Predicate on path strings: true when some `include` regex and no `exclude` regex match.

    Patterns use `re.search`, so they match anywhere in the path unless anchored.
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...]
    _include: tuple[re.Pattern, ...] = dataclasses.field(repr=False, compare=False)
    _exclude: tuple[re.Pattern, ...] = dataclasses.field(repr=False, compare=False)

    def __call__(self, path: str) -> bool:
        if not any(pattern.search(path) for pattern in self._include):
            return False
        return not any(pattern.search(path) for pattern in self._exclude)


def _compile_patterns(patterns: Sequence[str], role: str) -> tuple[re.Pattern, ...]:
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{role} pattern {pattern!r} is not a string")
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"invalid {role} regex {pattern!r}: {error}") from error
    return tuple(compiled)


def path_filter(
    include: str | Sequence[str] = (".*",), exclude: Sequence[str] = ()
) -> PathFilter:
    """Build a `PathFilter` from regexes; an invalid regex raises ValueError naming it."""
    if isinstance(include, str):
        include = (include,)
    if isinstance(exclude, str):
        exclude = (exclude,)
    include, exclude = tuple(include), tuple(exclude)
    if not include:
        raise ValueError("path_filter needs at least one include pattern; use '.*' for all")
    return PathFilter(
        include=include,
        exclude=exclude,
        _include=_compile_patterns(include, "include"),
        _exclude=_compile_patterns(exclude, "exclude"),
    )


def _raw_key(key: Any) -> Any:
    if isinstance(key, jax.tree_util.DictKey):
        return key.key
    raise TypeError(
        f"parameter trees must be nested dicts, but found the key path entry {key!r}; "
        "convert the state with flax.nnx.to_pure_dict"
    )


def _insert(tree: dict, keys: Sequence[Any], leaf: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = leaf


def partition(tree: Mapping, predicate: PathPredicate) -> tuple[dict, dict]:
    """Split a nested dict into `(selected, rest)` by a predicate on leaf path strings.

    Both outputs are nested dicts with the original keys; a sub-dict with no leaf on one side is
    absent from that side. Raises ValueError when the predicate selects no leaf.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    selected: dict = {}
    rest: dict = {}
    for key_path, leaf in flat:
        keys = [_raw_key(key) for key in key_path]
        _insert(selected if predicate(path_string(key_path)) else rest, keys, leaf)

    if not selected:
        examples = [path_string(key_path) for key_path, _ in flat[:_EXAMPLE_PATHS]]
        raise ValueError(
            f"predicate {predicate!r} selects none of the {len(flat)} leaves; "
            f"example paths: {examples}; fix the trainable include/exclude patterns"
        )
    return selected, rest


def combine(first: Mapping, second: Mapping) -> dict:
    """Return the deep union of two nested dicts; a leaf path present in both raises ValueError.

    Works on traced values, so it can rebuild the full tree inside a jitted function.
    """
    return _combine(first, second, prefix=())


def _combine(first: Mapping, second: Mapping, prefix: tuple) -> dict:
    merged = dict(first)
    for key, value in second.items():
        if key not in merged:
            merged[key] = value
            continue

        existing = merged[key]
        if isinstance(existing, Mapping) and isinstance(value, Mapping):
            merged[key] = _combine(existing, value, prefix + (key,))
        else:
            path = "/".join(str(part) for part in prefix + (key,))
            raise ValueError(f"cannot combine trees: path {path!r} is present in both")
    return merged


def tree_size(tree: Any) -> int:
    """Return the total number of scalar entries over all leaves."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


def tree_vdot(first: Any, second: Any) -> jax.Array:
    """Return Σ over leaves of <first, second>, each leaf cast to float32 before the product."""
    first_structure = jax.tree_util.tree_structure(first)
    second_structure = jax.tree_util.tree_structure(second)
    if first_structure != second_structure:
        raise ValueError(
            f"tree_vdot needs trees of one structure, got {first_structure} and {second_structure}"
        )

    products = [
        jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32))
        for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second))
    ]
    return jnp.sum(jnp.stack(products)) if products else jnp.float32(0.0)


def tree_l2_norm(tree: Any) -> jax.Array:
    """Return the global L2 norm over all leaves, accumulated in float32."""
    squares = [
        jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree_util.tree_leaves(tree)
    ]
    return jnp.sqrt(jnp.sum(jnp.stack(squares))) if squares else jnp.float32(0.0)
