"""Tests for fixed-shape batching: coverage per epoch, shapes, determinism, targets and masks."""

import numpy as np
import pytest

from merit_jax.data import (
    EncodedExample,
    bucket_length,
    encode_example,
    encode_prompt,
    make_epoch_batches,
    make_eval_batches,
    make_prompt_batches,
    power_of_two_buckets,
    supervised_token_count,
)

BUCKETS = (8, 16, 32)


def _synthetic(count=53, seed=0):
    """Examples whose first token is a unique id (>= 100) and whose answer is the last third."""
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        length = int(rng.integers(3, 33))
        ids = rng.integers(3, 100, size=length).astype(np.int32)
        ids[0] = 100 + index
        mask = np.zeros(length, dtype=bool)
        mask[length - max(1, length // 3) :] = True
        examples.append(EncodedExample(ids, mask, truncated=False))
    return examples


def _rows(batches):
    """Yield (first token, real length, batch, row) for every non-padding row."""
    for batch in batches:
        for row in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][row].sum())
            if length:
                yield int(batch["input_ids"][row, 0]), length, batch, row


def test_bucket_length_picks_smallest_fit():
    assert bucket_length(1, BUCKETS) == 8
    assert bucket_length(8, BUCKETS) == 8
    assert bucket_length(9, BUCKETS) == 16
    assert bucket_length(32, (32, 8, 16)) == 32


def test_bucket_length_too_long_raises():
    with pytest.raises(ValueError, match="33 tokens exceeds the largest bucket length 32"):
        bucket_length(33, BUCKETS)


def test_power_of_two_buckets_ends_at_max_length():
    assert power_of_two_buckets(256, 32) == (32, 64, 128, 256)
    assert power_of_two_buckets(100, 32) == (32, 64, 100)


def test_epoch_uses_every_example_once():
    examples = _synthetic()
    batches = make_epoch_batches(examples, batch_size=4, bucket_lengths=BUCKETS, seed=0, epoch=0)
    seen = [first for first, _, _, _ in _rows(batches)]
    assert sorted(seen) == [100 + i for i in range(len(examples))]


def test_epoch_shapes_come_from_bucket_set():
    batches = make_epoch_batches(_synthetic(), batch_size=4, bucket_lengths=BUCKETS, seed=0, epoch=0)
    shapes = {batch["input_ids"].shape for batch in batches}
    assert shapes <= {(4, length) for length in BUCKETS}
    assert len(shapes) > 1
    for batch in batches:
        assert batch["input_ids"].dtype == np.int32
        assert batch["targets"].dtype == np.int32
        assert batch["loss_mask"].dtype == np.float32
        assert batch["attention_mask"].dtype == np.int32
        assert {array.shape for array in batch.values()} == {batch["input_ids"].shape}


def test_each_row_sits_in_its_smallest_bucket():
    batches = make_epoch_batches(_synthetic(), batch_size=4, bucket_lengths=BUCKETS, seed=0, epoch=0)
    for _, length, batch, _ in _rows(batches):
        assert batch["input_ids"].shape[1] == bucket_length(length, BUCKETS)


def test_partial_batches_padded_with_empty_rows():
    examples = _synthetic()
    batch_size = 4
    batches = make_epoch_batches(examples, batch_size=batch_size, bucket_lengths=BUCKETS, seed=0, epoch=0)
    padding_rows = sum(int((batch["attention_mask"].sum(axis=1) == 0).sum()) for batch in batches)
    assert len(batches) * batch_size == len(examples) + padding_rows
    # At most one partial batch per bucket.
    assert padding_rows < batch_size * len(BUCKETS)
    for batch in batches:
        empty = batch["attention_mask"].sum(axis=1) == 0
        assert np.all(batch["loss_mask"][empty] == 0)
        assert np.all(batch["input_ids"][empty] == 0)


def test_same_seed_and_epoch_give_same_batches():
    examples = _synthetic()
    first = make_epoch_batches(examples, batch_size=4, bucket_lengths=BUCKETS, seed=5, epoch=2)
    second = make_epoch_batches(examples, batch_size=4, bucket_lengths=BUCKETS, seed=5, epoch=2)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for key in a:
            assert np.array_equal(a[key], b[key])


def _row_order(examples, epoch):
    batches = make_epoch_batches(examples, batch_size=4, bucket_lengths=BUCKETS, seed=5, epoch=epoch)
    return [first for first, *_ in _rows(batches)]


def test_other_epoch_gives_other_order():
    examples = _synthetic()
    assert _row_order(examples, 0) != _row_order(examples, 1)
    assert sorted(_row_order(examples, 0)) == sorted(_row_order(examples, 1))


def test_targets_are_next_tokens():
    examples = _synthetic()
    by_id = {int(example.input_ids[0]): example for example in examples}
    batches = make_epoch_batches(examples, batch_size=4, bucket_lengths=BUCKETS, seed=0, epoch=0, pad_id=0)
    for first, length, batch, row in _rows(batches):
        example = by_id[first]
        assert np.array_equal(batch["input_ids"][row, :length], example.input_ids)
        assert np.array_equal(batch["targets"][row, : length - 1], example.input_ids[1:])
        assert np.all(batch["targets"][row, length - 1 :] == 0)
        assert np.array_equal(batch["loss_mask"][row, : length - 1], example.loss_mask[1:])
        assert np.all(batch["loss_mask"][row, length - 1 :] == 0)
        assert np.all(batch["attention_mask"][row, length:] == 0)


def test_loss_mask_sum_equals_supervised_tokens():
    examples = _synthetic()
    batches = make_epoch_batches(examples, batch_size=4, bucket_lengths=BUCKETS, seed=0, epoch=0)
    expected = sum(supervised_token_count(example) for example in examples)
    assert sum(float(batch["loss_mask"].sum()) for batch in batches) == expected


def test_real_examples_keep_token_counts(chat_tokenizer, small_mixture):
    examples = [example for task in small_mixture[:10] for example in task.examples]
    encoded = [encode_example(chat_tokenizer, example, max_length=256) for example in examples]
    buckets = power_of_two_buckets(256)
    batches = make_epoch_batches(encoded, batch_size=8, bucket_lengths=buckets, seed=0, epoch=0,
                                 pad_id=chat_tokenizer.pad_token_id)
    assert sum(float(batch["loss_mask"].sum()) for batch in batches) == sum(map(supervised_token_count, encoded))
    # Every supervised target of a real example ends with <|im_end|>.
    end_of_turn = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    targets = np.concatenate([batch["targets"][batch["loss_mask"] > 0] for batch in batches])
    assert int((targets == end_of_turn).sum()) == len(encoded)


def test_too_long_example_raises():
    long = EncodedExample(np.arange(40, dtype=np.int32), np.ones(40, dtype=bool), truncated=False)
    with pytest.raises(ValueError, match="40 tokens exceeds the largest bucket length 32"):
        make_epoch_batches(_synthetic() + [long], batch_size=4, bucket_lengths=BUCKETS, seed=0, epoch=0)


def test_empty_input_gives_no_batches():
    assert make_epoch_batches([], batch_size=4, bucket_lengths=BUCKETS, seed=0, epoch=0) == []
    assert make_eval_batches([], batch_size=4, bucket_lengths=BUCKETS) == []


def test_eval_batches_keep_order():
    examples = _synthetic(count=10)
    batches = make_eval_batches(examples, batch_size=4, bucket_lengths=BUCKETS)
    assert len(batches) == 3
    seen = [first for first, *_ in _rows(batches)]
    assert seen == [100 + i for i in range(10)]
    for index, batch in enumerate(batches):
        rows = examples[index * 4 : index * 4 + 4]
        assert batch["input_ids"].shape == (4, bucket_length(max(len(r.input_ids) for r in rows), BUCKETS))
    assert int((batches[-1]["attention_mask"].sum(axis=1) == 0).sum()) == 2


def test_prompt_batches_left_pad_and_index_rows():
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 100, size=int(rng.integers(1, 33))).astype(np.int32) for _ in range(11)]
    batches = make_prompt_batches(prompts, batch_size=4, bucket_lengths=BUCKETS, pad_id=7)
    seen = []
    for ids, mask, indices in batches:
        assert ids.shape == mask.shape
        assert ids.shape[0] == 4
        assert ids.shape[1] in BUCKETS
        assert indices.dtype == np.int32
        for row, index in enumerate(indices):
            if index < 0:
                assert mask[row].sum() == 0
                assert np.all(ids[row] == 7)
                continue
            prompt = prompts[index]
            assert ids.shape[1] == bucket_length(len(prompt), BUCKETS)
            assert np.array_equal(ids[row, -len(prompt) :], prompt)
            assert mask[row].sum() == len(prompt)
            assert mask[row, -1] == 1
            assert np.all(ids[row, : ids.shape[1] - len(prompt)] == 7)
            seen.append(int(index))
    assert sorted(seen) == list(range(11))


def test_prompt_batches_from_real_prompts(chat_tokenizer, small_mixture):
    examples = small_mixture[0].examples
    prompts = [encode_prompt(chat_tokenizer, example) for example in examples]
    batches = make_prompt_batches(prompts, batch_size=5, bucket_lengths=(16, 32, 64),
                                  pad_id=chat_tokenizer.pad_token_id)
    for ids, mask, indices in batches:
        for row, index in enumerate(indices):
            if index >= 0:
                text = chat_tokenizer.decode(ids[row][mask[row] == 1], skip_special_tokens=False)
                assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("options", [{"batch_size": 0, "bucket_lengths": BUCKETS}, {"batch_size": 4, "bucket_lengths": ()}])
def test_invalid_options_raise(options):
    with pytest.raises(ValueError):
        make_eval_batches(_synthetic(), **options)
