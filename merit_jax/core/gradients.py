"""Per-dataset mean gradients at θ(0), their stride subsampling, and their on-disk store.

MERIT's representative gradient of dataset t is g_t = Σ_b ∇loss_sum_b / Σ_b token_count_b over
the calibration batches b (token-mean loss, exact under any micro-batching). Stride s keeps the
entries whose global index i in the canonical flattening (leaves in `jax.tree_util` key order,
row-major inside a leaf) satisfies i ≡ 0 (mod s).
"""

import dataclasses
import functools
import json
import math
import os
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from merit_jax.core import tree as tree_lib

LossFn = Callable[[Any, Any], tuple[jax.Array, jax.Array]]
"""`loss_fn(params, batch) -> (loss_sum, token_count)` over the full parameter tree."""


@dataclasses.dataclass(frozen=True)
class MeanGradient:
    """Token-weighted mean gradient of one dataset over the trainable subset.

    `gradient` has the nested-dict structure of the trainable subset, every leaf float32.
    `loss_sum` and `token_count` are totals over all batches, summed in float64 on the host.
    """

    gradient: dict
    loss_sum: float
    token_count: float
    num_batches: int

    @property
    def mean_loss(self) -> float:
        """Token-mean loss Σ loss_sum / Σ token_count."""
        return self.loss_sum / self.token_count


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _accumulate_gradient(loss_fn, accumulator, trainable_params, frozen_params, batch):
    """Add ∇_trainable loss_sum of one batch to the float32 accumulator."""

    def loss_of_trainable(params):
        return loss_fn(tree_lib.combine(params, frozen_params), batch)

    (loss_sum, token_count), grads = jax.value_and_grad(loss_of_trainable, has_aux=True)(
        trainable_params
    )
    accumulator = jax.tree.map(lambda acc, g: acc + g.astype(jnp.float32), accumulator, grads)
    return accumulator, loss_sum, token_count


def dataset_mean_gradient(
    loss_fn: LossFn,
    params: dict,
    batches: Iterable[Any],
    *,
    trainable: tree_lib.PathPredicate,
    progress: bool = False,
    description: str = "gradient",
) -> MeanGradient:
    """Compute Σ_b ∇loss_sum_b / Σ_b token_count_b over the leaves that `trainable` selects.

    The frozen leaves enter the jitted step as an argument, so their values are never baked
    into the compiled program. The step is compiled once per `loss_fn` object and batch shape,
    so pass the same `loss_fn` for every dataset to reuse it. Raises ValueError when there are no
    batches or the total token count is 0.
    """
    trainable_params, frozen_params = tree_lib.partition(params, trainable)
    accumulator = jax.tree.map(
        lambda leaf: jnp.zeros_like(leaf, dtype=jnp.float32), trainable_params
    )

    # Per-batch scalars stay on the device until the loop ends, so no step blocks on a transfer.
    loss_sums, token_counts = [], []
    for batch in tqdm.tqdm(batches, desc=description, disable=not progress, unit="batch"):
        accumulator, loss_sum, token_count = _accumulate_gradient(
            loss_fn, accumulator, trainable_params, frozen_params, batch
        )
        loss_sums.append(loss_sum)
        token_counts.append(token_count)

    if not loss_sums:
        raise ValueError(f"{description}: no batches were given; the calibration set is empty")

    total_loss = float(np.sum(np.asarray(jax.device_get(loss_sums), dtype=np.float64)))
    total_tokens = float(np.sum(np.asarray(jax.device_get(token_counts), dtype=np.float64)))
    if not total_tokens > 0:
        raise ValueError(
            f"{description}: total token count is {total_tokens} over {len(loss_sums)} batches; "
            "the calibration batches contain no supervised (loss-bearing) tokens"
        )

    gradient = jax.tree.map(lambda acc: acc / np.float32(total_tokens), accumulator)
    return MeanGradient(gradient, total_loss, total_tokens, len(loss_sums))


def _validate_stride(stride: int) -> int:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    return int(stride)


def stride_indices(shapes: Sequence[tuple[int, ...]], stride: int) -> list[np.ndarray]:
    """Return, per leaf, the row-major flat indices that stride subsampling keeps.

    Leaves are taken in the given order, and the kept global indices are i ≡ 0 (mod stride).
    Leaf l keeps start_l, start_l + stride, ..., where start_l = (−offset_l) mod stride and
    offset_l is the number of entries before leaf l.
    """
    stride = _validate_stride(stride)
    indices = []
    offset = 0
    for shape in shapes:
        size = math.prod(shape)
        start = (-offset) % stride
        indices.append(np.arange(start, size, stride, dtype=np.int64))
        offset += size
    return indices


def stride_subsample(gradient_tree: Any, stride: int) -> np.ndarray:
    """Flatten a tree in canonical order and keep every `stride`-th entry, starting at index 0.

    Returns float32 (ceil(P / stride),) for P entries in total; `stride_indices` lists which
    entries of each leaf are kept.
    """
    stride = _validate_stride(stride)
    leaves = [leaf for _, leaf in tree_lib.leaves_with_paths(gradient_tree)]
    total = sum(int(np.size(leaf)) for leaf in leaves)
    output = np.empty(-(-total // stride), dtype=np.float32)

    position = 0
    offset = 0
    for leaf in leaves:
        size = int(np.size(leaf))
        start = (-offset) % stride
        if isinstance(leaf, jax.Array):
            # Slicing before the transfer moves only 1/stride of the leaf off the device.
            subsampled = np.asarray(jnp.ravel(leaf)[start::stride], dtype=np.float32)
        else:
            subsampled = np.asarray(leaf).ravel()[start::stride].astype(np.float32)
        output[position : position + subsampled.size] = subsampled
        position += subsampled.size
        offset += size

    assert position == output.size, (position, output.size)
    return output


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write through `write(file)` to a temporary name, then rename over `path`."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as file:
        write(file)
    os.replace(temporary, path)


class GradientStore:
    """Directory of per-dataset strided gradients: one float32 `.npy` vector each, plus index.json.

    index.json lists the datasets in write order with their file, L2 norm and caller statistics
    (loss, token and sample counts), the common vector length P and the stride. Every file is
    written to a temporary name and renamed, so a killed run never leaves a truncated vector.

    NOTE: nothing locks the directory. Two processes writing one store at once would each
    rewrite index.json from their own copy and drop the other's entries.
    """

    INDEX_NAME = "index.json"
    _RESERVED_STATS = ("name", "file", "norm")

    def __init__(self, directory: str | os.PathLike, *, stride: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index = self._read_index()

        if stride is not None:
            stride = _validate_stride(stride)
            stored = self._index["stride"]
            if stored is not None and stored != stride:
                raise ValueError(
                    f"{self._index_path} was written with stride {stored}, not {stride}; "
                    "use a fresh directory for a different stride"
                )
            self._index["stride"] = stride

    @property
    def _index_path(self) -> Path:
        return self.directory / self.INDEX_NAME

    def _read_index(self) -> dict:
        if not self._index_path.exists():
            return {"format": "merit_jax.gradient_store", "version": 1, "stride": None,
                    "length": None, "datasets": []}
        with open(self._index_path) as file:
            index = json.load(file)
        if index.get("format") != "merit_jax.gradient_store":
            raise ValueError(f"{self._index_path} is not a merit_jax gradient store index")
        return index

    def _write_index(self) -> None:
        data = json.dumps(self._index, indent=1).encode()
        _atomic_write_bytes(self._index_path, lambda file: file.write(data))

    def _entry(self, name: str) -> dict:
        for entry in self._index["datasets"]:
            if entry["name"] == name:
                return entry
        raise KeyError(f"dataset {name!r} is not in the gradient store {self.directory}")

    @property
    def stride(self) -> int | None:
        """Stride of the subsampling, or None when the writer did not record it."""
        return self._index["stride"]

    @property
    def length(self) -> int | None:
        """Common vector length P, or None while the store is empty."""
        return self._index["length"]

    def names(self) -> list[str]:
        """Return the dataset names in write order."""
        return [entry["name"] for entry in self._index["datasets"]]

    def path(self, name: str) -> Path:
        """Return the path of the `.npy` file of dataset `name`."""
        return self.directory / self._entry(name)["file"]

    def paths(self) -> list[Path]:
        """Return the paths of the `.npy` files, in the order of `names()`."""
        return [self.directory / entry["file"] for entry in self._index["datasets"]]

    def stats(self, name: str) -> dict:
        """Return the norm and caller statistics stored for dataset `name`."""
        entry = self._entry(name)
        return {key: value for key, value in entry.items() if key not in ("name", "file")}

    def norms(self) -> np.ndarray:
        """Return the L2 norms of the stored vectors (float64, in the order of `names()`)."""
        return np.array([entry["norm"] for entry in self._index["datasets"]], dtype=np.float64)

    def write(self, name: str, vector: np.ndarray, **stats: Any) -> Path:
        """Store the gradient vector of dataset `name` (replacing an earlier one) and its stats.

        `vector` is 1-D, finite, and as long as every vector already stored; it is saved as
        float32. `stats` are JSON-serializable numbers such as loss_sum, token_count and
        num_samples.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
        reserved = [key for key in stats if key in self._RESERVED_STATS]
        if reserved:
            raise ValueError(f"stats keys {reserved} are reserved by the gradient store")

        file_name = urllib.parse.quote(name, safe="") + ".npy"
        vector = self._validate_vector(np.asarray(vector, dtype=np.float32), file_name)

        _atomic_write_bytes(self.directory / file_name, lambda file: np.save(file, vector))

        entry = {"name": name, "file": file_name,
                 "norm": float(np.linalg.norm(vector.astype(np.float64)))}
        entry.update({key: _json_number(value, key) for key, value in stats.items()})
        names = self.names()
        if name in names:
            self._index["datasets"][names.index(name)] = entry
        else:
            self._index["datasets"].append(entry)
        self._index["length"] = int(vector.size)
        self._write_index()
        logging.info("stored gradient %r: %d entries, norm %.6g", name, vector.size, entry["norm"])
        return self.directory / file_name

    def _validate_vector(self, vector: np.ndarray, file_name: str) -> np.ndarray:
        if vector.ndim != 1:
            raise ValueError(f"gradient for {file_name} must be 1-D, got shape {vector.shape}")
        if self.length is not None and vector.size != self.length:
            raise ValueError(
                f"gradient for {file_name} has {vector.size} entries but the store "
                f"{self.directory} contains vectors of {self.length}; use the same trainable "
                "subset and stride for every dataset"
            )
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"gradient for {file_name} contains NaN or infinite entries")
        return vector

    def load(self, name: str, mmap: bool = True) -> np.ndarray:
        """Load the float32 vector of dataset `name` (read-only memory map when `mmap`)."""
        path = self.path(name)
        vector = np.load(path, mmap_mode="r" if mmap else None)
        if vector.dtype != np.float32 or vector.shape != (self.length,):
            raise ValueError(
                f"{path} contains {vector.dtype} {vector.shape}, but the index expects float32 "
                f"({self.length},); recompute this dataset's gradient"
            )
        return vector

    def missing(self, names: Iterable[str]) -> list[str]:
        """Return the names whose vector is not in the index or whose file is missing or invalid."""
        stored = set(self.names())
        missing = []
        for name in names:
            if name not in stored:
                missing.append(name)
                continue
            try:
                self.load(name, mmap=True)
            except (OSError, ValueError, EOFError):
                missing.append(name)
        return missing

    def is_complete(self, names: Iterable[str]) -> bool:
        """Return whether every dataset in `names` has a readable vector of the common length."""
        return not self.missing(names)


def _json_number(value: Any, key: str) -> Any:
    """Convert a NumPy or JAX scalar to a Python number so that json can store it."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    array = np.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"stat {key!r} must be a scalar, got shape {array.shape}")
    return array.item()


def owned_stride_entries(
    gradient_tree: Any, stride: int, devices: Sequence[jax.Device] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the strided entries stored on `devices` as (positions int64, values float32).

    `positions` index the vector `stride_subsample` returns, in increasing order, and each entry
    appears once even when shards are replicated (replica 0 owns it). With every host passing
    its own devices (the default: this process's), the hosts' entries partition the strided
    vector, so each host can write its part and the Gram matrix is the sum of per-host Grams.
    """
    stride = _validate_stride(stride)
    devices = set(jax.local_devices() if devices is None else devices)
    positions, values = [], []
    offset = 0
    for _, leaf in tree_lib.leaves_with_paths(gradient_tree):
        shape = np.shape(leaf)
        for shard in leaf.global_shards:
            if shard.device not in devices or shard.replica_id != 0:
                continue
            ranges = [np.arange(size)[index] for size, index in zip(shape, shard.index)]
            local = np.ravel_multi_index(np.meshgrid(*ranges, indexing="ij"), shape).ravel() if shape else np.zeros(1, np.int64)
            global_index = offset + local
            kept = global_index % stride == 0
            positions.append(global_index[kept] // stride)
            values.append(np.asarray(shard.data, dtype=np.float32).ravel()[kept])
        offset += int(np.prod(shape))

    if not positions:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    positions, values = np.concatenate(positions), np.concatenate(values)
    order = np.argsort(positions, kind="stable")
    return positions[order], values[order]
