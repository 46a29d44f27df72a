"""Host-side Qwen2.5-VL inputs against transformers: M-RoPE positions, window layout and batch collation."""

import numpy as np
import pytest
import torch
from transformers import vision_utils

from merit_jax.models.qwen2_5_vl import Qwen2_5_VLConfig, collate_vl_batch, rope_index, vision_layout

from .vl_reference import (
    IMAGE_ID,
    TINY_VL_CASES,
    VIDEO_ID,
    build_hf_model,
    hf_config,
    pad_rows,
    process_images,
    prompt,
)

WINDOWS = TINY_VL_CASES[0]
# Three sizes: 4 windows, 6 windows (partial ones at the edges) and 1 window under WINDOWS.
GRIDS = np.array([[1, 8, 8], [1, 6, 10], [1, 4, 4]])


@pytest.fixture(scope="module")
def windows_config():
    return Qwen2_5_VLConfig.from_hf_dict(hf_config(WINDOWS).to_dict())


def _segments_to_cu_seqlens(segment_ids: np.ndarray) -> list[int]:
    """Boundaries of the runs of equal ids, for the unpadded prefix (id >= 0)."""
    real = segment_ids[segment_ids >= 0]
    starts = [0] + [i for i in range(1, len(real)) if real[i] != real[i - 1]]
    return starts + [len(real)]


def _hf_rope_index(hf_model, ids, mask, grids):
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    positions, _ = hf_model.model.get_rope_index(
        ids_t,
        mm_token_type_ids=(ids_t == IMAGE_ID).int(),
        image_grid_thw=torch.as_tensor(grids, dtype=torch.long),
        attention_mask=torch.as_tensor(mask, dtype=torch.long),
    )
    return positions.numpy()


@pytest.mark.parametrize("side", ["left", "right"])
def test_rope_index_matches_hf(windows_config, side):
    hf_model = build_hf_model(WINDOWS)
    # Row 0: two images of different sizes; row 1: one image, ending in an image; row 2: text only.
    rows = [
        prompt(GRIDS[:2], [3, 2, 4], seed=1),
        prompt(GRIDS[2:], [2, 0], seed=2),
        prompt(GRIDS[:0], [5], seed=3),
    ]
    ids, mask = pad_rows(rows, side=side)

    ours = rope_index(ids, mask, [GRIDS[:2], GRIDS[2:], GRIDS[:0]], windows_config)
    expected = _hf_rope_index(hf_model, ids, mask, GRIDS)

    assert ours.dtype == np.int32
    assert ours.shape == (3, 3, ids.shape[1])
    np.testing.assert_array_equal(ours, expected)
    # Negative control: image tokens get distinct height and width positions.
    image = ids[0] == IMAGE_ID
    assert not np.array_equal(ours[1, 0, image], ours[2, 0, image])


def test_rope_index_rejects_token_grid_mismatch(windows_config):
    ids = prompt(GRIDS[:1], [2, 2], seed=0)[None]
    too_short = np.delete(ids, 5, axis=1)

    with pytest.raises(ValueError, match="needs 16 consecutive image tokens"):
        rope_index(too_short, None, [GRIDS[:1]], windows_config)
    with pytest.raises(ValueError, match="1 image\\(s\\) but 2 grid"):
        rope_index(ids, None, [GRIDS[:2]], windows_config)
    with pytest.raises(ValueError, match="more image tokens"):
        rope_index(ids, None, [GRIDS[:0]], windows_config)
    with pytest.raises(ValueError, match="video"):
        rope_index(np.array([[1, VIDEO_ID, 2]]), None, [GRIDS[:0]], windows_config)


def test_vision_layout_matches_hf_windows(windows_config):
    vision = windows_config.vision_config
    grid_t = torch.as_tensor(GRIDS)
    window_index, cu_window_seqlens = vision_utils.get_vision_window_index(
        grid_t, vision.spatial_merge_size, vision.window_size, vision.patch_size
    )
    cu_seqlens = vision_utils.get_vision_cu_seqlens(grid_t)
    rotary = vision_utils.get_vision_position_ids(grid_t, vision.spatial_merge_size).numpy()
    total = int(GRIDS.prod(axis=1).sum())

    layout = vision_layout(GRIDS, windows_config, num_patches_padded=total + 20)

    unit = vision.merge_unit
    expected_order = (window_index.numpy()[:, None] * unit + np.arange(unit)).reshape(-1)
    np.testing.assert_array_equal(layout["window_order"][:total], expected_order)
    np.testing.assert_array_equal(layout["window_order"][total:], np.arange(total, total + 20))
    assert _segments_to_cu_seqlens(layout["window_segment_ids"]) == cu_window_seqlens.tolist()
    assert _segments_to_cu_seqlens(layout["image_segment_ids"]) == cu_seqlens.tolist()
    np.testing.assert_array_equal(layout["rotary_ids"][:total], rotary[expected_order])
    # 4 + 6 + 1 windows, so the windowed layers really are restricted.
    assert len(set(layout["window_segment_ids"][:total].tolist())) == 11
    assert np.all(layout["window_segment_ids"][total:] == -1)
    assert np.all(layout["image_segment_ids"][total:] == -1)

    # feature_order undoes the window order of the merged patches; padding comes last.
    np.testing.assert_array_equal(layout["feature_order"][: total // unit], np.argsort(window_index.numpy()))
    assert layout["feature_mask"].tolist() == [True] * (total // unit) + [False] * 5


def test_vision_layout_rejects_bad_sizes(windows_config):
    with pytest.raises(ValueError, match="more than num_patches_padded=100"):
        vision_layout(GRIDS, windows_config, num_patches_padded=100)
    with pytest.raises(ValueError, match="multiple of spatial_merge_size"):
        vision_layout(GRIDS, windows_config, num_patches_padded=171)
    with pytest.raises(ValueError, match="not divisible by spatial_merge_size=2"):
        vision_layout([[1, 6, 5]], windows_config, num_patches_padded=40)

    empty = vision_layout(np.zeros((0, 3)), windows_config, num_patches_padded=8)
    assert not empty["feature_mask"].any()


def _examples(config):
    pixels, grids = process_images([(112, 112), (84, 140), (56, 56)], seed=4)
    first = prompt(grids[:2], [3, 2, 4], seed=5)
    second = prompt(grids[2:], [2, 3], seed=6)
    split = int(grids[:2].prod(axis=1).sum())
    return [
        dict(input_ids=first, loss_mask=np.arange(len(first)) >= 30,
             pixel_values=pixels[:split], image_grid_thw=grids[:2]),
        dict(input_ids=second, loss_mask=np.ones(len(second), bool),
             pixel_values=pixels[split:], image_grid_thw=grids[2:]),
    ]


def test_collate_vl_batch_layout(windows_config):
    examples = _examples(windows_config)
    batch = collate_vl_batch(
        examples, batch_size=3, seq_len=48, max_patches=160, config=windows_config, pad_id=0
    )

    first = examples[0]["input_ids"]
    assert batch["input_ids"].shape == (3, 48)
    assert batch["positions"].shape == (3, 3, 48)
    assert batch["pixel_values"].shape == (160, 1176)
    assert batch["loss_mask"].dtype == np.float32
    np.testing.assert_array_equal(batch["input_ids"][0, : len(first)], first)
    np.testing.assert_array_equal(batch["targets"][0, : len(first) - 1], first[1:])
    np.testing.assert_array_equal(batch["loss_mask"][0, : len(first) - 1], examples[0]["loss_mask"][1:])
    assert batch["loss_mask"][0, len(first) - 1 :].sum() == 0
    assert batch["attention_mask"][2].sum() == 0

    grids = [examples[0]["image_grid_thw"], examples[1]["image_grid_thw"], np.zeros((0, 3))]
    np.testing.assert_array_equal(
        batch["positions"], rope_index(batch["input_ids"], batch["attention_mask"], grids, windows_config)
    )
    pixels = np.concatenate([e["pixel_values"] for e in examples])
    np.testing.assert_array_equal(batch["pixel_values"][: len(pixels)], pixels)
    assert np.all(batch["pixel_values"][len(pixels) :] == 0)
    assert int(batch["vision"]["feature_mask"].sum()) == int((batch["input_ids"] == IMAGE_ID).sum())


def test_collate_vl_batch_rejects_oversize(windows_config):
    examples = _examples(windows_config)

    with pytest.raises(ValueError, match="example 0 has 44 tokens, more than seq_len=32"):
        collate_vl_batch(examples, batch_size=2, seq_len=32, max_patches=160, config=windows_config, pad_id=0)
    with pytest.raises(ValueError, match=r"140 patches \(per example \[124, 16\]\), more than max_patches=128"):
        collate_vl_batch(examples, batch_size=2, seq_len=48, max_patches=128, config=windows_config, pad_id=0)
    with pytest.raises(ValueError, match="got 2 examples for a batch of batch_size=1"):
        collate_vl_batch(examples, batch_size=1, seq_len=48, max_patches=160, config=windows_config, pad_id=0)

    broken = dict(examples[1], pixel_values=examples[1]["pixel_values"][:-4])
    with pytest.raises(ValueError, match="example 1 has 12 patch rows"):
        collate_vl_batch([examples[0], broken], batch_size=2, seq_len=48, max_patches=160,
                         config=windows_config, pad_id=0)
