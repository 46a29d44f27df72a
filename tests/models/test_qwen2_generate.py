"""Greedy generation with the explicit KV cache against transformers' generate and a no-cache loop."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2 import Qwen2ForCausalLM, greedy_generate
from merit_jax.models.qwen2 import generate as generate_lib

from .hf_reference import forward, padding_mask, random_ids

PAD = 0
MAX_NEW = 8


def _prompts(vocab_size):
    # Prompt tokens avoid PAD so that the expected outputs cannot contain it by chance.
    ids = random_ids(vocab_size - 1, (3, 7), seed=13) + 1
    mask = padding_mask([7, 4, 2], 7, side="left")
    return np.where(mask == 1, ids, PAD).astype(np.int32), mask


def _hf_generate(hf_model, ids, mask, eos_token_id):
    with torch.no_grad():
        output = hf_model.generate(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            eos_token_id=eos_token_id,
            pad_token_id=PAD,
        )
    new_tokens = output[:, ids.shape[1] :].numpy()
    # generate() stops once every row has finished, so its output may be shorter.
    padded = np.full((ids.shape[0], MAX_NEW), PAD, np.int32)
    padded[:, : new_tokens.shape[1]] = new_tokens
    return padded


def _recompute_generate(model, ids, mask, eos_token_id):
    """Greedy decoding that reruns the whole sequence each step, with no cache.

    The sequence sits in a fixed buffer whose unused tail is masked out, so one compiled forward
    serves every step.
    """
    batch, prompt_length = ids.shape
    buffer = np.concatenate([ids, np.full((batch, MAX_NEW), PAD, np.int32)], axis=1)
    buffer_mask = np.concatenate([mask, np.zeros((batch, MAX_NEW), np.int32)], axis=1)
    finished = np.zeros(batch, bool)
    tokens = np.full((batch, MAX_NEW), PAD, np.int32)
    for step in range(MAX_NEW):
        logits = np.asarray(forward(model, jnp.asarray(buffer), jnp.asarray(buffer_mask)))
        token = logits[:, prompt_length + step - 1].argmax(-1).astype(np.int32)
        token = np.where(finished, PAD, token)
        tokens[:, step] = token
        finished |= token == eos_token_id
        buffer[:, prompt_length + step] = token
        buffer_mask[:, prompt_length + step] = 1
    return tokens


@pytest.fixture(scope="module")
def eos_case(tiny_checkpoint):
    """Pick as eos a token that some row first emits at step >= 1, so that row stops mid-run.

    Returns (eos, row, step, prompt ids, prompt mask).
    """
    hf_model, _, _, config = tiny_checkpoint
    ids, mask = _prompts(config.vocab_size)
    free_run = _hf_generate(hf_model, ids, mask, eos_token_id=config.vocab_size + 1)

    candidates = [
        (step, row)
        for row in range(free_run.shape[0])
        for step in range(1, MAX_NEW)
        if free_run[row, step] not in free_run[row, :step]
    ]
    assert candidates, f"every row repeats one token, so no eos can stop a row mid-run: {free_run}"
    step, row = min(candidates)
    return int(free_run[row, step]), row, step, ids, mask


def test_greedy_matches_hf_generate(tiny_checkpoint, eos_case):
    hf_model, _, model, _ = tiny_checkpoint
    eos, row, step, ids, mask = eos_case
    fm, params = FunctionalModule.from_module(model)

    expected = _hf_generate(hf_model, ids, mask, eos_token_id=eos)
    ours = np.asarray(
        greedy_generate(fm, params, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=PAD)
    )

    # The chosen row must stop at the chosen step, or the eos handling would go untested.
    assert expected[row, step] == eos
    assert np.all(expected[row, step + 1 :] == PAD)
    np.testing.assert_array_equal(ours, expected)


def test_greedy_matches_recompute_loop(tiny_checkpoint, eos_case):
    _, _, model, _ = tiny_checkpoint
    eos, _, _, ids, mask = eos_case
    fm, params = FunctionalModule.from_module(model)

    expected = _recompute_generate(model, ids, mask, eos_token_id=eos)
    # A list of eos ids, as Qwen2.5 instruct generation configs have, with one never emitted.
    eos_ids = [eos, model.config.vocab_size + 1]
    ours = np.asarray(
        greedy_generate(
            fm, params, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD
        )
    )

    np.testing.assert_array_equal(ours, expected)


def test_greedy_without_eos_fills_every_step(tiny_checkpoint):
    hf_model, _, model, config = tiny_checkpoint
    ids, mask = _prompts(config.vocab_size)
    fm, params = FunctionalModule.from_module(model)
    never = config.vocab_size + 1

    ours = np.asarray(
        greedy_generate(
            fm, params, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=never, pad_token_id=PAD
        )
    )

    np.testing.assert_array_equal(ours, _hf_generate(hf_model, ids, mask, eos_token_id=never))
    assert ours.shape == (3, MAX_NEW)
    assert ours.dtype == np.int32


def test_greedy_right_padding_matches_left_padding(tiny_checkpoint, eos_case):
    _, _, model, _ = tiny_checkpoint
    eos, _, _, ids, mask = eos_case
    fm, params = FunctionalModule.from_module(model)
    # Move each row's padding from the left to the right.
    right_ids = np.stack([np.concatenate([row[m == 1], row[m == 0]]) for row, m in zip(ids, mask)])
    right_mask = np.sort(mask, axis=1)[:, ::-1].copy()

    left = greedy_generate(fm, params, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=PAD)
    right = greedy_generate(
        fm, params, right_ids, right_mask, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=PAD
    )

    assert right_mask[2, -1] == 0
    np.testing.assert_array_equal(np.asarray(right), np.asarray(left))


def test_greedy_compiles_once_per_shape(tiny_checkpoint):
    _, _, model, config = tiny_checkpoint
    fm, params = FunctionalModule.from_module(model)
    # A second model of the same structure (other weights) reuses the compiled program.
    _, other_params = FunctionalModule.from_module(Qwen2ForCausalLM(config, rngs=nnx.Rngs(1)))
    ids, mask = _prompts(config.vocab_size)
    settings = dict(max_new_tokens=3, eos_token_id=1, pad_token_id=PAD)

    greedy_generate(fm, params, ids, mask, **settings)
    greedy_generate(fm, other_params, ids, mask, **settings)
    greedy_generate(fm, params, ids[:, 1:], mask[:, 1:], **settings)

    compiled = generate_lib._compiled_generate(
        fm.graphdef, generate_lib._abstract_template(fm), 3, (1,), PAD
    )
    assert compiled._cache_size() == 2


def test_greedy_rejects_missing_pad_id(tiny_checkpoint):
    _, _, model, _ = tiny_checkpoint
    fm, params = FunctionalModule.from_module(model)
    ids = np.ones((2, 5), np.int32)

    with pytest.raises(ValueError, match="pad_token_id=None"):
        greedy_generate(fm, params, ids, ids, max_new_tokens=2, eos_token_id=1, pad_token_id=None)


def test_greedy_rejects_mismatched_mask(tiny_checkpoint):
    _, _, model, _ = tiny_checkpoint
    fm, params = FunctionalModule.from_module(model)

    with pytest.raises(ValueError, match="prompt_mask"):
        greedy_generate(
            fm, params, np.ones((2, 5), np.int32), np.ones((2, 4), np.int32),
            max_new_tokens=2, eos_token_id=1, pad_token_id=0,
        )
