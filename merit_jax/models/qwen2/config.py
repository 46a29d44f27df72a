"""Configuration of the Qwen2 / Qwen2.5 causal decoder, with the field names of transformers.Qwen2Config.

`dtype` (compute) and `param_dtype` (storage) are ours. A Hugging Face `config.json` also has a
`dtype` (or `torch_dtype`) key, the storage dtype of its tensors, which `from_hf_dict` ignores.
"""

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

# Keys of a Hugging Face config that this model implements. Import ignores every other key, such
# as the generic PreTrainedConfig fields `transformers_version` or `use_cache`.
_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "max_position_embeddings",
    "initializer_range",
    "tie_word_embeddings",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)

# transformers.Qwen2Config's default when a config has neither `rope_theta` nor `rope_parameters`.
_HF_DEFAULT_ROPE_THETA = 10000.0


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Hyperparameters of a Qwen2 decoder.

    `num_key_value_heads` defaults to `num_attention_heads` (no grouping) and `head_dim` to
    hidden_size // num_attention_heads. `remat` recomputes each decoder layer's activations in the
    backward pass instead of storing them.
    """

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = _HF_DEFAULT_ROPE_THETA
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    attention_dropout: float = 0.0
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        # Normalize so that equal configs compare and hash equal whatever form the caller used
        # (jnp.bfloat16, "bfloat16", a list of eos ids from JSON).
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype).name)
        if isinstance(self.eos_token_id, (list, tuple)):
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)

        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; grouped-query attention needs "
                "each key/value head to serve the same number of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary position embeddings")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; Qwen2 uses 'silu'")
        if self.attention_dropout:
            raise ValueError(
                f"attention_dropout={self.attention_dropout} is not implemented; set it to 0.0"
            )

    @property
    def num_key_value_groups(self) -> int:
        """Number of query heads that share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "Qwen2Config":
        """Build a config from a Hugging Face config dict. `overrides` set fields such as dtype."""
        model_type = hf.get("model_type", "qwen2")
        if model_type != "qwen2":
            raise ValueError(f"model_type={model_type!r} is not a Qwen2 model; expected 'qwen2'")
        if hf.get("use_sliding_window", False):
            raise ValueError(
                "use_sliding_window=true is not supported: this implementation has only full "
                "causal attention. Set use_sliding_window to false in config.json if the "
                "sequences you run are shorter than sliding_window"
            )

        # A null value (num_key_value_heads, head_dim, token ids) means "use the default".
        fields = {key: hf[key] for key in _HF_FIELDS if hf.get(key) is not None}
        fields["rope_theta"] = _rope_theta_from_hf(hf)
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """Return a dict that `transformers.Qwen2Config(**d)` accepts and that `config.json` stores."""
        hf = {key: getattr(self, key) for key in _HF_FIELDS}
        if isinstance(self.eos_token_id, tuple):
            hf["eos_token_id"] = list(self.eos_token_id)

        # transformers 5.25 writes `rope_parameters`. Older configs (the Qwen2.5 releases among
        # them) have a top-level `rope_theta`, which 5.25 also accepts.
        hf["rope_theta"] = self.rope_theta
        hf["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        hf["use_sliding_window"] = False
        hf["architectures"] = ["Qwen2ForCausalLM"]
        hf["model_type"] = "qwen2"
        return hf

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike, **overrides) -> "Qwen2Config":
        """Read `path/config.json` of a Hugging Face checkpoint directory."""
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(
                f"{config_path} not found; pass the directory of a Hugging Face checkpoint "
                "(the one written by save_pretrained, containing config.json)"
            )
        with open(config_path, encoding="utf-8") as f:
            try:
                hf = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{config_path} is not valid JSON: {e}") from e
        if hf.get("model_type") != "qwen2":
            raise ValueError(
                f"{config_path} has model_type={hf.get('model_type')!r}; only 'qwen2' "
                "(Qwen2 and Qwen2.5 language models) can be loaded by merit_jax.models.qwen2"
            )
        return cls.from_hf_dict(hf, **overrides)

    def num_parameters(self) -> int:
        """Count the model's parameters analytically (the tied LM head counts once)."""
        hidden, head_dim = self.hidden_size, self.head_dim
        q_size = self.num_attention_heads * head_dim
        kv_size = self.num_key_value_heads * head_dim

        attention = hidden * q_size + q_size + 2 * (hidden * kv_size + kv_size) + q_size * hidden
        mlp = 3 * hidden * self.intermediate_size
        layer = attention + mlp + 2 * hidden

        embedding = self.vocab_size * hidden
        lm_head = 0 if self.tie_word_embeddings else self.vocab_size * hidden
        return embedding + self.num_hidden_layers * layer + hidden + lm_head


def _rope_theta_from_hf(hf: dict[str, Any]) -> float:
    """Read the RoPE base from either config layout, rejecting RoPE scaling we do not implement."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"RoPE type {rope_type!r} is not supported; only the default (unscaled) rotary "
            "embedding is implemented"
        )
    theta = rope.get("rope_theta", hf.get("rope_theta"))
    return float(theta) if theta is not None else _HF_DEFAULT_ROPE_THETA
