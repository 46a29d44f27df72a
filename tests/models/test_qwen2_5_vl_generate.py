"""Greedy Qwen2.5-VL generation with images against transformers' generate(do_sample=False)."""

import numpy as np
import pytest
import torch

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2_5_vl import greedy_generate, rope_index, vision_layout

from .vl_reference import (
    IMAGE_ID,
    pad_patches,
    pad_rows,
    process_images,
    prompt,
    tiny_vl_checkpoint,  # noqa: F401 (pytest fixture)
)

PAD = 0
MAX_NEW = 8


def _prompts(config):
    """Return two left-padded prompts with one image each. The first ends right after its image."""
    pixels, grids = process_images([(112, 112), (56, 84)], seed=40)
    rows = [prompt(grids[:1], [3, 0], seed=40), prompt(grids[1:], [2, 1], seed=41)]
    ids, mask = pad_rows(rows, side="left", pad_id=PAD)
    positions = rope_index(ids, mask, [grids[:1], grids[1:]], config)
    return ids, mask, positions, pixels, grids


def _hf_generate(hf_model, ids, mask, pixels, grids, eos_token_id):
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    with torch.no_grad():
        output = hf_model.generate(
            input_ids=ids_t,
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            pixel_values=torch.as_tensor(pixels),
            image_grid_thw=torch.as_tensor(grids, dtype=torch.long),
            mm_token_type_ids=(ids_t == IMAGE_ID).int(),
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


def test_greedy_with_images_matches_hf_generate(tiny_vl_checkpoint):
    hf_model, _, model, config = tiny_vl_checkpoint
    ids, mask, positions, pixels, grids = _prompts(config)
    fm, params = FunctionalModule.from_module(model)
    padded_pixels, layout = pad_patches(pixels, 96), vision_layout(grids, config, 96)

    never = config.vocab_size + 1
    free_run = _hf_generate(hf_model, ids, mask, pixels, grids, eos_token_id=never)
    ours = np.asarray(greedy_generate(
        fm, params, ids, mask, positions, padded_pixels, layout,
        max_new_tokens=MAX_NEW, eos_token_id=never, pad_token_id=PAD,
    ))
    np.testing.assert_array_equal(ours, free_run)

    # Stop a row mid-run with an eos it emits first at step >= 1, so the eos handling is tested.
    candidates = [
        (step, row)
        for row in range(free_run.shape[0])
        for step in range(1, MAX_NEW)
        if free_run[row, step] not in free_run[row, :step]
    ]
    assert candidates, f"every row repeats one token, so no eos can stop a row mid-run: {free_run}"
    step, row = min(candidates)
    eos = int(free_run[row, step])
    expected = _hf_generate(hf_model, ids, mask, pixels, grids, eos_token_id=eos)
    ours = np.asarray(greedy_generate(
        fm, params, ids, mask, positions, padded_pixels, layout,
        max_new_tokens=MAX_NEW, eos_token_id=[eos, never], pad_token_id=PAD,
    ))
    assert expected[row, step] == eos
    assert np.all(expected[row, step + 1 :] == PAD)
    np.testing.assert_array_equal(ours, expected)


def test_greedy_rejects_bad_inputs(tiny_vl_checkpoint):
    _, _, model, config = tiny_vl_checkpoint
    ids, mask, positions, pixels, grids = _prompts(config)
    fm, params = FunctionalModule.from_module(model)
    settings = dict(max_new_tokens=2, eos_token_id=1, pad_token_id=PAD)

    with pytest.raises(ValueError, match="positions has shape"):
        greedy_generate(fm, params, ids, mask, positions[0], **settings)
    with pytest.raises(ValueError, match="together"):
        greedy_generate(fm, params, ids, mask, positions, pad_patches(pixels, 96), **settings)
    with pytest.raises(ValueError, match="pad_token_id=None"):
        greedy_generate(fm, params, ids, mask, positions, max_new_tokens=2, eos_token_id=1, pad_token_id=None)
