"""The training loop shared by the θ0 warm-up, the joint baselines and every MERIT branch.

A run is fully determined by its starting parameters, its config and its batches per epoch.
So a run killed at any point resumes from its latest orbax checkpoint and ends with the same
weights as an uninterrupted run (bit for bit on CPU). One `Trainer` compiles its step once per
batch shape and reuses it for every run, whatever the run's length.
"""

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from tqdm.auto import tqdm

from merit_jax.core import sharding as sharding_lib
from merit_jax.core import tree as tree_lib
from merit_jax.training import checkpoint as checkpoint_lib
from merit_jax.training.metrics import MetricsWriter
from merit_jax.training.optimizer import apply_learning_rate, make_optimizer, make_run_schedule

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Final full parameters of a run, where they are stored, and the run's length."""

    params: dict
    params_dir: Path
    total_steps: int


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    micro_batches: int,
    stacked: bool = False,
    jit: bool = True,
):
    """Build `step(trainable, opt_state, frozen, batch, learning_rate)`, jitted unless `jit` is False.

    It returns `(trainable, opt_state, metrics)`. The batch (B rows) is cut into `micro_batches`
    equal slices whose gradient sums are added up with `lax.scan` before one division by the
    batch's supervised-token count, so the update equals the full-batch update of the
    token-mean loss. With `stacked`, the batch arrives already as micro-batches stacked on a
    leading axis (for batches whose arrays are not all row-major, such as image patches).
    """

    def sum_and_grad(trainable, frozen, batch):
        def objective(params):
            return loss_fn(tree_lib.combine(params, frozen), batch)

        (loss_sum, token_count), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        return grads, loss_sum, token_count

    def step(trainable, opt_state, frozen, batch, learning_rate):
        if micro_batches == 1 and not stacked:
            grads, loss_sum, token_count = sum_and_grad(trainable, frozen, batch)
        else:
            if stacked:
                sliced = batch
            else:
                sliced = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)

            def accumulate(carry, micro_batch):
                grads, loss_sum, token_count = sum_and_grad(trainable, frozen, micro_batch)
                total = jax.tree.map(jnp.add, carry[0], grads)
                return (total, carry[1] + loss_sum, carry[2] + token_count), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
            start = (zeros, jnp.float32(0.0), jnp.float32(0.0))
            (grads, loss_sum, token_count), _ = jax.lax.scan(accumulate, start, sliced)

        # An all-padding batch has no supervised token: its gradient is zero, not NaN.
        grads = jax.tree.map(lambda g: g / jnp.maximum(token_count, 1.0), grads)
        directions, opt_state = optimizer.update(grads, opt_state, trainable)
        updates = apply_learning_rate(directions, learning_rate)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {
            "loss_sum": loss_sum,
            "token_count": token_count,
            "grad_norm": optax.global_norm(grads),
        }
        return trainable, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1)) if jit else step


def _checkpoint_manager(run_dir: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=True,
        cleanup_tmp_directories=True,
        # Synchronous saves: the step donates its input buffers, which an asynchronous save
        # could still be reading.
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(run_dir.absolute() / "checkpoints", options=options)


class Trainer:
    """Trains the `trainable` subset of a parameter tree with one optimizer recipe.

    `train_config` is a `config.train`-like ConfigDict: learning_rate, warmup_fraction, decay,
    optimizer, adam_b1/b2/eps, weight_decay, clip_norm, micro_batches, log_every and
    checkpoint_every (steps), and optionally snapshots: the number of evenly spaced intermediate
    copies of the trainable parameters kept in `run_dir/snapshots/<step>` for trajectory plots.
    """

    def __init__(
        self,
        *,
        loss_fn: Callable,
        trainable: Callable[[str], bool],
        train_config,
        stacked_batches: bool = False,
        placement: sharding_lib.Placement | None = None,
    ):
        self.config = train_config
        self.trainable = trainable
        self.placement = placement
        self.optimizer = make_optimizer(train_config)
        self._step = make_train_step(loss_fn, self.optimizer, train_config.micro_batches, stacked_batches, jit=False)
        self.step_fn = jax.jit(self._step, donate_argnums=(0, 1))
        self._sharded_step = None

    def run(
        self,
        *,
        run_dir: str | Path,
        params: dict,
        epoch_batches: Callable[[int], Sequence[Batch]],
        num_epochs: int,
    ) -> RunResult:
        """Train for `num_epochs` and store the full final parameters in `run_dir/params`.

        `epoch_batches(e)` returns the batches of epoch `e` (the same number every epoch). A run
        whose final parameters already exist is loaded, not retrained.
        """
        run_dir = Path(run_dir)
        params_dir = run_dir / "params"
        first_epoch = epoch_batches(0)
        steps_per_epoch = len(first_epoch)
        if steps_per_epoch == 0:
            raise ValueError(f"run {run_dir.name} has no batches; check that its datasets are not empty")
        total_steps = num_epochs * steps_per_epoch

        if checkpoint_lib.is_checkpoint(params_dir):
            logging.info("run %s: final parameters exist, loading %s", run_dir.name, params_dir)
            return RunResult(checkpoint_lib.load_params(params_dir, params), params_dir, total_steps)

        selected, frozen = tree_lib.partition(params, self.trainable)
        if self.placement is not None:
            selected_shardings, frozen_shardings = tree_lib.partition(self.placement.params, self.trainable)
            selected = sharding_lib.place(selected, selected_shardings)
            frozen = sharding_lib.place(frozen, frozen_shardings)
        # The step donates its buffers; copying first leaves the caller's `params` intact.
        selected = jax.tree.map(jnp.copy, selected)
        opt_state = jax.jit(self.optimizer.init)(selected)
        if self.placement is not None:
            # Moment estimates follow their parameters; scalars such as the step count are
            # created on one device and must join the mesh, replicated.
            mesh_devices = self.placement.mesh.devices.size
            replicated = sharding_lib.replicated(self.placement.mesh)
            opt_state = jax.tree.map(
                lambda leaf: leaf if len(leaf.sharding.device_set) == mesh_devices else jax.device_put(leaf, replicated),
                opt_state,
            )
        state = {"trainable": selected, "opt_state": opt_state}
        manager = _checkpoint_manager(run_dir)
        metrics = MetricsWriter(run_dir / "metrics.jsonl")
        start_step = manager.latest_step() or 0
        if start_step:
            abstract = checkpoint_lib.abstract_like(state)
            state = manager.restore(start_step, args=ocp.args.StandardRestore(abstract))
            metrics.truncate_after(start_step)
            logging.info("run %s: resuming at step %d of %d", run_dir.name, start_step, total_steps)
        else:
            logging.info("run %s: training %d steps (%d epochs)", run_dir.name, total_steps, num_epochs)

        _write_run_info(run_dir, total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
        schedule = make_run_schedule(self.config, total_steps)
        trained = self._loop(
            run_dir, state, frozen, epoch_batches, first_epoch, start_step, total_steps, schedule,
            manager, metrics,
        )

        final = tree_lib.combine(trained, frozen)
        checkpoint_lib.save_params(params_dir, final)
        manager.close()
        # The final parameters replace the resumable checkpoint, which also contains the optimizer state.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        logging.info("run %s: finished, parameters in %s", run_dir.name, params_dir)
        return RunResult(final, params_dir, total_steps)

    def _step_on_mesh(self, trainable, opt_state, frozen):
        # Built on first use, when the placed state exists; every run of this trainer reuses it.
        if self._sharded_step is None:
            self._sharded_step = _jit_on_mesh(self._step, trainable, opt_state, frozen, self.placement.mesh)
        return self._sharded_step

    def _loop(
        self, run_dir, state, frozen, epoch_batches, first_epoch, start_step, total_steps, schedule,
        manager, metrics,
    ):
        steps_per_epoch = len(first_epoch)
        snapshot_steps = _snapshot_steps(total_steps, self.config.get("snapshots", 0))
        trainable, opt_state = state["trainable"], state["opt_state"]
        epoch, batches = 0, first_epoch
        window, window_start = [], time.perf_counter()

        progress = tqdm(total=total_steps, initial=start_step, desc=run_dir.name, unit="step")
        for step in range(start_step, total_steps):
            if step // steps_per_epoch != epoch:
                epoch = step // steps_per_epoch
                batches = epoch_batches(epoch)
            learning_rate = np.float32(schedule(step))
            batch = batches[step % steps_per_epoch]
            step_fn = self.step_fn if self.placement is None else self._step_on_mesh(trainable, opt_state, frozen)
            if self.placement is not None:
                batch = self.placement.place_batch(batch)
            trainable, opt_state, step_metrics = step_fn(trainable, opt_state, frozen, batch, learning_rate)
            window.append((step_metrics, learning_rate))
            done = step + 1

            if done % self.config.log_every == 0 or done == total_steps:
                record = _log_record(done, steps_per_epoch, window, window_start)
                metrics.write(record)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                window, window_start = [], time.perf_counter()
            if done in snapshot_steps:
                _save_snapshot(run_dir, done, trainable)
            if done % self.config.checkpoint_every == 0 and done < total_steps:
                saved = {"trainable": trainable, "opt_state": opt_state}
                manager.save(done, args=ocp.args.StandardSave(saved))
            progress.update(1)
        progress.close()
        return trainable


def _jit_on_mesh(step, trainable, opt_state, frozen, mesh):
    """Jit the step with explicit shardings: the state keeps its placement, metrics are replicated."""
    state_shardings = (sharding_lib.shardings_of(trainable), sharding_lib.shardings_of(opt_state))
    frozen_shardings = sharding_lib.shardings_of(frozen)
    replicated = sharding_lib.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(*state_shardings, frozen_shardings, None, replicated),
        out_shardings=(*state_shardings, replicated),
        donate_argnums=(0, 1),
    )


def _write_run_info(run_dir: Path, **info) -> None:
    """Write `run.json` (step counts), which readers of metrics and snapshots need for epoch fractions."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0:
        return
    temporary = run_dir / f".run.json.tmp-{os.getpid()}"
    temporary.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, run_dir / "run.json")


def _snapshot_steps(total_steps: int, count: int) -> set[int]:
    """Steps after which to keep a snapshot: `count` evenly spaced points before the last step."""
    steps = {round(total_steps * index / (count + 1)) for index in range(1, count + 1)}
    return {step for step in steps if 0 < step < total_steps}


def _save_snapshot(run_dir: Path, step: int, trainable) -> None:
    directory = run_dir / "snapshots" / f"{step:08d}"
    # A resumed run passes the same steps again; the snapshot saved before the kill is kept.
    if checkpoint_lib.is_checkpoint(directory):
        return
    shutil.rmtree(directory, ignore_errors=True)
    checkpoint_lib.save_params(directory, trainable)


def _log_record(step: int, steps_per_epoch: int, window: list, started: float) -> dict:
    loss_sum = sum(float(metrics["loss_sum"]) for metrics, _ in window)
    token_count = sum(float(metrics["token_count"]) for metrics, _ in window)
    last_metrics, last_learning_rate = window[-1]
    return {
        "step": step,
        "epoch": step / steps_per_epoch,
        "loss": loss_sum / max(token_count, 1.0),
        "tokens": token_count,
        "grad_norm": float(last_metrics["grad_norm"]),
        "learning_rate": float(last_learning_rate),
        "tokens_per_second": token_count / max(time.perf_counter() - started, 1e-9),
    }
