"""Qwen2 / Qwen2.5 causal language model in Flax NNX, with Hugging Face checkpoint import and export."""

from merit_jax.models.qwen2.config import Qwen2Config
from merit_jax.models.qwen2.generate import greedy_generate
from merit_jax.models.qwen2.modeling import Qwen2ForCausalLM, init_cache
from merit_jax.models.qwen2.params import (
    CheckpointMismatchError,
    export_hf_checkpoint,
    hf_state_dict_to_params,
    load_hf_checkpoint,
    params_to_hf_state_dict,
)

__all__ = [
    "CheckpointMismatchError",
    "Qwen2Config",
    "Qwen2ForCausalLM",
    "export_hf_checkpoint",
    "greedy_generate",
    "hf_state_dict_to_params",
    "init_cache",
    "load_hf_checkpoint",
    "params_to_hf_state_dict",
]
