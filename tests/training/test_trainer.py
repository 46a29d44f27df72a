"""Tests of the optimizer recipe and the resumable training loop on a small softmax regression."""

import json

import ml_collections
import numpy as np
import optax
import pytest
import jax
import jax.numpy as jnp

from merit_jax.core import tree as tree_lib
from merit_jax.training import checkpoint as checkpoint_lib
from merit_jax.training.metrics import read_metrics
from merit_jax.training.optimizer import apply_learning_rate, make_optimizer, make_schedule
from merit_jax.training.trainer import Trainer, make_train_step

FEATURES, CLASSES, ROWS = 6, 4, 8


def _config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            optimizer="adamw", learning_rate=0.05, warmup_fraction=0.1, decay="cosine",
            adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.01, clip_norm=1.0,
            batch_size=ROWS, micro_batches=1, log_every=2, checkpoint_every=3,
        )
    )
    config.update(overrides)
    return config


def _loss_fn(params, batch):
    logits = batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]
    log_probs = jax.nn.log_softmax(logits)
    token_loss = -jnp.take_along_axis(log_probs, batch["y"][:, None], axis=1)[:, 0]
    return jnp.sum(token_loss * batch["mask"]), jnp.sum(batch["mask"])


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(FEATURES, CLASSES)), jnp.float32),
            "bias": jnp.zeros((CLASSES,), jnp.float32),
        },
        "frozen_scale": jnp.ones((3,), jnp.float32),
    }


_TRUE_KERNEL = np.random.default_rng(7).normal(size=(FEATURES, CLASSES))


def _batches(seed, count=5):
    """Batches whose labels a linear model can learn, with one padding row each."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
        mask = np.ones(ROWS, np.float32)
        mask[rng.integers(0, ROWS)] = 0.0
        labels = np.argmax(x @ _TRUE_KERNEL, axis=1).astype(np.int32)
        batches.append({"x": x, "y": labels, "mask": mask})
    return batches


def _epoch_batches(epoch):
    return _batches(100 + epoch)


TRAINABLE = tree_lib.path_filter("dense")


def test_optimizer_matches_optax_adamw():
    config = _config(learning_rate=0.01, weight_decay=0.1)
    params = _params()["dense"]
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    ours, reference = make_optimizer(config), optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(0.01, weight_decay=0.1)
    )
    ours_state, reference_state = ours.init(params), reference.init(params)
    ours_params, reference_params = params, params
    for _ in range(3):
        directions, ours_state = ours.update(grads, ours_state, ours_params)
        ours_params = optax.apply_updates(ours_params, apply_learning_rate(directions, 0.01))
        updates, reference_state = reference.update(grads, reference_state, reference_params)
        reference_params = optax.apply_updates(reference_params, updates)
    for ours_leaf, reference_leaf in zip(jax.tree.leaves(ours_params), jax.tree.leaves(reference_params)):
        np.testing.assert_allclose(ours_leaf, reference_leaf, rtol=1e-6, atol=1e-7)


def test_schedule_warms_up_then_decays_to_zero():
    schedule = make_schedule(peak_learning_rate=1.0, total_steps=100, warmup_fraction=0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(50)) < 1.0


def test_micro_batches_match_full_batch():
    config = _config()
    params = _params()
    trainable, frozen = tree_lib.partition(params, TRAINABLE)
    results = []
    for micro_batches in (1, 4):
        optimizer = make_optimizer(config)
        step = make_train_step(_loss_fn, optimizer, micro_batches)
        copied = jax.tree.map(jnp.array, trainable)
        updated, _, metrics = step(copied, optimizer.init(copied), frozen, _batches(1)[0], np.float32(0.05))
        results.append((updated, float(metrics["loss_sum"]), float(metrics["token_count"])))
    (full, full_loss, full_tokens), (sliced, sliced_loss, sliced_tokens) = results
    assert full_tokens == sliced_tokens == ROWS - 1
    assert sliced_loss == pytest.approx(full_loss, rel=1e-6)
    for full_leaf, sliced_leaf in zip(jax.tree.leaves(full), jax.tree.leaves(sliced)):
        np.testing.assert_allclose(full_leaf, sliced_leaf, rtol=1e-6, atol=1e-7)


def test_run_trains_and_keeps_frozen_leaves(tmp_path):
    trainer = Trainer(loss_fn=_loss_fn, trainable=TRAINABLE, train_config=_config())
    start = _params()
    result = trainer.run(run_dir=tmp_path / "run", params=start, epoch_batches=_epoch_batches, num_epochs=2)

    assert result.total_steps == 10
    assert np.array_equal(result.params["frozen_scale"], start["frozen_scale"])
    assert not np.allclose(result.params["dense"]["kernel"], start["dense"]["kernel"])
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [record["step"] for record in records] == [2, 4, 6, 8, 10]
    assert records[-1]["loss"] < records[0]["loss"]
    assert checkpoint_lib.is_checkpoint(tmp_path / "run" / "params")
    assert not (tmp_path / "run" / "checkpoints").exists()


class _Interrupt(Exception):
    pass


class _FailingEpoch(list):
    """Batches of one epoch whose item `fail_at` raises, as a killed process would stop there."""

    def __init__(self, batches, fail_at):
        super().__init__(batches)
        self.fail_at = fail_at

    def __getitem__(self, index):
        if index == self.fail_at:
            raise _Interrupt(f"interrupted at batch {index}")
        return super().__getitem__(index)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    config = _config()
    uninterrupted = Trainer(loss_fn=_loss_fn, trainable=TRAINABLE, train_config=config).run(
        run_dir=tmp_path / "whole", params=_params(), epoch_batches=_epoch_batches, num_epochs=2
    )

    # Interrupt in epoch 1 at step 8, after the checkpoint of step 6 and the log of step 8.
    def failing(epoch):
        return _FailingEpoch(_epoch_batches(epoch), fail_at=3) if epoch == 1 else _epoch_batches(epoch)

    trainer = Trainer(loss_fn=_loss_fn, trainable=TRAINABLE, train_config=config)
    with pytest.raises(_Interrupt):
        trainer.run(run_dir=tmp_path / "cut", params=_params(), epoch_batches=failing, num_epochs=2)
    assert (tmp_path / "cut" / "checkpoints").exists()
    assert not (tmp_path / "cut" / "params").exists()

    resumed = Trainer(loss_fn=_loss_fn, trainable=TRAINABLE, train_config=config).run(
        run_dir=tmp_path / "cut", params=_params(), epoch_batches=_epoch_batches, num_epochs=2
    )
    for whole_leaf, resumed_leaf in zip(jax.tree.leaves(uninterrupted.params), jax.tree.leaves(resumed.params)):
        assert np.array_equal(np.asarray(whole_leaf), np.asarray(resumed_leaf))
    steps = [record["step"] for record in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == [2, 4, 6, 8, 10]


def test_finished_run_is_loaded_not_retrained(tmp_path):
    trainer = Trainer(loss_fn=_loss_fn, trainable=TRAINABLE, train_config=_config())
    first = trainer.run(run_dir=tmp_path / "run", params=_params(), epoch_batches=_epoch_batches, num_epochs=1)

    def no_batches_after_first(epoch):
        if epoch > 0:
            raise AssertionError("a finished run must not train again")
        return _epoch_batches(epoch)

    again = trainer.run(run_dir=tmp_path / "run", params=_params(), epoch_batches=no_batches_after_first, num_epochs=1)
    assert np.array_equal(first.params["dense"]["kernel"], again.params["dense"]["kernel"])


def test_snapshots_are_evenly_spaced_and_survive_resume(tmp_path):
    config = _config(snapshots=3)
    trainer = Trainer(loss_fn=_loss_fn, trainable=TRAINABLE, train_config=config)

    def failing(epoch):
        return _FailingEpoch(_epoch_batches(epoch), fail_at=4) if epoch == 1 else _epoch_batches(epoch)

    with pytest.raises(_Interrupt):
        trainer.run(run_dir=tmp_path / "run", params=_params(), epoch_batches=failing, num_epochs=2)
    result = trainer.run(run_dir=tmp_path / "run", params=_params(), epoch_batches=_epoch_batches, num_epochs=2)

    snapshots = sorted(path.name for path in (tmp_path / "run" / "snapshots").iterdir())
    assert snapshots == ["00000002", "00000005", "00000008"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info == {"num_epochs": 2, "steps_per_epoch": 5, "total_steps": 10}
    snapshot_dir = tmp_path / "run" / "snapshots" / "00000008"
    snapshot = checkpoint_lib.load_params(snapshot_dir, {"dense": result.params["dense"]})
    assert not np.array_equal(snapshot["dense"]["kernel"], result.params["dense"]["kernel"])
    assert "frozen_scale" not in snapshot
