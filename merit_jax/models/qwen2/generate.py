"""Greedy decoding for `Qwen2ForCausalLM` with a KV cache held as explicit arrays.

One jitted program per (model structure, shapes, max_new_tokens, eos ids, pad id): a prefill over
the left-padded prompt, then a `lax.while_loop` that emits one token per step and exits once
every row has produced an eos token.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2.modeling import init_cache


def greedy_generate(
    fm: FunctionalModule,
    params: dict,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
) -> jax.Array:
    """Generate max_new_tokens tokens per row by argmax, as HF generate(do_sample=False) does.

    prompt_ids: int32 (B, Lp), left-padded as transformers expects (right padding gives the
    same tokens here). prompt_mask: (B, Lp), 1 for real tokens. Returns int32 (B, max_new_tokens)
    in which every position after a row's first eos token is pad_token_id.

    NOTE: a row whose prompt_mask is all zeros has no context and yields arbitrary tokens.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if prompt_ids.shape != prompt_mask.shape:
        raise ValueError(
            f"prompt_ids has shape {prompt_ids.shape} but prompt_mask has {prompt_mask.shape}"
        )
    if eos_token_id is None or pad_token_id is None:
        # A Hugging Face config.json may omit them; generation_config.json or the tokenizer has them.
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
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    return generate_fn(params, prompt_ids, jnp.asarray(prompt_mask, jnp.int32))


class _Template:
    """Shape/dtype template of a module's state, hashed by its tree structure and leaf specs."""

    def __init__(self, state):
        self.state = state
        leaves, treedef = jax.tree.flatten(state)
        self.key = (treedef, tuple((leaf.shape, leaf.dtype) for leaf in leaves))

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Template) and self.key == other.key


def _abstract_template(fm: FunctionalModule) -> _Template:
    # Abstract leaves keep the compiled-function cache from holding the model's initial weights.
    return _Template(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fm.state_template))


@functools.lru_cache(maxsize=16)
def _compiled_generate(
    graphdef, template: _Template, max_new_tokens: int, eos_ids: tuple[int, ...], pad_id: int
):
    fm = FunctionalModule(graphdef, template.state)
    eos = jnp.asarray(eos_ids, jnp.int32)

    def generate(params, prompt_ids, prompt_mask):
        batch, prompt_length = prompt_ids.shape
        config = fm.bind(params).config

        # The cache has a slot for the prompt and every generated token. The loop feeds the last
        # generated token once more, which fills the final slot and is otherwise unused.
        cache = init_cache(config, batch, prompt_length + max_new_tokens)
        logits, cache = fm.apply(params, prompt_ids, prompt_mask, None, cache)
        # The first token follows each row's last real prompt token (column Lp - 1 when left-padded).
        last_real = prompt_length - 1 - jnp.argmax(prompt_mask[:, ::-1], axis=1)
        first_logits = jnp.take_along_axis(logits, last_real[:, None, None], axis=1)[:, 0]
        first_token = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)

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
            logits, cache = fm.apply(params, token[:, None], step_mask, None, cache)
            next_token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
            return step + 1, next_token, cache, tokens, done

        state = (jnp.zeros((), jnp.int32), first_token, cache, tokens, done)
        _, _, _, tokens, _ = jax.lax.while_loop(not_finished, decode_step, state)
        return tokens

    return jax.jit(generate)
