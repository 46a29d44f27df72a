"""Device meshes and the placement of parameters and batches on them, by rules that know no model.

A mesh has a `data` axis (batch parallelism, and FSDP for parameters by default) and an
optional `model` axis. Parameters are placed by regex → `PartitionSpec` rules on their path
strings ("model/layers/3/mlp/up_proj/kernel"); the first matching rule wins, and a leaf no rule
matches is sharded FSDP-style: its largest dimension divisible by the `data` axis is split.
"""

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merit_jax.core import tree as tree_lib

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a (data, model) mesh with automatic sharding propagation.

    `data = -1` takes every device not used by the `model` axis. `devices` defaults to all
    devices (of every process when several hosts run the same program).
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"model axis size {model} must be >= 1 and divide the {len(devices)} devices")
    if data == -1:
        data = len(devices) // model
    if data < 1 or data * model != len(devices):
        raise ValueError(
            f"mesh (data={data}, model={model}) needs {data * model} devices but {len(devices)} are given; "
            "set mesh.data to -1 to use every device"
        )
    axis_types = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, model), (DATA_AXIS, MODEL_AXIS), axis_types=axis_types, devices=devices)


@dataclasses.dataclass(frozen=True)
class ShardingRule:
    """Leaves whose path matches `pattern` (re.search) get `spec`; None entries are replicated dims."""

    pattern: str
    spec: tuple

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"invalid sharding rule regex {self.pattern!r}: {error}") from error


def parse_rules(rules: Sequence) -> list[ShardingRule]:
    """Turn (pattern, spec) pairs from a config into rules; spec entries are axis names or None."""
    parsed = []
    for rule in rules:
        if isinstance(rule, ShardingRule):
            parsed.append(rule)
            continue
        pattern, spec = rule
        spec = tuple(None if axis in (None, "", "None") else axis for axis in spec)
        parsed.append(ShardingRule(pattern, spec))
    return parsed


def fsdp_spec(shape: Sequence[int], mesh: Mesh, axis: str = DATA_AXIS) -> PartitionSpec:
    """Split the largest dimension that `axis` divides; replicate when none does (or for scalars)."""
    size = mesh.shape[axis]
    if size == 1 or not shape:
        return PartitionSpec()
    candidates = [dim for dim in np.argsort(shape)[::-1] if shape[dim] % size == 0]
    if not candidates:
        return PartitionSpec()
    spec = [None] * len(shape)
    spec[int(candidates[0])] = axis
    return PartitionSpec(*spec)


def _check_spec(path: str, shape: Sequence[int], spec: tuple, mesh: Mesh) -> None:
    if len(spec) > len(shape):
        raise ValueError(f"sharding rule for {path!r} has {len(spec)} entries but the leaf has shape {tuple(shape)}")
    for dim, axes in enumerate(spec):
        if axes is None:
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        unknown = [name for name in names if name not in mesh.shape]
        if unknown:
            raise ValueError(f"sharding rule for {path!r} names mesh axes {unknown}; the mesh has {list(mesh.shape)}")
        size = int(np.prod([mesh.shape[name] for name in names]))
        if shape[dim] % size:
            raise ValueError(
                f"sharding rule for {path!r} splits dimension {dim} of shape {tuple(shape)} over "
                f"{names} ({size} devices), which does not divide it; change the rule or the mesh"
            )


def partition_specs(abstract_params: Any, mesh: Mesh, rules: Sequence = ()) -> Any:
    """Return a tree of PartitionSpecs for `abstract_params` (arrays or ShapeDtypeStructs)."""
    parsed = parse_rules(rules)

    def spec_for(key_path, leaf):
        path = tree_lib.path_string(key_path)
        shape = tuple(np.shape(leaf))
        for rule in parsed:
            if re.search(rule.pattern, path):
                _check_spec(path, shape, rule.spec, mesh)
                return PartitionSpec(*rule.spec)
        return fsdp_spec(shape, mesh)

    return jax.tree_util.tree_map_with_path(spec_for, abstract_params)


def named_shardings(specs: Any, mesh: Mesh) -> Any:
    """Wrap every PartitionSpec of `specs` into a NamedSharding on `mesh`."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(abstract_params: Any, mesh: Mesh, rules: Sequence = ()) -> Any:
    """NamedShardings of every parameter leaf under `rules` (FSDP over `data` by default)."""
    return named_shardings(partition_specs(abstract_params, mesh, rules), mesh)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shardings(batch_specs: Any, mesh: Mesh) -> Any:
    """NamedShardings for a batch from per-array PartitionSpecs (the batch axis named `data`)."""
    return named_shardings(batch_specs, mesh)


def place(tree: Any, shardings: Any) -> Any:
    """Put every leaf of `tree` (host or device arrays) on its sharding.

    With several hosts, every host has the same host arrays, and each contributes the slices
    its own devices need.
    """

    def put(leaf, sharding):
        if jax.process_count() > 1 and not isinstance(leaf, jax.Array):
            array = np.asarray(leaf)
            return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, tree, shardings)


def shardings_of(tree: Any) -> Any:
    """Return the sharding of every array leaf of `tree`."""
    return jax.tree.map(lambda leaf: leaf.sharding, tree)


def log_placement(abstract_params: Any, specs: Any, mesh: Mesh) -> None:
    """Log how many parameters each PartitionSpec covers, as a check on the rules."""
    counts: dict[str, int] = {}
    for (_, leaf), spec in zip(
        tree_lib.leaves_with_paths(abstract_params),
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
    ):
        counts[str(spec)] = counts.get(str(spec), 0) + int(np.prod(np.shape(leaf)))
    logging.info("mesh %s; parameters per partition spec: %s", dict(mesh.shape), counts)


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity
class Placement:
    """Device placement of a run: the mesh, the full parameter tree's shardings and batch specs.

    `batch_specs(batch)` returns a PartitionSpec per batch array (its batch axis on `data`).
    """

    mesh: Mesh
    params: Any
    batch_specs: Any

    def place_batch(self, batch: Any) -> Any:
        return place(batch, batch_shardings(self.batch_specs(batch), self.mesh))
