"""Qwen2.5-VL vision encoder in Flax NNX, numerically matching transformers' Qwen2_5_VisionTransformerPretrainedModel.

Patches arrive padded to a fixed count with a host-computed layout (`inputs.vision_layout`).
The encoder gathers them into window order and attends within equal segment ids: a window, or a
whole image in the layers of `fullatt_block_indexes`. It merges each 2x2 group and returns the
merged features in image order.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from merit_jax.models.qwen2.modeling import RMSNorm
from merit_jax.models.qwen2_5_vl.config import VisionConfig

# transformers hard-codes this epsilon for every norm of the vision encoder.
VISION_NORM_EPS = 1e-6


def _dense(config: VisionConfig, rngs, dtype, param_dtype, in_features, out_features, use_bias=True):
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(config.initializer_range),
        rngs=rngs,
    )


def vision_rope_cos_sin(rotary_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Return float32 tables cos, sin (N, head_dim) of the 2-D rotary embedding for (h, w) ids (N, 2).

    The head_dim / 4 frequencies are applied to h and to w, the two halves are concatenated, and
    the result is repeated so that dim i pairs with dim i + head_dim / 2 (rotate-half convention).
    """
    spatial_dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, spatial_dim, 2, dtype=jnp.float32) / spatial_dim))
    angles = rotary_ids.astype(jnp.float32)[..., None] * inv_freq
    angles = angles.reshape(rotary_ids.shape[0], -1)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x (N, heads, head_dim) in float32, as transformers does for the vision encoder."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)


class VisionAttention(nnx.Module):
    """Multi-head self-attention over the patches, restricted to keys with the query's segment id."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.qkv = _dense(config, rngs, dtype, param_dtype, hidden, 3 * hidden)
        self.proj = _dense(config, rngs, dtype, param_dtype, hidden, hidden)
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.dtype = dtype

    def __call__(self, x, cos, sin, segment_ids):
        """Attend x (N, hidden) to itself. Patch i attends to patch j only where their segment ids are equal.

        NOTE: the (heads, N, N) score matrix is dense, while windowed layers would need only
        O(N x window) memory. Batches of many full-resolution images therefore use more memory
        than necessary (16 heads x 16k patches x 4 bytes is 16 GiB per layer in float32).
        """
        length = x.shape[0]
        q, k, v = jnp.split(self.qkv(x).reshape(length, 3, self.num_heads, self.head_dim), 3, axis=1)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)

        scores = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32)
        scores = scores * (self.head_dim**-0.5)
        same_segment = segment_ids[:, None] == segment_ids[None, :]
        scores = jnp.where(same_segment[None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("hqk,khd->qhd", probs, v)
        return self.proj(out.reshape(length, -1))


class VisionMLP(nnx.Module):
    """SwiGLU feed-forward block with biases: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        hidden, intermediate = config.hidden_size, config.intermediate_size
        self.gate_proj = _dense(config, rngs, dtype, param_dtype, hidden, intermediate)
        self.up_proj = _dense(config, rngs, dtype, param_dtype, hidden, intermediate)
        self.down_proj = _dense(config, rngs, dtype, param_dtype, intermediate, hidden)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nnx.Module):
    """Pre-norm encoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(config.hidden_size, eps=VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
        self.norm2 = RMSNorm(config.hidden_size, eps=VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
        self.attn = VisionAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = VisionMLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids):
        x = x + self.attn(self.norm1(x), cos, sin, segment_ids)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nnx.Module):
    """Linear map of a flattened C*T*P*P patch, equal to transformers' Conv3d whose kernel is its stride."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.proj = _dense(
            config, rngs, dtype, param_dtype, config.patch_dim, config.hidden_size, use_bias=False
        )

    def __call__(self, patches):
        return self.proj(patches)


class PatchMerger(nnx.Module):
    """RMSNorm per patch, concatenation of each spatial_merge_size^2 group, then Linear-GELU-Linear."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        merged = config.hidden_size * config.merge_unit
        self.ln_q = RMSNorm(config.hidden_size, eps=VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
        # Entries 0 and 2, with the GELU's slot 1 empty, as in transformers' nn.Sequential(Linear,
        # GELU, Linear), so that the parameter paths match its tensor names.
        self.mlp = nnx.List(
            [
                _dense(config, rngs, dtype, param_dtype, merged, merged),
                None,
                _dense(config, rngs, dtype, param_dtype, merged, config.out_hidden_size),
            ]
        )
        self.merge_unit = config.merge_unit

    def __call__(self, x):
        x = self.ln_q(x).reshape(x.shape[0] // self.merge_unit, -1)
        # torch.nn.GELU() is the exact (erf) form.
        return self.mlp[2](jax.nn.gelu(self.mlp[0](x), approximate=False))


class VisionTransformer(nnx.Module):
    """The vision encoder: pixel patches (N, C*T*P*P) to LLM-width features (N / merge_unit, out_hidden_size)."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, remat: bool = False, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        self.patch_embed = PatchEmbed(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List(
            [VisionBlock(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(config.depth)]
        )
        self.merger = PatchMerger(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = config
        self.dtype = dtype
        self.remat = remat

    def __call__(self, pixel_values: jax.Array, layout: dict) -> jax.Array:
        """Encode padded patches; returns features in image order, padding features after the real ones.

        pixel_values: (N, C*T*P*P), N = the padded patch count. layout: the arrays of
        `inputs.vision_layout` for N (window_order, window_segment_ids, image_segment_ids,
        rotary_ids, feature_order; feature_mask is not needed here).
        """
        config = self.config
        patches = pixel_values.astype(self.dtype)[layout["window_order"]]
        x = self.patch_embed(patches)
        cos, sin = vision_rope_cos_sin(layout["rotary_ids"], config.head_dim, config.rope_theta)

        for index, block in enumerate(self.blocks):
            if index in config.fullatt_block_indexes:
                segment_ids = layout["image_segment_ids"]
            else:
                segment_ids = layout["window_segment_ids"]
            run_block = _remat_block if self.remat else _call_block
            x = run_block(block, x, cos, sin, segment_ids)

        merged = self.merger(x)
        return merged[layout["feature_order"]]


def _call_block(block, x, cos, sin, segment_ids):
    return block(x, cos, sin, segment_ids)


# Recomputes the block's activations in the backward pass instead of storing them.
_remat_block = nnx.remat(_call_block)
