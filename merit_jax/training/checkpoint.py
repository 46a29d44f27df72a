"""Parameter checkpoints on disk (orbax), restored into a target that fixes structure and layout.

Orbax stores integer dict keys (layer indices) as strings, so a checkpoint is always restored
into an abstract target (`jax.ShapeDtypeStruct` leaves, optionally with shardings) that carries
the model's real key types. `OrbaxLeafSource` reads one leaf at a time for streaming merges.
"""

import logging as python_logging
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from merit_jax.core import tree as tree_lib


class QuietCheckpointing(python_logging.Filter):
    """Drop orbax's per-operation INFO records (dozens per save), keeping its warnings and errors."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def abstract_like(tree, sharding=None):
    """Return `tree` with every array replaced by a `jax.ShapeDtypeStruct`.

    Each struct carries `sharding` when given, else the leaf's own sharding (for placed arrays),
    so restoring into it puts every array back where it lives now.
    """

    def abstract(leaf):
        leaf_sharding = sharding if sharding is not None else getattr(leaf, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=leaf_sharding)

    return jax.tree.map(abstract, tree)


def save_params(directory: str | os.PathLike, params) -> None:
    """Write `params` as an orbax checkpoint at `directory`, which must not exist yet.

    Orbax writes into a temporary sibling and renames it on commit, so a killed process never
    leaves a directory that looks complete.
    """
    directory = Path(directory).absolute()
    if directory.exists():
        raise FileExistsError(
            f"checkpoint directory {directory} already exists; it is never overwritten. "
            "Delete it first if it is stale."
        )
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, params)
    checkpointer.wait_until_finished()


def load_params(directory: str | os.PathLike, target):
    """Restore the checkpoint at `directory` into the structure, dtypes and shardings of `target`.

    `target` is a pytree of arrays or `jax.ShapeDtypeStruct`s (see `abstract_like`).
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {directory} not found")
    abstract = jax.tree.map(
        lambda leaf: leaf
        if isinstance(leaf, jax.ShapeDtypeStruct)
        else jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype),
        target,
    )
    return ocp.StandardCheckpointer().restore(directory, abstract)


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """Tell whether `directory` contains a committed orbax checkpoint."""
    directory = Path(directory)
    return directory.is_dir() and (directory / "_CHECKPOINT_METADATA").exists()


class OrbaxLeafSource:
    """Read the leaves of one orbax parameter checkpoint one at a time (for streaming merges)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).absolute()
        if not is_checkpoint(self.directory):
            raise FileNotFoundError(f"checkpoint {self.directory} not found or not committed")
        metadata = ocp.StandardCheckpointer().metadata(self.directory).item_metadata.tree
        self._specs = {
            path: (tuple(leaf.shape), np.dtype(leaf.dtype))
            for path, leaf in tree_lib.leaves_with_paths(metadata)
        }
        self._checkpointer = ocp.PyTreeCheckpointer()

    def leaf_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return dict(self._specs)

    def read(self, path: str) -> np.ndarray:
        if path not in self._specs:
            raise KeyError(f"leaf {path!r} not found in checkpoint {self.directory}")
        item, restore_args = {}, {}
        keys = path.split("/")
        item_node, args_node = item, restore_args
        for key in keys[:-1]:
            item_node = item_node.setdefault(key, {})
            args_node = args_node.setdefault(key, {})
        item_node[keys[-1]] = 0
        args_node[keys[-1]] = ocp.RestoreArgs(restore_type=np.ndarray)

        restored = self._checkpointer.restore(
            self.directory,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
        for key in keys:
            restored = restored[key]
        return np.asarray(restored)
