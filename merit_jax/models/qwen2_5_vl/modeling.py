"""Qwen2.5-VL in Flax NNX, numerically matching `transformers.Qwen2_5_VLForConditionalGeneration` for images.

Parameter paths mirror the tensor names of the released checkpoints (and of transformers 5.25's
save_pretrained): `visual/...` for the vision encoder, `model/...` for the decoder (the same paths
as `Qwen2ForCausalLM`) and `lm_head`. The decoder layers are qwen2's; only the embedding (image
features replace image tokens) and the rotary tables (multimodal RoPE) differ.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merit_jax.models.qwen2 import modeling as qwen2_modeling
from merit_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from merit_jax.models.qwen2_5_vl.vision import VisionTransformer


def init_cache(config: Qwen2_5_VLConfig, batch_size: int, max_length: int, dtype=None) -> dict:
    """Create an empty KV cache for the decoder, laid out as `merit_jax.models.qwen2.init_cache` does."""
    return qwen2_modeling.init_cache(config.text_config, batch_size, max_length, dtype)


def mrope_cos_sin(
    positions: jax.Array, head_dim: int, theta: float, mrope_section: tuple[int, ...], dtype
) -> tuple[jax.Array, jax.Array]:
    """Return multimodal rotary tables cos, sin (B, L, head_dim) for positions (3, B, L).

    Frequency j < head_dim / 2 rotates by the temporal, height or width position according to
    which part of mrope_section it falls in; dim j + head_dim / 2 repeats dim j.
    """
    cos3, sin3 = qwen2_modeling.rope_cos_sin(positions, head_dim, theta, jnp.float32)
    axis_of_frequency = np.repeat(np.arange(len(mrope_section)), mrope_section)
    axis_of_dim = np.concatenate([axis_of_frequency, axis_of_frequency])

    # Selecting with where (not a one-hot matmul) keeps the float32 tables exact on any backend.
    def select(tables):
        return jnp.where(axis_of_dim == 0, tables[0], jnp.where(axis_of_dim == 1, tables[1], tables[2]))

    cos, sin = select(cos3), select(sin3)
    return cos.astype(dtype), sin.astype(dtype)


class Qwen2_5_VLTextModel(nnx.Module):
    """Token embedding, qwen2 decoder layers and final norm (transformers' Qwen2_5_VLTextModel)."""

    def __init__(self, config: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        text = config.text_config
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        self.embed_tokens = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=nnx.initializers.normal(config.initializer_range),
            rngs=rngs,
        )
        self.layers = nnx.List(
            [qwen2_modeling.Qwen2DecoderLayer(text, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )
        self.norm = qwen2_modeling.RMSNorm(
            config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype
        )
        self.config = config

    def __call__(self, inputs_embeds, attention_mask, positions, cache=None):
        """Return the final hidden states (B, L, hidden) and the updated cache (None without one).

        inputs_embeds: (B, L, hidden). attention_mask: int (B, L), 1 for real tokens.
        positions: int (3, B, L), the temporal, height and width position of each token.
        """
        config = self.config
        dtype = jnp.dtype(config.dtype)
        length = inputs_embeds.shape[1]

        # Keys are real tokens that are not in the future. Slot order is time order, so with a
        # cache the causal test compares slot indices and padding already written stays masked.
        if cache is None:
            start = 0
            key_mask = attention_mask
            query_slots = jnp.arange(length)
            key_slots = jnp.arange(length)
        else:
            start = cache["length"]
            key_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, start))
            query_slots = start + jnp.arange(length)
            key_slots = jnp.arange(cache["mask"].shape[1])
        causal = key_slots[None, :] <= query_slots[:, None]
        mask = causal[None] & (key_mask[:, None, :] > 0)

        head_dim = config.hidden_size // config.num_attention_heads
        cos, sin = mrope_cos_sin(positions, head_dim, config.rope_theta, config.mrope_section, dtype)

        x = inputs_embeds.astype(dtype)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache["key"][i], cache["value"][i])
            run_layer = _remat_layer if config.remat else _call_layer
            x, layer_kv = run_layer(layer, x, cos, sin, mask, layer_cache, start)
            if layer_kv is not None:
                new_keys.append(layer_kv[0])
                new_values.append(layer_kv[1])
        x = self.norm(x)

        if cache is None:
            return x, None
        return x, {"key": new_keys, "value": new_values, "mask": key_mask, "length": start + length}


def _call_layer(layer, x, cos, sin, attention_mask, layer_cache, cache_start):
    return layer(x, cos, sin, attention_mask, layer_cache, cache_start)


# Recomputes the layer's activations in the backward pass instead of storing them.
_remat_layer = nnx.remat(_call_layer)


class Qwen2_5_VLForConditionalGeneration(nnx.Module):
    """Vision encoder, decoder and LM head (the embedding matrix when tie_word_embeddings is set)."""

    def __init__(self, config: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.visual = VisionTransformer(
            config.vision_config,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            remat=config.remat,
            rngs=rngs,
        )
        self.model = Qwen2_5_VLTextModel(config, rngs=rngs)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Linear(
                config.hidden_size,
                config.vocab_size,
                use_bias=False,
                dtype=jnp.dtype(config.dtype),
                param_dtype=jnp.dtype(config.param_dtype),
                kernel_init=nnx.initializers.normal(config.initializer_range),
                rngs=rngs,
            )

    def embed(self, input_ids, attention_mask, pixel_values=None, vision=None) -> jax.Array:
        """Embed tokens (B, L) and put the image features, in order, at the real image tokens.

        The k-th image token of the batch (row-major, padding skipped) receives the k-th feature,
        as transformers' masked_scatter does. A token whose feature would be a padding patch's
        keeps its token embedding; `inputs.rope_index` rejects such inputs on the host.
        """
        dtype = jnp.dtype(self.config.dtype)
        x = self.model.embed_tokens.embedding[...][input_ids].astype(dtype)
        if pixel_values is None:
            return x
        if vision is None:
            raise ValueError("pixel_values were given without `vision`, the layout from inputs.vision_layout")

        features = self.visual(pixel_values, vision)
        is_image = (input_ids == self.config.image_token_id) & (attention_mask > 0)
        feature_index = jnp.cumsum(is_image.reshape(-1)) - 1
        feature_index = jnp.clip(feature_index, 0, features.shape[0] - 1).reshape(is_image.shape)
        use_feature = is_image & vision["feature_mask"][feature_index]
        return jnp.where(use_feature[..., None], features[feature_index].astype(dtype), x)

    def __call__(
        self, input_ids, attention_mask=None, positions=None, pixel_values=None, vision=None, cache=None
    ):
        """Return float32 logits (B, L, vocab), or (logits, new_cache) when a cache is given.

        input_ids: int32 (B, L). attention_mask: (B, L), 1 for real tokens. positions: int32
        (3, B, L) from `inputs.rope_index`. By default every axis counts the real tokens before
        each one (cache included), which is correct only for text. pixel_values: (N, C*T*P*P)
        patches of every image of the batch, padded to a fixed N. vision: `inputs.vision_layout`
        for those images and N. cache: from `init_cache`; the L tokens are written at its `length`.
        """
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)
        if positions is None:
            past_tokens = None if cache is None else jnp.sum(cache["mask"], axis=1)
            text_positions = qwen2_modeling.default_positions(attention_mask, past_tokens)
            positions = jnp.broadcast_to(text_positions, (3, batch, length))

        x = self.embed(input_ids, attention_mask, pixel_values, vision)
        hidden, new_cache = self.model(x, attention_mask, positions, cache)

        if self.lm_head is None:
            head = self.model.embed_tokens.embedding[...].T
        else:
            head = self.lm_head.kernel[...]
        # The matmul reads compute-dtype inputs but accumulates and returns float32.
        dtype = jnp.dtype(self.config.dtype)
        logits = jnp.dot(hidden, head.astype(dtype), preferred_element_type=jnp.float32)

        if cache is None:
            return logits
        return logits, new_cache
