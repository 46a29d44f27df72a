"""Sharded training and gradients equal unsharded ones; checkpoints move between meshes.

Runs on the 8 CPU devices that tests/conftest.py requests.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from merit_jax.core import conflicts, gradients
from merit_jax.core import sharding as sharding_lib
from merit_jax.core import tree as tree_lib
from merit_jax.models import qwen2
from merit_jax.models.functional import FunctionalModule
from merit_jax.training import checkpoint as checkpoint_lib
from merit_jax.training.loss import make_causal_lm_loss
from merit_jax.training.trainer import Trainer

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS)")

# Tensor-parallel rules for the Qwen2 projections; everything else falls back to FSDP over data.
QWEN2_RULES = (
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", (None, "model")),
    (r"(q_proj|k_proj|v_proj)/bias$", ("model",)),
    (r"(o_proj|down_proj)/kernel$", ("model", None)),
)
MESHES = [(8, 1), (4, 2), (2, 4)]
BATCH, LENGTH = 8, 16


def _model():
    config = qwen2.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    return FunctionalModule.from_module(qwen2.Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 128, (BATCH, LENGTH)).astype(np.int32)
    mask = (rng.random((BATCH, LENGTH)) < 0.7).astype(np.float32)
    return {
        "input_ids": ids,
        "targets": np.roll(ids, -1, axis=1),
        "loss_mask": mask,
        "attention_mask": np.ones((BATCH, LENGTH), np.int32),
    }


def _batch_specs(batch):
    return jax.tree.map(lambda x: PartitionSpec("data", *([None] * (x.ndim - 1))), batch)


def _train_config():
    return ml_collections.ConfigDict(
        dict(optimizer="adamw", learning_rate=1e-2, warmup_fraction=0.0, decay="constant", adam_b1=0.9,
             adam_b2=0.999, adam_eps=1e-8, weight_decay=0.0, clip_norm=1.0, batch_size=BATCH,
             micro_batches=1, log_every=1, checkpoint_every=100)
    )


def _train_one_step(tmp_path, functional, params, placement):
    trainer = Trainer(
        loss_fn=make_causal_lm_loss(functional.apply), trainable=lambda path: True,
        train_config=_train_config(), placement=placement,
    )
    result = trainer.run(run_dir=tmp_path, params=params, epoch_batches=lambda epoch: [_batch()], num_epochs=1)
    loss = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return result.params, loss


def _assert_trees_close(first, second, rtol):
    for (path, a), (_, b) in zip(tree_lib.leaves_with_paths(first), tree_lib.leaves_with_paths(second)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * 1e-2, err_msg=path)


@pytest.mark.parametrize("data, model", MESHES)
def test_train_step_matches_unsharded(tmp_path, data, model):
    functional, params = _model()
    reference, reference_log = _train_one_step(tmp_path / "single", functional, params, None)

    mesh = sharding_lib.make_mesh(data, model)
    placement = sharding_lib.Placement(mesh, sharding_lib.param_shardings(params, mesh, QWEN2_RULES), _batch_specs)
    sharded, sharded_log = _train_one_step(tmp_path / "sharded", functional, params, placement)

    kernel = sharded["model"]["layers"][0]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(None, "model")
    assert len(kernel.sharding.device_set) == 8
    reference_loss = float(reference_log[0].split('"loss": ')[1].split(",")[0])
    sharded_loss = float(sharded_log[0].split('"loss": ')[1].split(",")[0])
    assert sharded_loss == pytest.approx(reference_loss, rel=1e-6)
    _assert_trees_close(sharded, reference, rtol=1e-6)


def test_gradient_stage_cosine_matches_unsharded():
    functional, params = _model()
    loss_fn = make_causal_lm_loss(functional.apply)
    trainable = tree_lib.path_filter("^model/layers")
    datasets = [[_batch(seed), _batch(seed + 10)] for seed in range(4)]

    def cosine(place_params, place_batch):
        vectors = []
        for batches in datasets:
            mean = gradients.dataset_mean_gradient(
                loss_fn, place_params(params), [place_batch(batch) for batch in batches], trainable=trainable
            )
            vectors.append(gradients.stride_subsample(mean.gradient, 5))
        return conflicts.cosine_from_gram(conflicts.gram_blockwise(vectors, block_size=257))

    reference = cosine(lambda tree: tree, lambda batch: batch)
    mesh = sharding_lib.make_mesh(4, 2)
    shardings = sharding_lib.param_shardings(params, mesh, QWEN2_RULES)
    placement = sharding_lib.Placement(mesh, shardings, _batch_specs)
    sharded = cosine(lambda tree: sharding_lib.place(tree, shardings), placement.place_batch)
    np.testing.assert_allclose(sharded, reference, rtol=1e-6, atol=1e-7)
    assert np.abs(reference - np.eye(4)).max() > 1e-3  # the datasets really differ


def test_checkpoint_moves_between_meshes(tmp_path):
    _, params = _model()
    source_mesh = sharding_lib.make_mesh(4, 2)
    saved = sharding_lib.place(params, sharding_lib.param_shardings(params, source_mesh, QWEN2_RULES))
    checkpoint_lib.save_params(tmp_path / "params", saved)

    target_mesh = sharding_lib.make_mesh(8, 1)
    target_shardings = sharding_lib.param_shardings(params, target_mesh)
    on_eight = checkpoint_lib.load_params(
        tmp_path / "params", checkpoint_lib.abstract_like(sharding_lib.place(params, target_shardings))
    )
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    on_one = checkpoint_lib.load_params(tmp_path / "params", checkpoint_lib.abstract_like(params, sharding=single))

    for (path, original), (_, eight), (_, one) in zip(
        tree_lib.leaves_with_paths(params), tree_lib.leaves_with_paths(on_eight), tree_lib.leaves_with_paths(on_one)
    ):
        assert np.array_equal(np.asarray(eight), np.asarray(original)), path
        assert np.array_equal(np.asarray(one), np.asarray(original)), path
        assert eight.sharding.mesh.shape == target_mesh.shape, path
        assert len(one.sharding.device_set) == 1, path


def test_fsdp_spec_splits_largest_divisible_dimension():
    mesh = sharding_lib.make_mesh(4, 2)
    assert sharding_lib.fsdp_spec((6, 16), mesh) == PartitionSpec(None, "data")
    assert sharding_lib.fsdp_spec((16, 6), mesh) == PartitionSpec("data", None)
    assert sharding_lib.fsdp_spec((6, 3), mesh) == PartitionSpec()
    assert sharding_lib.fsdp_spec((), mesh) == PartitionSpec()


def test_invalid_rules_name_the_leaf():
    _, params = _model()
    mesh = sharding_lib.make_mesh(2, 4)
    with pytest.raises(ValueError, match="model/norm/scale.*mesh axes"):
        sharding_lib.param_shardings(params, mesh, [(r"^model/norm/scale$", ("tensor",))])
    with pytest.raises(ValueError, match="model/norm/scale.*has 2 entries"):
        sharding_lib.param_shardings(params, mesh, [(r"^model/norm/scale$", ("data", None))])
    with pytest.raises(ValueError, match="odd/bias.*does not divide"):
        sharding_lib.param_shardings({"odd": {"bias": np.zeros(6)}}, sharding_lib.make_mesh(4, 2), [("bias", ("data",))])


def test_make_mesh_rejects_wrong_device_count():
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding_lib.make_mesh(3, 2)


def test_owned_stride_entries_partition_the_strided_vector():
    _, params = _model()
    mesh = sharding_lib.make_mesh(4, 2)
    sharded = sharding_lib.place(params, sharding_lib.param_shardings(params, mesh, QWEN2_RULES))
    full = gradients.stride_subsample(params, 5)

    # Two "hosts": the first and the last four devices of the mesh.
    devices = list(mesh.devices.flat)
    parts = [gradients.owned_stride_entries(sharded, 5, devices[:4]), gradients.owned_stride_entries(sharded, 5, devices[4:])]
    positions = np.concatenate([part[0] for part in parts])
    assert sorted(positions.tolist()) == list(range(full.size))
    for part_positions, part_values in parts:
        assert np.array_equal(part_values, full[part_positions])
        assert part_positions.size < full.size  # each host holds only part of the vector

    # Per-host Grams of aligned partial vectors add up to the full Gram.
    other = jax.tree.map(lambda leaf: leaf * 2.0 + 1.0, sharded)
    other_full = gradients.stride_subsample(other, 5)
    partial = []
    for group in (devices[:4], devices[4:]):
        first, second = (gradients.owned_stride_entries(tree, 5, group)[1].astype(np.float64) for tree in (sharded, other))
        partial.append(float(first @ second))
    assert sum(partial) == pytest.approx(float(full.astype(np.float64) @ other_full), rel=1e-9)
