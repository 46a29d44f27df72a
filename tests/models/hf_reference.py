"""Tiny random transformers Qwen2 models and input helpers, the reference for the model tests.

Norm scales and biases are perturbed away from their ones/zeros initialization so that a wrong
mapping of those tensors changes the logits.
"""

import dataclasses

import numpy as np
import torch
import transformers
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TinyCase:
    name: str
    hf_kwargs: dict


TINY_CASES = (
    # Tied head, 2 query heads per key/value head.
    TinyCase(
        "tied_gqa2",
        dict(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            initializer_range=0.1,
        ),
    ),
    # Untied head, 4 query heads per key/value head, head_dim not hidden_size // heads.
    TinyCase(
        "untied_gqa4",
        dict(
            vocab_size=200,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            tie_word_embeddings=False,
            rope_theta=1000000.0,
            rms_norm_eps=1e-5,
            initializer_range=0.1,
        ),
    ),
)


def build_hf_model(hf_kwargs: dict, seed: int = 0) -> transformers.Qwen2ForCausalLM:
    """Build a random transformers Qwen2 model in eval mode with every tensor away from its init."""
    torch.manual_seed(seed)
    hf_config = transformers.Qwen2Config(**hf_kwargs)
    model = transformers.Qwen2ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.2 * torch.randn_like(param))
    return model


def random_ids(vocab_size: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, size=shape, dtype=np.int32)


def padding_mask(lengths: list[int], total: int, side: str) -> np.ndarray:
    """Return an int32 (B, total) mask with lengths[b] ones, the padding on `side`."""
    mask = np.zeros((len(lengths), total), np.int32)
    for row, length in enumerate(lengths):
        if side == "right":
            mask[row, :length] = 1
        else:
            mask[row, total - length :] = 1
    return mask


def hf_logits(hf_model, ids, mask=None, positions=None) -> np.ndarray:
    with torch.no_grad():
        output = hf_model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=None if mask is None else torch.as_tensor(mask, dtype=torch.long),
            position_ids=None if positions is None else torch.as_tensor(positions, dtype=torch.long),
        )
    return output.logits.float().numpy()


@nnx.jit
def forward(model, ids, mask=None, positions=None):
    """Run our model under jit: eager NNX dispatches every op separately and is much slower."""
    return model(ids, mask, positions)
