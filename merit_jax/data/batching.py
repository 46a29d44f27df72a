"""Batches of fixed shapes, so that jit compiles one program per bucket length.

Every batch has exactly `batch_size` rows and a length taken from `bucket_lengths`. Rows
are right-padded for training and evaluation and left-padded for generation. Rows that
only fill up a partial batch have an all-zero attention mask and loss mask.
"""

from collections.abc import Sequence

import numpy as np

from merit_jax.data.tokenizer import EncodedExample

Batch = dict[str, np.ndarray]


def bucket_length(length: int, bucket_lengths: Sequence[int]) -> int:
    """Return the smallest bucket length that fits `length` tokens."""
    for bucket in sorted(bucket_lengths):
        if length <= bucket:
            return bucket
    raise ValueError(
        f"a sequence of {length} tokens exceeds the largest bucket length {max(bucket_lengths)}; "
        "add a larger bucket or encode with a smaller max_length"
    )


def power_of_two_buckets(max_length: int, min_length: int = 32) -> tuple[int, ...]:
    """Return bucket lengths min_length, 2*min_length, ... up to and including `max_length`."""
    buckets = []
    length = min_length
    while length < max_length:
        buckets.append(length)
        length *= 2
    buckets.append(max_length)
    return tuple(buckets)


def make_epoch_batches(
    encoded: Sequence[EncodedExample],
    *,
    batch_size: int,
    bucket_lengths: Sequence[int],
    seed: int,
    epoch: int,
    pad_id: int = 0,
) -> list[Batch]:
    """Batch every example exactly once for one training epoch.

    A generator seeded with (seed, epoch) shuffles the examples, groups them by bucket
    length, cuts each group into batches (the last one filled with padding rows) and
    shuffles the order of the batches.
    """
    _check_options(batch_size, bucket_lengths)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(encoded))

    by_bucket: dict[int, list[int]] = {}
    for index in order:
        bucket = bucket_length(len(encoded[index].input_ids), bucket_lengths)
        by_bucket.setdefault(bucket, []).append(int(index))

    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        for start in range(0, len(members), batch_size):
            rows = [encoded[i] for i in members[start : start + batch_size]]
            batches.append(_training_batch(rows, batch_size, bucket, pad_id))

    return [batches[i] for i in rng.permutation(len(batches))]


def make_eval_batches(
    encoded: Sequence[EncodedExample], *, batch_size: int, bucket_lengths: Sequence[int], pad_id: int = 0
) -> list[Batch]:
    """Batch the examples in their given order, with the layout of `make_epoch_batches`.

    Row r of batch b is example b * batch_size + r. Each batch takes the bucket of its
    longest example, and padding rows fill up the last one.
    """
    _check_options(batch_size, bucket_lengths)
    batches = []
    for start in range(0, len(encoded), batch_size):
        rows = list(encoded[start : start + batch_size])
        bucket = bucket_length(max(len(row.input_ids) for row in rows), bucket_lengths)
        batches.append(_training_batch(rows, batch_size, bucket, pad_id))
    return batches


def make_prompt_batches(
    prompts: Sequence[np.ndarray], *, batch_size: int, bucket_lengths: Sequence[int], pad_id: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batch prompts for greedy decoding, left-padded so that every prompt ends in the last column.

    Returns (ids int32[B, L], mask int32[B, L], example_indices int32[B]) per batch, where
    example_indices gives each row's position in `prompts` and -1 marks padding rows.
    Prompts are grouped by bucket length, keeping their order within a bucket.
    """
    _check_options(batch_size, bucket_lengths)
    by_bucket: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty; every prompt needs at least the generation prompt")
        by_bucket.setdefault(bucket_length(len(prompt), bucket_lengths), []).append(index)

    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        for start in range(0, len(members), batch_size):
            ids = np.full((batch_size, bucket), pad_id, dtype=np.int32)
            mask = np.zeros((batch_size, bucket), dtype=np.int32)
            indices = np.full(batch_size, -1, dtype=np.int32)
            for row, index in enumerate(members[start : start + batch_size]):
                prompt = np.asarray(prompts[index], dtype=np.int32)
                ids[row, bucket - len(prompt) :] = prompt
                mask[row, bucket - len(prompt) :] = 1
                indices[row] = index
            batches.append((ids, mask, indices))
    return batches


def _training_batch(rows: Sequence[EncodedExample], batch_size: int, length: int, pad_id: int) -> Batch:
    input_ids = np.full((batch_size, length), pad_id, dtype=np.int32)
    targets = np.full((batch_size, length), pad_id, dtype=np.int32)
    loss_mask = np.zeros((batch_size, length), dtype=np.float32)
    attention_mask = np.zeros((batch_size, length), dtype=np.int32)

    # Position j predicts token j + 1, so the mask of a target is the mask of the next token.
    for row, example in enumerate(rows):
        count = len(example.input_ids)
        input_ids[row, :count] = example.input_ids
        attention_mask[row, :count] = 1
        targets[row, : count - 1] = example.input_ids[1:]
        loss_mask[row, : count - 1] = example.loss_mask[1:]

    return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask, "attention_mask": attention_mask}


def _check_options(batch_size: int, bucket_lengths: Sequence[int]) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not bucket_lengths or min(bucket_lengths) < 2:
        raise ValueError(f"bucket_lengths must be non-empty with every length >= 2, got {list(bucket_lengths)}")
