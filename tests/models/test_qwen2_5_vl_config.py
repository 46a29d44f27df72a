"""Qwen2.5-VL config parsing, the published 3B and 7B architectures, and their parameter counts."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from merit_jax.models.qwen2_5_vl import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    VisionConfig,
    published_config,
)

from .vl_reference import TINY_VL_CASES, build_hf_model, hf_config

# Parameter counts that the model cards of Qwen/Qwen2.5-VL-3B-Instruct and
# Qwen/Qwen2.5-VL-7B-Instruct round to 3.75B and 8.29B.
PUBLISHED_COUNTS = {"3b": 3_754_622_976, "7b": 8_292_166_656}

# The flat layout of the released Qwen2.5-VL-3B-Instruct config.json (decoder fields at the top,
# `rope_scaling` of type "mrope", `in_chans`), as transformers before 4.52 wrote it.
RELEASED_3B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}


def _abstract_count(config) -> int:
    abstract = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(abstract)))


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_published_config_counts(size):
    config = published_config(size)
    expected = PUBLISHED_COUNTS[size]

    assert config.num_parameters() == expected
    assert _abstract_count(config) == expected

    # An independent count: transformers' own model, built from our exported config on the meta
    # device (no memory), which also checks that to_hf_dict describes the same architecture.
    with torch.device("meta"):
        hf_model = transformers.Qwen2_5_VLForConditionalGeneration(
            transformers.Qwen2_5_VLConfig(**config.to_hf_dict())
        )
    assert hf_model.num_parameters() == expected


def test_published_configs_differ_as_released():
    small, large = published_config("3b"), published_config("7b")

    assert small.tie_word_embeddings and not large.tie_word_embeddings
    assert small.vision_config.out_hidden_size == 2048
    assert large.vision_config.out_hidden_size == 3584
    assert dataclasses.replace(small.vision_config, out_hidden_size=3584) == large.vision_config
    with pytest.raises(ValueError, match="'13b'"):
        published_config("13b")


def test_released_flat_config_parses_to_published():
    assert Qwen2_5_VLConfig.from_hf_dict(RELEASED_3B_CONFIG) == published_config("3b")

    # transformers reads the same file into its nested layout, which we parse the same way.
    nested = transformers.Qwen2_5_VLConfig(**RELEASED_3B_CONFIG).to_dict()
    assert "text_config" in nested
    assert Qwen2_5_VLConfig.from_hf_dict(nested) == published_config("3b")


@pytest.mark.parametrize("case", TINY_VL_CASES, ids=lambda case: case.name)
def test_config_round_trips_through_transformers(case):
    config = Qwen2_5_VLConfig.from_hf_dict(hf_config(case).to_dict())
    again = Qwen2_5_VLConfig.from_hf_dict(transformers.Qwen2_5_VLConfig(**config.to_hf_dict()).to_dict())

    assert again == config
    assert config.mrope_section == tuple(case.text_kwargs["rope_parameters"]["mrope_section"])
    assert config.vision_config.fullatt_block_indexes == tuple(case.vision_kwargs["fullatt_block_indexes"])
    assert config.tie_word_embeddings == case.tie_word_embeddings


@pytest.mark.parametrize("case", TINY_VL_CASES, ids=lambda case: case.name)
def test_config_num_parameters_matches_hf(case):
    hf_model = build_hf_model(case)
    config = Qwen2_5_VLConfig.from_hf_dict(hf_model.config.to_dict())

    assert config.num_parameters() == hf_model.num_parameters()
    assert config.vision_config.num_parameters() == hf_model.model.visual.num_parameters()


def test_config_rejects_unsupported_settings():
    with pytest.raises(ValueError, match="mrope_section"):
        Qwen2_5_VLConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, mrope_section=(4, 2, 1),
                         vision_config=VisionConfig(out_hidden_size=64))
    with pytest.raises(ValueError, match="out_hidden_size=32"):
        Qwen2_5_VLConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, mrope_section=(4, 2, 2),
                         vision_config=VisionConfig(out_hidden_size=32))
    with pytest.raises(ValueError, match="yarn"):
        Qwen2_5_VLConfig.from_hf_dict(dict(RELEASED_3B_CONFIG, rope_scaling={"type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="use_sliding_window"):
        Qwen2_5_VLConfig.from_hf_dict(dict(RELEASED_3B_CONFIG, use_sliding_window=True))
    with pytest.raises(ValueError, match="fullatt_block_indexes"):
        VisionConfig(depth=2, fullatt_block_indexes=(2,))
    with pytest.raises(ValueError, match="window_size=14"):
        VisionConfig(window_size=14)


def test_config_from_dir_rejects_text_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ValueError, match="model_type='qwen2'"):
        Qwen2_5_VLConfig.from_pretrained_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen2_5_VLConfig.from_pretrained_dir(tmp_path / "absent")
