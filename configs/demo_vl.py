"""MERIT end to end on built-in image tasks, with a tiny Qwen2.5-VL-architecture model trained here.

Run (full; wall time and results in docs/demo.md):
    python -m merit_jax.main --config=configs/demo_vl.py --workdir=workdirs/demo_vl
Run (quick, a few minutes; what the tests use):
    python -m merit_jax.main --config=configs/demo_vl.py:quick --workdir=workdirs/demo_vl_quick

The tasks ask about the handwritten digit images that ship with scikit-learn (recognition,
parity, comparison and sums of two digits, number words in six languages, JSON answers). θ0 is
a joint warm-up of the whole model on examples kept apart from the mixture. As in the paper's
training policy, MERIT, its branches and the baselines then train only the language model: the
vision tower and the projector stay frozen at θ0. The results table goes to WORKDIR/eval/results.md.
"""

import ml_collections

from merit_jax.pipeline.defaults import apply_job_options, default_config, parse_arg, train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(arg)
    if preset not in ("", "full", "quick"):
        raise ValueError(f"unknown config preset {preset!r}; use 'quick' or nothing (plus branch=... or stage=...)")
    quick = preset == "quick"
    config = default_config()
    config.name = "demo_vl (quick)" if quick else "demo_vl"

    config.data.source = "digits"
    config.data.examples_per_task = 48 if quick else 400
    config.data.min_examples_per_task = 20
    config.data.warmup_size = 8 if quick else 120
    config.data.heldout_size = 8 if quick else 40
    config.data.max_length = 128
    config.data.bucket_lengths = (64, 128)
    # 56 x 56 images are 16 patches (4 image tokens); up to 3 images per example.
    config.data.images.image_size = 56
    config.data.images.min_pixels = 56 * 56
    config.data.images.max_pixels = 56 * 56
    config.data.images.max_patches = 16 * 3 * (16 if quick else 32)

    config.tokenizer.vocab_size = 512 if quick else 1024

    config.model.family = "qwen2_5_vl"
    config.model.scratch.hidden_size = 64 if quick else 128
    config.model.scratch.intermediate_size = 192 if quick else 384
    config.model.scratch.num_hidden_layers = 2 if quick else 4
    config.model.scratch.num_attention_heads = 4
    config.model.scratch.num_key_value_heads = 2
    config.model.scratch.max_position_embeddings = 512
    config.model.scratch.rope_theta = 10000.0
    config.model.scratch.tie_word_embeddings = True
    # head_dim / 2 rotary frequencies split into temporal, height and width parts.
    config.model.scratch.mrope_section = (2, 3, 3) if quick else (4, 6, 6)
    config.model.vision.depth = 2
    config.model.vision.hidden_size = 32 if quick else 64
    config.model.vision.intermediate_size = 64 if quick else 128
    config.model.vision.num_heads = 2 if quick else 4
    # Windows of 28 pixels split each 56-pixel image into 4 windows; block 1 attends fully.
    config.model.vision.window_size = 28
    config.model.vision.fullatt_block_indexes = (1,)

    # The language model only: the vision tower and projector (paths under visual/) stay at θ0.
    config.trainable.include = ("^model/", "^lm_head/")
    config.trainable.exclude = ()

    config.train = train_config(learning_rate=1e-3, batch_size=16 if quick else 32)
    config.train.checkpoint_every = 4 if quick else 25
    config.train.snapshots = 3

    config.init.mode = "warmup"
    config.init.epochs = 4 if quick else 10
    config.init.train = train_config(learning_rate=3e-3, batch_size=16 if quick else 32)
    config.init.train.checkpoint_every = 25

    config.eval.batch_size = 32
    config.eval.max_new_tokens_buckets = (16, 32, 64)
    return apply_job_options(config, options)
