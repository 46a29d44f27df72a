"""Parity of the NNX Qwen2.5-VL model and vision encoder with transformers in float32.

Tolerances: 1e-4 absolute on whole-model logits (of order 1), 1e-5 relative to the output scale
for the vision encoder.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2_5_vl import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    collate_vl_batch,
    rope_index,
    vision_layout,
)

from .vl_reference import (
    IMAGE_ID,
    TEXT_VOCAB,
    TINY_VL_CASES,
    forward,
    hf_config,
    hf_logits,
    pad_patches,
    pad_rows,
    process_images,
    prompt,
    tiny_vl_checkpoint,  # noqa: F401 (pytest fixture)
)

MODEL_TOL = 1e-4
VISION_RELATIVE_TOL = 1e-5
SIZES = [(112, 112), (84, 140), (56, 56)]


def _ours(model, config, ids, mask, grids_per_row, pixels, num_patches):
    positions = rope_index(ids, mask, grids_per_row, config)
    layout = vision_layout(np.concatenate(grids_per_row), config, num_patches)
    return np.asarray(forward(model, ids, mask, positions, pad_patches(pixels, num_patches), layout))


@jax.jit
def _visual(model_state, graphdef, pixels, layout):
    return nnx.merge(graphdef, model_state).visual(pixels, layout)


def _run_visual(model, pixels, layout):
    graphdef, state = nnx.split(model)
    return np.asarray(_visual(state, graphdef, pixels, layout))


def test_text_only_matches_hf(tiny_vl_checkpoint):
    hf_model, _, model, _ = tiny_vl_checkpoint
    ids = np.random.default_rng(0).integers(0, TEXT_VOCAB, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0

    expected = hf_logits(hf_model, ids, mask)
    ours = np.asarray(forward(model, ids, mask))

    assert ours.dtype == np.float32
    assert np.abs(expected).max() > 0.5
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=MODEL_TOL, rtol=0)


def test_one_image_matches_hf(tiny_vl_checkpoint):
    hf_model, _, model, config = tiny_vl_checkpoint
    pixels, grids = process_images(SIZES[:1], seed=1)
    ids, mask = pad_rows([prompt(grids, [3, 4], seed=1)], side="right")

    expected = hf_logits(hf_model, ids, mask, pixels, grids)
    ours = _ours(model, config, ids, mask, [grids], pixels, 80)

    np.testing.assert_allclose(ours, expected, atol=MODEL_TOL, rtol=0)

    # Negative controls: the image features and the M-RoPE positions both change the text after it.
    after_image = slice(ids.shape[1] - 4, None)
    text_positions = np.asarray(forward(model, ids, mask, None, pad_patches(pixels, 80),
                                        vision_layout(grids, config, 80)))
    no_pixels = np.asarray(forward(model, ids, mask, jnp.asarray(rope_index(ids, mask, [grids], config))))
    assert np.abs(text_positions[0, after_image] - expected[0, after_image]).max() > 1e-3
    assert np.abs(no_pixels[0, after_image] - expected[0, after_image]).max() > 1e-3


def test_several_images_in_one_sequence_match_hf(tiny_vl_checkpoint):
    hf_model, _, model, config = tiny_vl_checkpoint
    pixels, grids = process_images(SIZES, seed=2)
    ids, mask = pad_rows([prompt(grids, [2, 3, 1, 2], seed=2)], side="right")

    expected = hf_logits(hf_model, ids, mask, pixels, grids)
    ours = _ours(model, config, ids, mask, [grids], pixels, 160)

    np.testing.assert_allclose(ours, expected, atol=MODEL_TOL, rtol=0)


def test_left_padded_image_batch_matches_hf(tiny_vl_checkpoint):
    hf_model, _, model, config = tiny_vl_checkpoint
    pixels, grids = process_images(SIZES, seed=3)
    rows = [prompt(grids[:2], [3, 2, 4], seed=3), prompt(grids[2:], [2, 5], seed=4)]
    ids, mask = pad_rows(rows, side="left")

    expected = hf_logits(hf_model, ids, mask, pixels, grids)
    ours = _ours(model, config, ids, mask, [grids[:2], grids[2:]], pixels, 160)

    real = mask.astype(bool)
    assert not real.all()
    np.testing.assert_allclose(ours[real], expected[real], atol=MODEL_TOL, rtol=0)


def test_collated_batch_matches_hf(tiny_vl_checkpoint):
    hf_model, _, model, config = tiny_vl_checkpoint
    pixels, grids = process_images(SIZES, seed=5)
    split = int(grids[:2].prod(axis=1).sum())
    rows = [prompt(grids[:2], [3, 2, 4], seed=5), prompt(grids[2:], [2, 5], seed=6)]
    examples = [
        dict(input_ids=rows[0], loss_mask=np.ones(len(rows[0]), bool), pixel_values=pixels[:split],
             image_grid_thw=grids[:2]),
        dict(input_ids=rows[1], loss_mask=np.ones(len(rows[1]), bool), pixel_values=pixels[split:],
             image_grid_thw=grids[2:]),
    ]
    batch = collate_vl_batch(examples, batch_size=3, seq_len=48, max_patches=192, config=config, pad_id=0)

    ours = np.asarray(forward(model, batch["input_ids"], batch["attention_mask"], batch["positions"],
                              batch["pixel_values"], batch["vision"]))
    ids, mask = pad_rows(rows, side="right")
    expected = hf_logits(hf_model, ids, mask, pixels, grids)

    for row in range(2):
        length = len(rows[row])
        np.testing.assert_allclose(ours[row, :length], expected[row, :length], atol=MODEL_TOL, rtol=0)
    # The all-padding third row still yields finite logits.
    assert np.isfinite(ours).all()


def test_visual_matches_hf(tiny_vl_checkpoint):
    hf_model, _, model, config = tiny_vl_checkpoint
    pixels, grids = process_images(SIZES, seed=7)
    with torch.no_grad():
        expected = hf_model.model.visual(
            torch.as_tensor(pixels), grid_thw=torch.as_tensor(grids)
        ).pooler_output.numpy()
    layout = vision_layout(grids, config, 192)

    ours = _run_visual(model, pad_patches(pixels, 192), layout)[: len(expected)]

    scale = np.abs(expected).max()
    assert np.abs(ours - expected).max() <= VISION_RELATIVE_TOL * scale

    # Some image spans several windows, and attending over whole images in every block instead
    # gives other features, so the windowed blocks are really tested.
    windows = len(set(layout["window_segment_ids"][layout["window_segment_ids"] >= 0].tolist()))
    assert windows > len(grids)
    full_only = dict(layout, window_segment_ids=layout["image_segment_ids"])
    other = _run_visual(model, pad_patches(pixels, 192), full_only)[: len(expected)]
    assert np.abs(other - expected).max() > 1e-3 * scale


def test_visual_ignores_padding_patches(tiny_vl_checkpoint):
    _, _, model, config = tiny_vl_checkpoint
    pixels, grids = process_images(SIZES, seed=8)
    count = len(pixels) // 4

    exact = _run_visual(model, pixels, vision_layout(grids, config, len(pixels)))
    padded = _run_visual(model, pad_patches(pixels, 256), vision_layout(grids, config, 256))

    # Softmax sums over more (zero-weight) keys round differently, hence a relative tolerance.
    scale = np.abs(exact).max()
    np.testing.assert_allclose(padded[:count], exact, atol=VISION_RELATIVE_TOL * scale, rtol=0)


def test_padding_features_never_scattered(tiny_vl_checkpoint):
    _, _, model, config = tiny_vl_checkpoint
    pixels, grids = process_images(SIZES[2:], seed=9)
    # The prompt has one image token more than the image has features, so the extra token must
    # keep its embedding.
    ids = np.array([[1, *([IMAGE_ID] * 5), 2]], np.int32)
    mask = np.ones_like(ids)
    layout = vision_layout(grids, config, 32)

    embedded = np.asarray(nnx.jit(lambda m, *a: m.embed(*a))(model, ids, mask, pad_patches(pixels, 32), layout))

    token_embedding = np.asarray(model.model.embed_tokens.embedding[...])[IMAGE_ID]
    np.testing.assert_array_equal(embedded[0, 5], token_embedding)
    assert np.abs(embedded[0, 4] - token_embedding).max() > 1e-3


def test_params_have_hf_paths(tiny_vl_checkpoint):
    _, _, model, config = tiny_vl_checkpoint
    _, params = FunctionalModule.from_module(model)
    paths = {
        "/".join(str(getattr(entry, "key", entry)) for entry in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    }

    for expected in (
        "visual/patch_embed/proj/kernel",
        "visual/blocks/0/attn/qkv/kernel",
        "visual/blocks/0/attn/proj/bias",
        "visual/blocks/1/mlp/gate_proj/bias",
        "visual/blocks/0/norm1/scale",
        "visual/merger/ln_q/scale",
        "visual/merger/mlp/0/kernel",
        "visual/merger/mlp/2/bias",
        "model/embed_tokens/embedding",
        "model/layers/1/self_attn/q_proj/bias",
        "model/layers/0/post_attention_layernorm/scale",
        "model/norm/scale",
    ):
        assert expected in paths
    assert ("lm_head/kernel" in paths) != config.tie_word_embeddings
    assert sum(np.size(x) for x in jax.tree.leaves(params)) == config.num_parameters()


def test_remat_and_bfloat16_variants():
    # One case only, with random weights: the variants are compared with our float32 model.
    config = Qwen2_5_VLConfig.from_hf_dict(hf_config(TINY_VL_CASES[0]).to_dict())
    model = Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(0))
    pixels, grids = process_images(SIZES[:1], seed=10)
    ids, mask = pad_rows([prompt(grids, [2, 3], seed=10)], side="right")
    args = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(rope_index(ids, mask, [grids], config)),
            jnp.asarray(pad_patches(pixels, 64)), jax.tree.map(jnp.asarray, vision_layout(grids, config, 64)))

    def loss(m):
        return jnp.mean(jax.nn.logsumexp(m(*args), axis=-1))

    remat_model = Qwen2_5_VLForConditionalGeneration(dataclasses.replace(config, remat=True), rngs=nnx.Rngs(0))
    nnx.update(remat_model, nnx.state(model))
    grads = nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(model))
    remat_grads = nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(remat_model))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), grads, remat_grads)
    assert np.abs(np.asarray(grads["visual"]["blocks"][0]["attn"]["qkv"]["kernel"])).max() > 0

    bf16_model = Qwen2_5_VLForConditionalGeneration(dataclasses.replace(config, dtype="bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(bf16_model, nnx.state(model))
    expected = np.asarray(forward(model, *args))
    logits = np.asarray(forward(bf16_model, *args))
    assert logits.dtype == np.float32
    error = np.abs(logits - expected).max()
    # bfloat16 keeps 8 significant bits, so the error is at most a few percent of the logit scale.
    # A model that ignored `dtype` would match float32 to 1e-5.
    assert 1e-4 < error < 0.1 * np.abs(expected).max()
