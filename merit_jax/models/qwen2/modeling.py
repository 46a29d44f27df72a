"""Qwen2 / Qwen2.5 causal decoder in Flax NNX, numerically matching `transformers.Qwen2ForCausalLM`.

Parameter paths mirror the Hugging Face names: `model.layers.0.self_attn.q_proj.weight` is
`model/layers/0/self_attn/q_proj/kernel` here, transposed to (in, out). The module contains only
`nnx.Param`s: rotary tables are computed per call and the KV cache is a pytree passed in and out.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from merit_jax.models.qwen2.config import Qwen2Config


def init_cache(config: Qwen2Config, batch_size: int, max_length: int, dtype=None) -> dict:
    """Create an empty KV cache for `max_length` token slots per sequence.

    `key` and `value` are lists with one (B, max_length, num_kv_heads, head_dim) array per layer.
    `mask` (B, max_length) int32 marks the slots that contain real tokens. `length` (int32 scalar)
    counts the slots written so far, which is the same for every row because padding takes slots.
    """
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch_size, max_length, config.num_key_value_heads, config.head_dim)
    layers = range(config.num_hidden_layers)
    return {
        "key": [jnp.zeros(shape, dtype) for _ in layers],
        "value": [jnp.zeros(shape, dtype) for _ in layers],
        "mask": jnp.zeros((batch_size, max_length), jnp.int32),
        "length": jnp.zeros((), jnp.int32),
    }


def default_positions(attention_mask: jax.Array, past_tokens: jax.Array | None = None) -> jax.Array:
    """Number each token by the real tokens before it, so a left-padded row starts at position 0.

    attention_mask: (B, L), 1 for real tokens. past_tokens: (B,) real tokens already in the
    cache. Padding takes the position of the real token before it (0 if there is none). No query
    attends to a padding key, so these values only need to be valid.
    """
    positions = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1
    if past_tokens is not None:
        positions = positions + past_tokens[:, None]
    return jnp.maximum(positions, 0)


def rope_cos_sin(
    positions: jax.Array, head_dim: int, theta: float, dtype
) -> tuple[jax.Array, jax.Array]:
    """Return the rotary tables cos, sin of shape (B, L, head_dim) for int positions (B, L).

    As in transformers, angles are computed in float32 and only the tables are cast to `dtype`.
    """
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x (B, L, heads, head_dim) by tables (B, L, head_dim), pairing dim i with i + head_dim/2."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class RMSNorm(nnx.Module):
    """Root-mean-square norm whose statistics are taken in float32 whatever the compute dtype."""

    def __init__(self, size: int, *, eps: float, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(variance + self.eps)).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * normed


def _dense(config: Qwen2Config, rngs: nnx.Rngs, in_features: int, out_features: int, use_bias: bool):
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=nnx.initializers.normal(config.initializer_range),
        rngs=rngs,
    )


class Qwen2MLP(nnx.Module):
    """SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        hidden, intermediate = config.hidden_size, config.intermediate_size
        self.gate_proj = _dense(config, rngs, hidden, intermediate, use_bias=False)
        self.up_proj = _dense(config, rngs, hidden, intermediate, use_bias=False)
        self.down_proj = _dense(config, rngs, intermediate, hidden, use_bias=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings, bias on q/k/v and none on o_proj."""

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        hidden, head_dim = config.hidden_size, config.head_dim
        q_size = config.num_attention_heads * head_dim
        kv_size = config.num_key_value_heads * head_dim
        self.q_proj = _dense(config, rngs, hidden, q_size, use_bias=True)
        self.k_proj = _dense(config, rngs, hidden, kv_size, use_bias=True)
        self.v_proj = _dense(config, rngs, hidden, kv_size, use_bias=True)
        self.o_proj = _dense(config, rngs, q_size, hidden, use_bias=False)
        self.num_kv_heads = config.num_key_value_heads
        self.num_groups = config.num_key_value_groups
        self.head_dim = head_dim
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x, cos, sin, attention_mask, layer_cache=None, cache_start=None):
        """Attend x (B, L, hidden) to itself, or to the cache after writing x's keys at `cache_start`.

        attention_mask: bool (B, L, S), True where a query may attend to a key; S = L without a
        cache, the cache length with one. Returns (output, updated (key, value) or None).
        """
        batch, length, _ = x.shape
        kv_shape = (batch, length, self.num_kv_heads, self.head_dim)
        q = apply_rope(self.q_proj(x).reshape(batch, length, -1, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(kv_shape), cos, sin)
        v = self.v_proj(x).reshape(kv_shape)

        # Query head h reads key/value head h // num_groups (the pairing of transformers'
        # repeat_kv), so the query head axis splits as (kv_head, group).
        q = q.reshape(batch, length, self.num_kv_heads, self.num_groups, self.head_dim)

        new_cache = None
        if layer_cache is not None:
            cached_k, cached_v = layer_cache
            start = (0, cache_start, 0, 0)
            k = jax.lax.dynamic_update_slice(cached_k, k.astype(cached_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cached_v, v.astype(cached_v.dtype), start)
            new_cache = (k, v)
            k, v = k.astype(self.dtype), v.astype(self.dtype)

        # Scores accumulate in float32 and the softmax runs in float32 for any compute dtype
        # (transformers' eager attention also takes its softmax in float32).
        scores = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32)
        scores = scores * (self.head_dim**-0.5)
        scores = jnp.where(attention_mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
        return self.o_proj(out.reshape(batch, length, -1)), new_cache


class Qwen2DecoderLayer(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        norm = functools.partial(
            RMSNorm,
            config.hidden_size,
            eps=config.rms_norm_eps,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
        )
        self.self_attn = Qwen2Attention(config, rngs=rngs)
        self.mlp = Qwen2MLP(config, rngs=rngs)
        self.input_layernorm = norm()
        self.post_attention_layernorm = norm()

    def __call__(self, x, cos, sin, attention_mask, layer_cache=None, cache_start=None):
        attn_out, new_cache = self.self_attn(
            self.input_layernorm(x), cos, sin, attention_mask, layer_cache, cache_start
        )
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_cache


def _call_layer(layer, x, cos, sin, attention_mask, layer_cache, cache_start):
    return layer(x, cos, sin, attention_mask, layer_cache, cache_start)


# Recomputes the layer's activations in the backward pass instead of storing them.
_remat_layer = nnx.remat(_call_layer)


class Qwen2Model(nnx.Module):
    """Token embedding, decoder layers and final norm: the transformer body without the LM head."""

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        embed_init = nnx.initializers.normal(config.initializer_range)
        if config.pad_token_id is not None:
            # transformers zeroes the padding row of a freshly initialized embedding.
            embed_init = _zero_row(embed_init, config.pad_token_id)
        self.embed_tokens = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            embedding_init=embed_init,
            rngs=rngs,
        )
        self.layers = nnx.List(
            [Qwen2DecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(
            config.hidden_size,
            eps=config.rms_norm_eps,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
        )
        self.config = config

    def __call__(self, input_ids, attention_mask=None, positions=None, cache=None):
        """Return the final hidden states (B, L, hidden) and the updated cache (None without one)."""
        config = self.config
        dtype = jnp.dtype(config.dtype)
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)

        # Keys are real tokens that are not in the future. Slot order is time order, so with a
        # cache the causal test compares slot indices and padding already written stays masked.
        if cache is None:
            start = 0
            key_mask = attention_mask
            past_tokens = jnp.zeros((batch,), jnp.int32)
            query_slots = jnp.arange(length)
            key_slots = jnp.arange(length)
        else:
            start = cache["length"]
            key_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, start))
            past_tokens = jnp.sum(cache["mask"], axis=1)
            query_slots = start + jnp.arange(length)
            key_slots = jnp.arange(cache["mask"].shape[1])
        causal = key_slots[None, :] <= query_slots[:, None]
        mask = causal[None] & (key_mask[:, None, :] > 0)

        if positions is None:
            positions = default_positions(attention_mask, past_tokens)
        cos, sin = rope_cos_sin(positions, config.head_dim, config.rope_theta, dtype)

        x = self.embed_tokens.embedding[...][input_ids].astype(dtype)
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


class Qwen2ForCausalLM(nnx.Module):
    """Qwen2 decoder with its LM head, which is the embedding matrix when tie_word_embeddings is set."""

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Qwen2Model(config, rngs=rngs)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _dense(config, rngs, config.hidden_size, config.vocab_size, use_bias=False)

    def __call__(self, input_ids, attention_mask=None, positions=None, cache=None):
        """Return float32 logits (B, L, vocab), or (logits, new_cache) when a cache is given.

        input_ids: int32 (B, L). attention_mask: (B, L), 1 for real tokens and 0 for padding on
        either side. positions: int32 (B, L), by default the count of real tokens before each
        one (cache included). cache: from `init_cache`; the L tokens are written at its `length`.
        """
        hidden, new_cache = self.model(input_ids, attention_mask, positions, cache)

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


def _zero_row(init, row: int):
    def init_with_zero_row(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype).at[row].set(0)

    return init_with_zero_row
