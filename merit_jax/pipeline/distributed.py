"""Several hosts running one program: JAX's multi-controller runtime and the workdir's single writer.

Every host runs the same command and takes part in every computation; host 0 (the primary)
alone writes workdir metadata, and the others follow its decisions through broadcasts.
"""

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def initialize(config) -> None:
    """Call `jax.distributed.initialize` when `config.distributed.initialize` is set.

    Empty or zero fields are left to JAX, which reads them from the cluster environment
    (SLURM, Open MPI, Cloud TPU); set them explicitly elsewhere.
    """
    settings = config.get("distributed")
    if settings is None or not settings.initialize:
        return
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address or None,
        num_processes=settings.num_processes or None,
        process_id=settings.process_id if settings.process_id >= 0 else None,
    )
    logging.info(
        "process %d of %d, %d local and %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )


def is_primary() -> bool:
    """Tell whether this process writes workdir metadata (process 0)."""
    return jax.process_index() == 0


def agree(value: bool) -> bool:
    """Return the primary's `value` on every process, so all take the same branch."""
    if jax.process_count() == 1:
        return value
    return bool(multihost_utils.broadcast_one_to_all(np.array(value)))


def barrier(name: str) -> None:
    """Wait until every process reaches this point (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
