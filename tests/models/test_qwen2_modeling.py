"""Parity of the NNX Qwen2 modules and model with transformers.Qwen2ForCausalLM in float32.

Tolerances: 1e-5 for single modules, 1e-4 for whole models, 1e-5 between our cached and uncached
paths.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from transformers.models.qwen2 import modeling_qwen2 as hf_qwen2

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM, init_cache
from merit_jax.models.qwen2 import modeling
from .hf_reference import forward, hf_logits, padding_mask, random_ids

MODULE_TOL = 1e-5
MODEL_TOL = 1e-4
CACHE_TOL = 1e-5


def _torch(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array))


def test_rmsnorm_matches_hf():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32) * 3.0
    scale = (1.0 + 0.3 * rng.normal(size=(16,))).astype(np.float32)

    ours = modeling.RMSNorm(16, eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32)
    ours.scale[...] = jnp.asarray(scale)
    reference = hf_qwen2.Qwen2RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        reference.weight.copy_(_torch(scale))
        expected = reference(_torch(x)).numpy()

    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), expected, atol=MODULE_TOL, rtol=0)


def test_rope_matches_hf():
    hf_config = transformers.Qwen2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0
    )
    head_dim = 16
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 7, 4, head_dim)).astype(np.float32)
    k = rng.normal(size=(2, 7, 2, head_dim)).astype(np.float32)
    # Large positions exercise the high-frequency end where float32 angle errors grow.
    positions = np.stack([np.arange(7), np.arange(7) + 4000]).astype(np.int32)

    cos, sin = modeling.rope_cos_sin(jnp.asarray(positions), head_dim, 1000000.0, jnp.float32)
    q_ours = modeling.apply_rope(jnp.asarray(q), cos, sin)
    k_ours = modeling.apply_rope(jnp.asarray(k), cos, sin)

    rotary = hf_qwen2.Qwen2RotaryEmbedding(hf_config)
    q_torch = _torch(q).transpose(1, 2)
    hf_cos, hf_sin = rotary(q_torch, _torch(positions).long())
    q_ref, k_ref = hf_qwen2.apply_rotary_pos_emb(q_torch, _torch(k).transpose(1, 2), hf_cos, hf_sin)

    np.testing.assert_allclose(np.asarray(q_ours), q_ref.transpose(1, 2).numpy(), atol=MODULE_TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(k_ours), k_ref.transpose(1, 2).numpy(), atol=MODULE_TOL, rtol=0)


def test_mlp_matches_hf():
    hf_config = transformers.Qwen2Config(hidden_size=32, intermediate_size=80)
    torch.manual_seed(0)
    reference = hf_qwen2.Qwen2MLP(hf_config)
    ours = modeling.Qwen2MLP(
        Qwen2Config(hidden_size=32, intermediate_size=80, num_attention_heads=4), rngs=nnx.Rngs(0)
    )
    for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(ours, name).kernel[...] = jnp.asarray(getattr(reference, name).weight.detach().numpy().T)
    x = np.random.default_rng(2).normal(size=(3, 4, 32)).astype(np.float32)

    with torch.no_grad():
        expected = reference(_torch(x)).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), expected, atol=MODULE_TOL, rtol=0)


def test_model_matches_hf_without_mask(tiny_checkpoint):
    hf_model, _, model, config = tiny_checkpoint
    ids = random_ids(config.vocab_size, (3, 11))

    expected = hf_logits(hf_model, ids)
    ours = np.asarray(forward(model, jnp.asarray(ids)))

    assert ours.dtype == np.float32
    # The perturbed tiny models have logits of order 1, so 1e-4 is a tight relative check too.
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(ours, expected, atol=MODEL_TOL, rtol=0)


def test_model_matches_hf_with_right_padding(tiny_checkpoint):
    hf_model, _, model, config = tiny_checkpoint
    ids = random_ids(config.vocab_size, (3, 10), seed=1)
    mask = padding_mask([10, 6, 3], 10, side="right")

    expected = hf_logits(hf_model, ids, mask)
    ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))

    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=MODEL_TOL, rtol=0)


def test_model_matches_hf_with_left_padding(tiny_checkpoint):
    hf_model, _, model, config = tiny_checkpoint
    ids = random_ids(config.vocab_size, (3, 10), seed=2)
    mask = padding_mask([10, 7, 2], 10, side="left")
    # transformers' forward numbers positions 0..L-1 regardless of the mask (only generate()
    # derives them from it), so it gets the positions our default produces.
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)

    expected = hf_logits(hf_model, ids, mask, positions)
    ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))

    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=MODEL_TOL, rtol=0)


def test_model_matches_hf_with_explicit_positions(tiny_checkpoint):
    hf_model, _, model, config = tiny_checkpoint
    ids = random_ids(config.vocab_size, (2, 6), seed=8)
    # RoPE depends only on relative distances, so gaps change the logits and a uniform shift would not.
    positions = np.array([[0, 1, 2, 10, 11, 30], [5, 6, 7, 8, 9, 10]], np.int32)

    expected = hf_logits(hf_model, ids, positions=positions)
    ours = np.asarray(forward(model, jnp.asarray(ids), None, jnp.asarray(positions)))

    np.testing.assert_allclose(ours, expected, atol=MODEL_TOL, rtol=0)
    default = np.asarray(forward(model, jnp.asarray(ids)))
    assert np.abs(default[0] - expected[0]).max() > 1e-3


def test_default_positions_count_real_tokens():
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 1]])

    positions = np.asarray(modeling.default_positions(mask))
    after_cache = np.asarray(modeling.default_positions(mask, jnp.asarray([3, 0, 1])))

    np.testing.assert_array_equal(positions, [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 0, 1, 2, 3]])
    np.testing.assert_array_equal(after_cache, [[2, 2, 3, 4, 5], [0, 1, 2, 2, 2], [1, 1, 2, 3, 4]])


def test_left_padding_equals_unpadded_row(tiny_checkpoint):
    _, _, model, config = tiny_checkpoint
    ids = random_ids(config.vocab_size, (2, 9), seed=3)
    mask = padding_mask([9, 5], 9, side="left")

    padded = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    alone = np.asarray(forward(model, jnp.asarray(ids[1:, 4:])))

    np.testing.assert_allclose(padded[1, 4:], alone[0], atol=CACHE_TOL, rtol=0)
    # Negative control: without the mask the padding tokens leak into the real positions.
    unmasked = np.asarray(forward(model, jnp.asarray(ids)))
    assert np.abs(unmasked[1, 4:] - alone[0]).max() > 1e-3


def test_cached_forward_matches_full_forward(tiny_checkpoint):
    _, _, model, config = tiny_checkpoint
    fm, params = FunctionalModule.from_module(model)
    ids = random_ids(config.vocab_size, (2, 10), seed=4)
    mask = padding_mask([10, 6], 10, side="left")
    full = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))

    # Feed the sequence in chunks of 4, 1, 1 and 4 tokens through a cache with spare slots.
    apply = jax.jit(fm.apply)
    cache = init_cache(config, batch_size=2, max_length=12)
    chunks = []
    for start, stop in ((0, 4), (4, 5), (5, 6), (6, 10)):
        chunk_ids, chunk_mask = jnp.asarray(ids[:, start:stop]), jnp.asarray(mask[:, start:stop])
        logits, cache = apply(params, chunk_ids, chunk_mask, None, cache)
        chunks.append(np.asarray(logits))
    cached = np.concatenate(chunks, axis=1)

    assert int(cache["length"]) == 10
    real = mask.astype(bool)
    np.testing.assert_allclose(cached[real], full[real], atol=CACHE_TOL, rtol=0)


def test_bfloat16_compute_close_to_float32(tiny_checkpoint):
    _, _, model, config = tiny_checkpoint
    bf16_model = Qwen2ForCausalLM(dataclasses.replace(config, dtype="bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(bf16_model, nnx.state(model))
    ids = jnp.asarray(random_ids(config.vocab_size, (2, 8), seed=5))

    expected = np.asarray(forward(model, ids))
    logits = np.asarray(forward(bf16_model, ids))

    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    error = np.abs(logits - expected).max()
    # bfloat16 keeps 8 significant bits, so the error is about a percent of the logit scale.
    assert error < 0.05 * np.abs(expected).max()
    # Negative control: a model that ignored `dtype` and ran in float32 would match exactly.
    assert error > 1e-4


def test_remat_gives_same_gradients(tiny_checkpoint):
    _, _, model, config = tiny_checkpoint
    remat_model = Qwen2ForCausalLM(dataclasses.replace(config, remat=True), rngs=nnx.Rngs(0))
    nnx.update(remat_model, nnx.state(model))
    ids = jnp.asarray(random_ids(config.vocab_size, (2, 6), seed=6))

    def loss(m):
        return jnp.mean(jax.nn.logsumexp(m(ids), axis=-1))

    grads = nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(model))
    remat_grads = nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(remat_model))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), grads, remat_grads)


def test_init_matches_hf_scheme():
    config = Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=7,
    )
    model = Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
    layer = model.model.layers[0]

    embedding = np.asarray(model.model.embed_tokens.embedding[...])
    assert np.all(embedding[7] == 0)
    assert abs(np.delete(embedding, 7, axis=0).std() - 0.02) < 0.002
    assert abs(np.asarray(layer.mlp.up_proj.kernel[...]).std() - 0.02) < 0.002
    assert np.all(np.asarray(layer.self_attn.q_proj.bias[...]) == 0)
    assert np.all(np.asarray(layer.input_layernorm.scale[...]) == 1)


def test_functional_params_have_hf_like_paths():
    config = Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, tie_word_embeddings=False)
    _, params = FunctionalModule.from_module(Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)))
    paths = {
        "/".join(str(getattr(entry, "key", entry)) for entry in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    }

    assert "model/embed_tokens/embedding" in paths
    assert "model/layers/1/self_attn/q_proj/bias" in paths
    assert "model/layers/1/self_attn/o_proj/kernel" in paths
    assert "model/layers/1/self_attn/o_proj/bias" not in paths
    assert "model/layers/0/post_attention_layernorm/scale" in paths
    assert "model/norm/scale" in paths
    assert "lm_head/kernel" in paths
    # Per layer: q, k, v kernels and biases, o kernel, three MLP kernels, two norm scales.
    assert len(paths) == 2 + 2 * 12 + 1
    assert sum(np.size(x) for x in jax.tree.leaves(params)) == config.num_parameters()
