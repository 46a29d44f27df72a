"""Configuration of Qwen2.5-VL (vision encoder + Qwen2 decoder with multimodal RoPE), with HF field names.

Defaults equal those of transformers 5.25's Qwen2_5_VLConfig, so a key missing from a
`config.json` means here what it means there. `published_config` returns the released 3B and 7B
architectures.
"""

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from merit_jax.models.qwen2.config import Qwen2Config

# Text keys read from a config.json, in its `text_config` (as transformers 5.25 writes it) or at the
# top level (as in the released Qwen2.5-VL checkpoints). Import ignores every other key.
_TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "rms_norm_eps",
    "max_position_embeddings",
    "initializer_range",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_VISION_FIELDS = (
    "depth",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "in_channels",
    "patch_size",
    "temporal_patch_size",
    "spatial_merge_size",
    "window_size",
    "fullatt_block_indexes",
    "out_hidden_size",
    "hidden_act",
    "tokens_per_second",
    "initializer_range",
)

# transformers 5.25 defaults: the text RoPE base of Qwen2_5_VLTextConfig, the vision RoPE base of the
# axial rotary embedding, and the M-RoPE split of Qwen2_5_VLRotaryEmbedding when none is given.
_HF_DEFAULT_TEXT_THETA = 1000000.0
_HF_DEFAULT_VISION_THETA = 10000.0
_HF_DEFAULT_MROPE_SECTION = (16, 24, 24)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Hyperparameters of the Qwen2.5-VL vision encoder (transformers' Qwen2_5_VLVisionConfig).

    A patch is C x T x P x P pixels (in_channels, temporal_patch_size, patch_size). Window
    attention runs over squares of window_size pixels. The merger joins spatial_merge_size^2
    neighbouring patches into one LLM token of width out_hidden_size.
    """

    depth: int = 32
    hidden_size: int = 3584
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    hidden_act: str = "silu"
    tokens_per_second: int = 4
    initializer_range: float = 0.02
    rope_theta: float = _HF_DEFAULT_VISION_THETA

    def __post_init__(self):
        object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
        for name in ("patch_size", "temporal_patch_size"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"vision {name}={getattr(self, name)!r} must be one int; non-square patches are not supported")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"vision hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.head_dim % 4:
            raise ValueError(
                f"vision head_dim={self.head_dim} must be a multiple of 4: the 2-D rotary embedding "
                "gives a quarter of the frequencies to each of the height and width coordinates"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"vision hidden_act={self.hidden_act!r} is not supported; Qwen2.5-VL uses 'silu'")
        if self.window_size // self.spatial_merge_size // self.patch_size < 1:
            raise ValueError(
                f"vision window_size={self.window_size} is smaller than one merged patch "
                f"(spatial_merge_size * patch_size = {self.spatial_merge_size * self.patch_size} pixels)"
            )
        outside = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if outside:
            raise ValueError(f"vision fullatt_block_indexes {outside} are outside 0..depth-1 (depth={self.depth})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch, C * T * P * P: the width of a `pixel_values` row."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Number of patches merged into one LLM token."""
        return self.spatial_merge_size**2

    @property
    def window_merged_patches(self) -> int:
        """Side of an attention window in merged patches, as transformers' get_vision_window_index computes it."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> "VisionConfig":
        fields = {key: hf[key] for key in _VISION_FIELDS if hf.get(key) is not None}
        # The released checkpoints call in_channels `in_chans`.
        if "in_channels" not in fields and hf.get("in_chans") is not None:
            fields["in_channels"] = hf["in_chans"]
        rope = hf.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "axial")
        if rope_type != "axial":
            raise ValueError(f"vision rope_type={rope_type!r} is not supported; Qwen2.5-VL uses 'axial'")
        fields["rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta", _HF_DEFAULT_VISION_THETA)))
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        hf = {key: getattr(self, key) for key in _VISION_FIELDS}
        hf["fullatt_block_indexes"] = list(self.fullatt_block_indexes)
        hf["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": "axial"}
        hf["model_type"] = "qwen2_5_vl_vision"
        return hf

    def num_parameters(self) -> int:
        """Count the encoder's parameters analytically: patch embedding, blocks and merger."""
        hidden, intermediate = self.hidden_size, self.intermediate_size
        attention = hidden * 3 * hidden + 3 * hidden + hidden * hidden + hidden
        mlp = 2 * (hidden * intermediate + intermediate) + intermediate * hidden + hidden
        block = attention + mlp + 2 * hidden

        merged = hidden * self.merge_unit
        merger = hidden + merged * merged + merged + merged * self.out_hidden_size + self.out_hidden_size
        return self.patch_dim * hidden + self.depth * block + merger


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
    """Hyperparameters of Qwen2.5-VL: the decoder's fields, the special token ids and `vision_config`.

    `mrope_section` splits the head_dim / 2 rotary frequencies into the temporal, height and width
    parts of multimodal RoPE. `dtype` (compute), `param_dtype` (storage) and `remat` (recompute each
    decoder layer in the backward pass) are ours and apply to both towers.
    """

    vocab_size: int = 152064
    hidden_size: int = 8192
    intermediate_size: int = 29568
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int | None = 8
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    rope_theta: float = _HF_DEFAULT_TEXT_THETA
    mrope_section: tuple[int, int, int] = _HF_DEFAULT_MROPE_SECTION
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 151643
    eos_token_id: int | tuple[int, ...] | None = 151645
    pad_token_id: int | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_config: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype).name)
        object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
        if isinstance(self.eos_token_id, (list, tuple)):
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
        if isinstance(self.vision_config, dict):
            object.__setattr__(self, "vision_config", VisionConfig(**self.vision_config))
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)

        # Constructing the decoder's config runs its checks (head counts, activation, dropout).
        text = self.text_config
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != text.head_dim // 2:
            raise ValueError(
                f"mrope_section={list(self.mrope_section)} must have 3 parts (temporal, height, width) "
                f"summing to head_dim / 2 = {text.head_dim // 2}"
            )
        if self.vision_config.out_hidden_size != self.hidden_size:
            raise ValueError(
                f"vision_config.out_hidden_size={self.vision_config.out_hidden_size} must equal the "
                f"decoder's hidden_size={self.hidden_size}, because image features replace token embeddings"
            )

    @property
    def text_config(self) -> Qwen2Config:
        """The decoder as a Qwen2 config, whose layers this model reuses (head_dim = hidden / heads)."""
        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            hidden_act=self.hidden_act,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_dropout=self.attention_dropout,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            remat=self.remat,
        )

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "Qwen2_5_VLConfig":
        """Build a config from a Hugging Face config dict, nested (transformers 5) or flat (the releases).

        `overrides` set fields such as dtype.
        """
        model_type = hf.get("model_type", "qwen2_5_vl")
        if model_type != "qwen2_5_vl":
            raise ValueError(f"model_type={model_type!r} is not Qwen2.5-VL; expected 'qwen2_5_vl'")
        text = dict(hf)
        text.update(hf.get("text_config") or {})
        if text.get("use_sliding_window", False):
            raise ValueError(
                "use_sliding_window=true is not supported: the decoder has only full causal "
                "attention. Set use_sliding_window to false in config.json"
            )

        fields = {key: text[key] for key in _TEXT_FIELDS if text.get(key) is not None}
        fields.update({key: hf[key] for key in _TOKEN_FIELDS if hf.get(key) is not None})
        fields["rope_theta"], fields["mrope_section"] = _text_rope_from_hf(text)
        # transformers 5 moves a `tie_word_embeddings` saved inside text_config (before v5) to the top.
        fields["tie_word_embeddings"] = bool(
            hf.get("tie_word_embeddings") or (hf.get("text_config") or {}).get("tie_word_embeddings")
        )
        fields["vision_config"] = VisionConfig.from_hf_dict(hf.get("vision_config") or {})
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """Return the nested dict that transformers 5.25 writes to config.json and that its config accepts."""
        text = {key: getattr(self, key) for key in _TEXT_FIELDS}
        if isinstance(self.eos_token_id, tuple):
            text["eos_token_id"] = list(self.eos_token_id)
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": self.rope_theta,
            "mrope_section": list(self.mrope_section),
        }
        text["use_sliding_window"] = False
        text["model_type"] = "qwen2_5_vl_text"

        hf = {key: getattr(self, key) for key in _TOKEN_FIELDS}
        hf["text_config"] = text
        hf["vision_config"] = self.vision_config.to_hf_dict()
        hf["tie_word_embeddings"] = self.tie_word_embeddings
        hf["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
        hf["model_type"] = "qwen2_5_vl"
        return hf

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike, **overrides) -> "Qwen2_5_VLConfig":
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
        if hf.get("model_type") != "qwen2_5_vl":
            raise ValueError(
                f"{config_path} has model_type={hf.get('model_type')!r}; only 'qwen2_5_vl' can be "
                "loaded by merit_jax.models.qwen2_5_vl (use merit_jax.models.qwen2 for text-only Qwen2.5)"
            )
        return cls.from_hf_dict(hf, **overrides)

    def num_parameters(self) -> int:
        """Count the parameters of both towers analytically (a tied LM head counts once)."""
        return self.text_config.num_parameters() + self.vision_config.num_parameters()


def _text_rope_from_hf(text: dict[str, Any]) -> tuple[float, tuple[int, ...]]:
    """Read (rope_theta, mrope_section), accepting `rope_scaling` {"type": "mrope"} of the releases."""
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(
            f"RoPE type {rope_type!r} is not supported; only unscaled multimodal RoPE ('default' or "
            "'mrope') is implemented"
        )
    theta = rope.get("rope_theta", text.get("rope_theta"))
    theta = float(theta) if theta is not None else _HF_DEFAULT_TEXT_THETA
    return theta, tuple(rope.get("mrope_section", _HF_DEFAULT_MROPE_SECTION))


# The released architectures, written out from the config.json of Qwen/Qwen2.5-VL-3B-Instruct and
# Qwen/Qwen2.5-VL-7B-Instruct on the Hugging Face hub (the 7B pairs the same vision encoder with the
# Qwen2.5-7B-Instruct decoder). Their model cards list 3.75B and 8.29B parameters, and
# `num_parameters()` gives 3,754,622,976 and 8,292,166,656. A test checks both counts against an
# abstract build and against transformers' own model built on the meta device.
# NOTE: the parameter counts check every size field, but not the token ids, rope_theta,
# rms_norm_eps or max_position_embeddings. Compare those with the hub's config.json before relying
# on them. The vision `tokens_per_second` (2) only matters for videos, which are not implemented.
_PUBLISHED_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_channels=3,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=112,
    fullatt_block_indexes=(7, 15, 23, 31),
    hidden_act="silu",
    tokens_per_second=2,
)
_PUBLISHED_TEXT = dict(
    hidden_act="silu",
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    mrope_section=(16, 24, 24),
    max_position_embeddings=128000,
    bos_token_id=151643,
    eos_token_id=151645,
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
)
_PUBLISHED_SIZES = {
    "3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}


def published_config(size: str, **overrides) -> Qwen2_5_VLConfig:
    """Return the architecture of Qwen2.5-VL-3B-Instruct ("3b") or Qwen2.5-VL-7B-Instruct ("7b").

    `overrides` set fields such as dtype, param_dtype or remat.
    """
    if size not in _PUBLISHED_SIZES:
        raise ValueError(f"unknown Qwen2.5-VL size {size!r}; choose one of {sorted(_PUBLISHED_SIZES)}")
    text = _PUBLISHED_SIZES[size]
    vision = VisionConfig(out_hidden_size=text["hidden_size"], **_PUBLISHED_VISION)
    return Qwen2_5_VLConfig(**_PUBLISHED_TEXT, **text, vision_config=vision, **overrides)
