"""Greedy decoding for `Qwen2_5_VLForConditionalGeneration`: prefill with images, then text-only steps.

A generated token's three M-RoPE positions are all one more than the previous token's, starting
at the prompt's maximum position + 1 in each row, as in transformers' generate. One jitted
program per (model structure, shapes, max_new_tokens, eos ids, pad id).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2.generate import _abstract_template, _Template
from merit_jax.models.qwen2_5_vl.modeling import init_cache


def greedy_generate(
    fm: FunctionalModule,
    params: dict,
    prompt_ids,
    prompt_mask,
    positions,
    pixel_values=None,
    vision: dict | None = None,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
) -> jax.Array:
    """Generate max_new_tokens tokens per row by argmax, as HF generate(do_sample=False) does.

    prompt_ids, prompt_mask: int32 (B, Lp), left-padded as transformers expects (right padding
    gives the same tokens here). positions: int32 (3, B, Lp) from `inputs.rope_index`.
    pixel_values and vision: the padded patches of the prompts' images and their
    `inputs.vision_layout`, or None for text-only prompts. Returns int32 (B, max_new_tokens) in
    which every position after a row's first eos token is pad_token_id.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    prompt_shape = np.shape(prompt_ids)
    if np.shape(prompt_mask) != prompt_shape:
        raise ValueError(f"prompt_ids has shape {prompt_shape} but prompt_mask has {np.shape(prompt_mask)}")
    if np.shape(positions) != (3, *prompt_shape):
        raise ValueError(
            f"positions has shape {np.shape(positions)}; expected (3, *prompt_ids.shape) = "
            f"{(3, *prompt_shape)}, as inputs.rope_index returns"
        )
    if (pixel_values is None) != (vision is None):
        raise ValueError("pass pixel_values and vision together (both None for text-only prompts)")
    if eos_token_id is None or pad_token_id is None:
        raise ValueError(
            f"eos_token_id={eos_token_id} and pad_token_id={pad_token_id} must both be set; "
            "take them from the tokenizer or generation_config.json"
        )
    if isinstance(eos_token_id, (int, np.integer)):
        eos_ids = (int(eos_token_id),)
    else:
        eos_ids = tuple(int(i) for i in eos_token_id)
    if not eos_ids:
        raise ValueError("eos_token_id is an empty sequence. Pass at least one end-of-sequence id")

    generate_fn = _compiled_generate(
        fm.graphdef, _abstract_template(fm), int(max_new_tokens), eos_ids, int(pad_token_id)
    )
    return generate_fn(
        params,
        jnp.asarray(prompt_ids, jnp.int32),
        jnp.asarray(prompt_mask, jnp.int32),
        jnp.asarray(positions, jnp.int32),
        None if pixel_values is None else jnp.asarray(pixel_values),
        None if vision is None else jax.tree.map(jnp.asarray, vision),
    )


@functools.lru_cache(maxsize=16)
def _compiled_generate(
    graphdef, template: _Template, max_new_tokens: int, eos_ids: tuple[int, ...], pad_id: int
):
    fm = FunctionalModule(graphdef, template.state)
    eos = jnp.asarray(eos_ids, jnp.int32)

    def generate(params, prompt_ids, prompt_mask, positions, pixel_values, vision):
        batch, prompt_length = prompt_ids.shape
        config = fm.bind(params).config

        # The cache has a slot for the prompt and every generated token. The loop feeds the last
        # generated token once more, which fills the final slot and is otherwise unused.
        cache = init_cache(config, batch, prompt_length + max_new_tokens)
        logits, cache = fm.apply(params, prompt_ids, prompt_mask, positions, pixel_values, vision, cache)
        last_real = prompt_length - 1 - jnp.argmax(prompt_mask[:, ::-1], axis=1)
        first_logits = jnp.take_along_axis(logits, last_real[:, None, None], axis=1)[:, 0]
        first_token = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)

        # Generated tokens continue after the largest position of any real prompt token, which
        # for a prompt ending in an image is larger than its token count.
        real = prompt_mask[None] > 0
        first_position = jnp.max(jnp.where(real, positions, -1), axis=(0, 2)) + 1

        tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
        done = jnp.zeros((batch,), bool)
        step_mask = jnp.ones((batch, 1), jnp.int32)

        def not_finished(state):
            step, _, _, _, done = state
            return (step < max_new_tokens) & ~jnp.all(done)

        def decode_step(state):
            step, token, cache, tokens, done = state
            token = jnp.where(done, pad_id, token)
            tokens = tokens.at[:, step].set(token)
            done = done | jnp.isin(token, eos)
            step_positions = jnp.broadcast_to((first_position + step)[None, :, None], (3, batch, 1))
            logits, cache = fm.apply(params, token[:, None], step_mask, step_positions, None, None, cache)
            next_token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
            return step + 1, next_token, cache, tokens, done

        state = (jnp.zeros((), jnp.int32), first_token, cache, tokens, done)
        _, _, _, tokens, _ = jax.lax.while_loop(not_finished, decode_step, state)
        return tokens

    return jax.jit(generate)
