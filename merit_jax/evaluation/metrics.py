"""Per-task evaluation metrics: held-out loss per response token and exact-match accuracy.

The loss is token-weighted over the whole held-out set (Σ loss_sum / Σ token_count, never a mean
of batch means). Exact match compares the greedy decoding, with special tokens removed and
surrounding whitespace stripped, to the reference answer stripped the same way.
"""

import dataclasses
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LossResult:
    loss_sum: float
    token_count: float

    @property
    def loss(self) -> float:
        """Mean cross-entropy per supervised token (nats)."""
        return self.loss_sum / self.token_count if self.token_count else float("nan")


def heldout_loss(loss_fn: Callable, params, batches: Sequence[dict]) -> LossResult:
    """Sum `loss_fn(params, batch) -> (loss_sum, token_count)` over batches, in float64 on the host."""
    loss_sums, token_counts = [], []
    for batch in batches:
        loss_sum, token_count = loss_fn(params, batch)
        loss_sums.append(loss_sum)
        token_counts.append(token_count)
    return LossResult(
        float(np.sum(np.asarray(loss_sums, dtype=np.float64))),
        float(np.sum(np.asarray(token_counts, dtype=np.float64))),
    )


def normalize_answer(text: str) -> str:
    """Strip surrounding whitespace; inner whitespace, case and punctuation are significant."""
    return text.strip()


@dataclasses.dataclass(frozen=True)
class ExactMatchResult:
    correct: int
    total: int
    predictions: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> ExactMatchResult:
    """Count predictions equal to their reference after `normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    correct = sum(
        normalize_answer(prediction) == normalize_answer(reference)
        for prediction, reference in zip(predictions, references)
    )
    return ExactMatchResult(int(correct), len(references), tuple(predictions))


def generate_answers(
    generate_fn: Callable,
    params,
    prompt_batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    decode: Callable[[np.ndarray], str],
    num_prompts: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy-decode every prompt and return the decoded answers in prompt order.

    `prompt_batches` holds `(ids, mask, example_indices)` triples with left-padded prompts;
    rows with index −1 are padding. `generate_fn(params, ids, mask, max_new_tokens)` returns the
    new token ids (B, max_new_tokens), padded after the end-of-sequence token.
    """
    answers: list[str | None] = [None] * num_prompts
    for ids, mask, indices in prompt_batches:
        tokens = np.asarray(generate_fn(params, ids, mask, max_new_tokens))
        for row, index in enumerate(indices):
            if index >= 0:
                answers[index] = decode(tokens[row])
    missing = [index for index, answer in enumerate(answers) if answer is None]
    if missing:
        raise ValueError(f"prompt batches left {len(missing)} prompts undecoded, e.g. {missing[:5]}")
    return answers
