"""Tests for the token-weighted mean gradient over the trainable subset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merit_jax.core import gradients
from merit_jax.core import tree as tree_lib

VOCAB, WIDTH, LENGTH, EXAMPLES = 11, 6, 5, 8
TRAINABLE = tree_lib.path_filter(include=r"^decoder/")


def _init_params(seed=0, dtype=jnp.float32):
    keys = iter(jax.random.split(jax.random.key(seed), 8))

    def normal(shape):
        return (0.5 * jax.random.normal(next(keys), shape)).astype(dtype)

    layers = {i: {"kernel": normal((WIDTH, WIDTH)), "bias": normal((WIDTH,))} for i in range(2)}
    return {
        "embed": {"table": normal((VOCAB, WIDTH))},
        "decoder": {"layers": layers, "head": {"kernel": normal((WIDTH, VOCAB))}},
    }


def loss_fn(params, batch):
    hidden = params["embed"]["table"][batch["tokens"]].astype(jnp.float32)
    for index in sorted(params["decoder"]["layers"]):
        layer = params["decoder"]["layers"][index]
        kernel, bias = layer["kernel"].astype(jnp.float32), layer["bias"].astype(jnp.float32)
        hidden = jnp.tanh(hidden @ kernel + bias)
    logits = hidden @ params["decoder"]["head"]["kernel"].astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_loss = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    return jnp.sum(token_loss * batch["mask"]), jnp.sum(batch["mask"])


def _examples(seed=1):
    rng = np.random.default_rng(seed)
    mask = (rng.random((EXAMPLES, LENGTH)) < 0.6).astype(np.float32)
    # Unequal supervised counts per example, one example with none, so the token weighting matters.
    mask[0] = 1.0
    mask[3] = 0.0
    return {
        "tokens": rng.integers(0, VOCAB, (EXAMPLES, LENGTH)),
        "targets": rng.integers(0, VOCAB, (EXAMPLES, LENGTH)),
        "mask": mask,
    }


def _chunks(examples, sizes):
    assert sum(sizes) == EXAMPLES
    bounds = np.cumsum([0] + list(sizes))
    return [{k: v[a:b] for k, v in examples.items()} for a, b in zip(bounds[:-1], bounds[1:])]


@jax.jit
def _one_shot_gradient(params, examples):
    def mean_loss(params):
        loss_sum, token_count = loss_fn(params, examples)
        return loss_sum / token_count

    return jax.grad(mean_loss)(params)


def _mean_gradient(params, batches):
    return gradients.dataset_mean_gradient(loss_fn, params, batches, trainable=TRAINABLE)


def _assert_trees_close(actual, expected, rtol=1e-5, atol=1e-7):
    actual_leaves = tree_lib.leaves_with_paths(actual)
    expected_leaves = tree_lib.leaves_with_paths(expected)
    assert [p for p, _ in actual_leaves] == [p for p, _ in expected_leaves]
    for (path, a), (_, b) in zip(actual_leaves, expected_leaves):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=path)


def test_mean_gradient_equals_one_shot_gradient():
    params, examples = _init_params(), _examples()
    expected, _ = tree_lib.partition(_one_shot_gradient(params, examples), TRAINABLE)

    result = _mean_gradient(params, _chunks(examples, [3, 5]))

    _assert_trees_close(result.gradient, expected)


@pytest.mark.parametrize("sizes", [[8], [1] * 8, [2, 6], [5, 1, 2]])
def test_mean_gradient_invariant_to_rechunking(sizes):
    params, examples = _init_params(), _examples()
    reference = gradients.dataset_mean_gradient(loss_fn, params, [examples], trainable=TRAINABLE)

    result = _mean_gradient(params, _chunks(examples, sizes))

    _assert_trees_close(result.gradient, reference.gradient)
    assert result.token_count == reference.token_count
    assert result.loss_sum == pytest.approx(reference.loss_sum, rel=1e-6)
    assert result.num_batches == len(sizes)


def test_mean_of_batch_means_differs_from_token_mean():
    # Negative control: averaging per-batch mean gradients is not token-weighted, so the
    # re-chunking test above would catch an implementation that did it.
    params, examples = _init_params(), _examples()
    batches = _chunks(examples, [1, 7])
    token_mean = gradients.dataset_mean_gradient(loss_fn, params, batches, trainable=TRAINABLE)

    per_batch = [_one_shot_gradient(params, batch) for batch in batches]
    mean_of_means = jax.tree.map(lambda *g: sum(g) / len(g), *per_batch)
    mean_of_means, _ = tree_lib.partition(mean_of_means, TRAINABLE)

    head_ours = np.asarray(token_mean.gradient["decoder"]["head"]["kernel"])
    head_naive = np.asarray(mean_of_means["decoder"]["head"]["kernel"])
    assert not np.allclose(head_ours, head_naive, rtol=1e-3, atol=1e-5)


def test_mean_gradient_contains_only_trainable_leaves():
    params, examples = _init_params(), _examples()
    result = gradients.dataset_mean_gradient(loss_fn, params, [examples], trainable=TRAINABLE)

    paths = [path for path, _ in tree_lib.leaves_with_paths(result.gradient)]
    assert paths == [
        "decoder/head/kernel",
        "decoder/layers/0/bias",
        "decoder/layers/0/kernel",
        "decoder/layers/1/bias",
        "decoder/layers/1/kernel",
    ]
    assert "embed" not in result.gradient


def test_mean_gradient_uses_current_frozen_values():
    # The compiled step is cached per loss_fn; frozen leaves baked in as constants would make the
    # second call reuse the first call's embedding table.
    examples = _examples()
    first = _init_params(seed=0)
    second = tree_lib.combine(
        tree_lib.partition(first, TRAINABLE)[0], {"embed": _init_params(seed=5)["embed"]}
    )

    for params in (first, second):
        expected, _ = tree_lib.partition(_one_shot_gradient(params, examples), TRAINABLE)
        result = gradients.dataset_mean_gradient(loss_fn, params, [examples], trainable=TRAINABLE)
        _assert_trees_close(result.gradient, expected)


def test_mean_gradient_totals_and_mean_loss():
    params, examples = _init_params(), _examples()
    loss_sum, token_count = loss_fn(params, examples)

    result = _mean_gradient(params, _chunks(examples, [4, 4]))

    assert result.token_count == float(token_count)
    assert result.loss_sum == pytest.approx(float(loss_sum), rel=1e-6)
    assert result.mean_loss == pytest.approx(float(loss_sum / token_count), rel=1e-6)


def test_mean_gradient_is_float32_for_bfloat16_params():
    params = _init_params(dtype=jnp.bfloat16)
    result = gradients.dataset_mean_gradient(loss_fn, params, [_examples()], trainable=TRAINABLE)

    for path, leaf in tree_lib.leaves_with_paths(result.gradient):
        assert leaf.dtype == jnp.float32, path


def test_mean_gradient_zero_tokens_raises():
    examples = _examples()
    examples["mask"] = np.zeros_like(examples["mask"])

    with pytest.raises(ValueError, match="total token count is 0"):
        gradients.dataset_mean_gradient(loss_fn, _init_params(), [examples], trainable=TRAINABLE)


def test_mean_gradient_no_batches_raises():
    with pytest.raises(ValueError, match="no batches"):
        gradients.dataset_mean_gradient(loss_fn, _init_params(), [], trainable=TRAINABLE)
