"""Tiny random transformers Qwen2.5-VL models, image inputs and prompts: the reference for the VL tests.

Norm scales and biases are perturbed away from their ones/zeros initialization so that a wrong
mapping of those tensors changes the outputs. Pixel inputs come from transformers'
Qwen2VLImageProcessorPil (the full processor needs torchvision).
"""

import dataclasses

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from PIL import Image

from merit_jax.models.qwen2_5_vl import load_hf_checkpoint

# Special tokens of the tiny vocabularies; text tokens are drawn below TEXT_VOCAB.
IMAGE_ID, VIDEO_ID, VISION_START_ID, VISION_END_ID = 120, 121, 122, 123
TEXT_VOCAB = 120
SPECIAL_IDS = dict(
    image_token_id=IMAGE_ID,
    video_token_id=VIDEO_ID,
    vision_start_token_id=VISION_START_ID,
    vision_end_token_id=VISION_END_ID,
)


@dataclasses.dataclass(frozen=True)
class TinyVLCase:
    name: str
    text_kwargs: dict
    vision_kwargs: dict
    tie_word_embeddings: bool


TINY_VL_CASES = (
    # Windows of 2x2 merged patches (56 px), so a 112x112 image spans 4 windows; block 1 of 3 has
    # full attention. Tied head, 2 query heads per key/value head.
    TinyVLCase(
        "windows_tied",
        text_kwargs=dict(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, initializer_range=0.1,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 2, 2]),
        ),
        vision_kwargs=dict(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56,
            fullatt_block_indexes=[1], initializer_range=0.1,
        ),
        tie_word_embeddings=True,
    ),
    # One window of 4x4 merged patches (112 px); full attention in the first block only. Untied
    # head, 3 query heads per key/value head.
    TinyVLCase(
        "untied_gqa3",
        text_kwargs=dict(
            vocab_size=128, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=3, num_key_value_heads=1, rms_norm_eps=1e-5, initializer_range=0.1,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3]),
        ),
        vision_kwargs=dict(
            depth=2, hidden_size=64, intermediate_size=64, num_heads=4, out_hidden_size=48,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
            fullatt_block_indexes=[0], initializer_range=0.1,
        ),
        tie_word_embeddings=False,
    ),
)


def hf_config(case: TinyVLCase) -> transformers.Qwen2_5_VLConfig:
    return transformers.Qwen2_5_VLConfig(
        text_config=dict(case.text_kwargs, bos_token_id=None, eos_token_id=None),
        vision_config=dict(case.vision_kwargs),
        tie_word_embeddings=case.tie_word_embeddings,
        **SPECIAL_IDS,
    )


def build_hf_model(case: TinyVLCase, seed: int = 0) -> transformers.Qwen2_5_VLForConditionalGeneration:
    """Build a random transformers Qwen2.5-VL model in eval mode with every tensor away from its init."""
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(hf_config(case)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.2 * torch.randn_like(param))
    return model


def image_processor(patch_size: int = 14) -> transformers.Qwen2VLImageProcessorPil:
    # min_pixels below any test image keeps the sizes unchanged (they are multiples of 28 pixels).
    return transformers.Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=28 * 28 * 256, patch_size=patch_size, temporal_patch_size=2, merge_size=2
    )


def process_images(sizes: list[tuple[int, int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (pixel_values float32 (patches, 1176), image_grid_thw int64 (n, 3)) for random RGB images.

    sizes: (height, width) in pixels of each image.
    """
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    out = image_processor()(images=images, return_tensors="np")
    return out["pixel_values"].astype(np.float32), out["image_grid_thw"].astype(np.int64)


def image_tokens(grid_thw: np.ndarray, merge: int = 2) -> list[int]:
    t, h, w = (int(x) for x in grid_thw)
    return [IMAGE_ID] * (t * h * w // merge**2)


def prompt(grids: np.ndarray, text_lengths: list[int], seed: int) -> np.ndarray:
    """Return int32 token ids: text, then per image vision_start + image tokens + vision_end + text.

    text_lengths has one more entry than there are images.
    """
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, TEXT_VOCAB, text_lengths[0])]
    for grid, length in zip(grids, text_lengths[1:]):
        parts.append([VISION_START_ID, *image_tokens(grid), VISION_END_ID])
        parts.append(rng.integers(0, TEXT_VOCAB, length))
    return np.concatenate([np.asarray(p, np.int64) for p in parts]).astype(np.int32)


def pad_rows(rows: list[np.ndarray], side: str, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack rows into (ids, mask) int32 (B, max length), padded on `side`."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        where = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, where] = row
        mask[i, where] = 1
    return ids, mask


def hf_logits(hf_model, ids, mask, pixel_values=None, grid_thw=None) -> np.ndarray:
    """Run transformers' forward; mm_token_type_ids (1 at image tokens) lets it build M-RoPE positions."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    kwargs = dict(input_ids=ids_t, attention_mask=torch.as_tensor(mask, dtype=torch.long))
    if pixel_values is not None:
        kwargs.update(
            pixel_values=torch.as_tensor(pixel_values),
            image_grid_thw=torch.as_tensor(grid_thw, dtype=torch.long),
            mm_token_type_ids=(ids_t == IMAGE_ID).int(),
        )
    with torch.no_grad():
        return hf_model(**kwargs).logits.float().numpy()


@nnx.jit
def forward(model, ids, mask, positions=None, pixel_values=None, vision=None):
    """Run our model under jit: eager NNX dispatches every op separately and is much slower."""
    return model(ids, mask, positions, pixel_values, vision)


def pad_patches(pixel_values: np.ndarray, num_patches: int) -> np.ndarray:
    """Zero-pad pixel_values (n, dim) to (num_patches, dim)."""
    padded = np.zeros((num_patches, pixel_values.shape[1]), np.float32)
    padded[: len(pixel_values)] = pixel_values
    return padded


@pytest.fixture(scope="session", params=TINY_VL_CASES, ids=lambda case: case.name)
def tiny_vl_checkpoint(request, tmp_path_factory):
    """(HF model, checkpoint directory, our model, our config) for each tiny case."""
    case = request.param
    hf_model = build_hf_model(case)
    directory = tmp_path_factory.mktemp(case.name)
    hf_model.save_pretrained(directory, safe_serialization=True)
    model, config = load_hf_checkpoint(directory)
    return hf_model, directory, model, config
