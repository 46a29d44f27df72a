"""MERIT end to end on the built-in offline instruction mixture, with a small Qwen2 trained here.

Run (full demo; wall time and results in docs/demo.md):
    python -m merit_jax.main --config=configs/demo.py --workdir=workdirs/demo
Run (quick, a few minutes; what the tests use):
    python -m merit_jax.main --config=configs/demo.py:quick --workdir=workdirs/quick

It trains a byte-level BPE tokenizer and prepares θ0 by a joint warm-up on examples kept apart
from the mixture. It then estimates one gradient per task and splits the tasks by PCA of their
cosine matrix into 2, 4 and 8 groups. One branch per group is trained and the branches are
merged; the baselines Joint (1 ep), Joint (2 ep) and Random-8 are trained too. The results
table is written to WORKDIR/eval/results.md.
"""

import ml_collections

from merit_jax.pipeline.defaults import apply_job_options, default_config, parse_arg, train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(arg)
    if preset not in ("", "full", "quick"):
        raise ValueError(f"unknown config preset {preset!r}; use 'quick' or nothing (plus branch=... or stage=...)")
    quick = preset == "quick"
    config = default_config()
    config.name = "demo (quick)" if quick else "demo"

    # Built-in mixture: templated tasks over records shipped with Python and PyPI packages.
    config.data.source = "builtin"
    config.data.examples_per_task = 64 if quick else 560
    config.data.min_examples_per_task = 20
    config.data.warmup_size = 12 if quick else 160
    config.data.heldout_size = 8 if quick else 40
    config.data.max_length = 192
    # Few distinct shapes keep compilation short; more shapes waste less padding.
    config.data.bucket_lengths = (48, 96, 192) if quick else (32, 48, 64, 96, 128, 192)

    config.tokenizer.vocab_size = 1024 if quick else 2048

    # A small Qwen2 trained from scratch; set model.checkpoint to a local Hugging Face
    # directory to start from a real model instead.
    config.model.scratch.hidden_size = 64 if quick else 128
    config.model.scratch.intermediate_size = 192 if quick else 384
    config.model.scratch.num_hidden_layers = 2 if quick else 4
    config.model.scratch.num_attention_heads = 4
    config.model.scratch.num_key_value_heads = 2
    config.model.scratch.max_position_embeddings = 512
    config.model.scratch.rope_theta = 10000.0
    config.model.scratch.tie_word_embeddings = True

    config.train = train_config(learning_rate=1e-3, batch_size=32)
    config.train.checkpoint_every = 4 if quick else 25  # quick branches are only a few steps long
    config.train.snapshots = 3

    # θ0: a joint warm-up on the warm-up examples, which the MERIT mixture never contains.
    config.init.mode = "warmup"
    config.init.epochs = 4 if quick else 10
    config.init.train = train_config(learning_rate=3e-3, batch_size=32)
    config.init.train.checkpoint_every = 25

    config.eval.max_new_tokens_buckets = (16, 32, 64, 128)
    return apply_job_options(config, options)
