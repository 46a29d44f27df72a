"""Qwen2.5-VL (vision encoder + Qwen2 decoder with multimodal RoPE) in Flax NNX, with Hugging Face import and export."""

from merit_jax.models.qwen2.params import CheckpointMismatchError
from merit_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, VisionConfig, published_config
from merit_jax.models.qwen2_5_vl.generate import greedy_generate
from merit_jax.models.qwen2_5_vl.inputs import collate_vl_batch, collate_vl_prompts, rope_index, vision_layout
from merit_jax.models.qwen2_5_vl.modeling import Qwen2_5_VLForConditionalGeneration, init_cache
from merit_jax.models.qwen2_5_vl.params import (
    export_hf_checkpoint,
    hf_state_dict_to_params,
    load_hf_checkpoint,
    params_to_hf_state_dict,
)
from merit_jax.models.qwen2_5_vl.vision import VisionTransformer

__all__ = [
    "CheckpointMismatchError",
    "Qwen2_5_VLConfig",
    "Qwen2_5_VLForConditionalGeneration",
    "VisionConfig",
    "VisionTransformer",
    "collate_vl_batch",
    "collate_vl_prompts",
    "export_hf_checkpoint",
    "greedy_generate",
    "hf_state_dict_to_params",
    "init_cache",
    "load_hf_checkpoint",
    "params_to_hf_state_dict",
    "published_config",
    "rope_index",
    "vision_layout",
]
