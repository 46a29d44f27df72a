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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "full", "quick"):
        raise ValueError(f"unknown config argument {arg!r}; use 'quick' or nothing")
    quick = arg == "quick"
    config = ml_collections.ConfigDict()
    config.name = "demo (quick)" if quick else "demo"
    config.seed = 0

    # Built-in mixture: templated tasks over records shipped with Python and PyPI packages.
    config.data = ml_collections.ConfigDict()
    config.data.source = "builtin"  # or "jsonl" with data.jsonl_path
    config.data.jsonl_path = ""
    config.data.builtin_tasks = ()  # a subset of built-in task names; empty means all of them
    config.data.examples_per_task = 64 if quick else 560
    config.data.min_examples_per_task = 20
    config.data.warmup_size = 12 if quick else 160
    config.data.heldout_size = 8 if quick else 40
    config.data.calibration_size = 200
    config.data.max_length = 192
    # Few distinct shapes keep compilation short; more shapes waste less padding.
    config.data.bucket_lengths = (48, 96, 192) if quick else (32, 48, 64, 96, 128, 192)

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.vocab_size = 1024 if quick else 2048

    # A small Qwen2 trained from scratch; set model.checkpoint to a local Hugging Face
    # directory to start from a real model instead.
    config.model = ml_collections.ConfigDict()
    config.model.checkpoint = ""
    config.model.scratch = ml_collections.ConfigDict()
    config.model.scratch.hidden_size = 64 if quick else 128
    config.model.scratch.intermediate_size = 192 if quick else 384
    config.model.scratch.num_hidden_layers = 2 if quick else 4
    config.model.scratch.num_attention_heads = 4
    config.model.scratch.num_key_value_heads = 2
    config.model.scratch.max_position_embeddings = 512
    config.model.scratch.rope_theta = 10000.0
    config.model.scratch.tie_word_embeddings = True

    # Which parameters gradients, training and merging act on (regexes on leaf paths).
    config.trainable = ml_collections.ConfigDict()
    config.trainable.include = (".*",)
    config.trainable.exclude = ()

    config.train = _train_config(learning_rate=1e-3, batch_size=32)
    if quick:
        # Frequent checkpoints, so that even the short quick-mode branches can be resumed.
        config.train.checkpoint_every = 4

    # θ0: a joint warm-up on the warm-up examples, which the MERIT mixture never contains.
    config.init = ml_collections.ConfigDict()
    config.init.mode = "warmup"  # or "checkpoint": θ0 is model.checkpoint as is
    config.init.epochs = 4 if quick else 10
    config.init.train = _train_config(learning_rate=3e-3, batch_size=32)

    config.gradients = ml_collections.ConfigDict()
    config.gradients.stride = 5
    config.gradients.block_size = 1 << 20  # gradient entries per block of the Gram matrix

    config.conflicts = ml_collections.ConfigDict()
    config.conflicts.pca_mode = "rows_colcentered"

    config.split = ml_collections.ConfigDict()
    config.split.weight = "samples"  # or "tokens"
    config.split.dims = (1, 2, 3)  # MERIT-1D/2D/3D: K = 2, 4, 8 branches

    config.baselines = ml_collections.ConfigDict()
    config.baselines.joint_epochs = (1, 2)
    config.baselines.random_dims = (3,)  # Random-8

    config.merge = ml_collections.ConfigDict()
    config.merge.weights = "tokens"  # or "uniform"

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 64
    config.eval.max_new_tokens_buckets = (16, 32, 64, 128)
    return config


def _train_config(*, learning_rate: float, batch_size: int) -> ml_collections.ConfigDict:
    train = ml_collections.ConfigDict()
    train.optimizer = "adamw"
    train.learning_rate = learning_rate
    train.warmup_fraction = 0.03
    train.decay = "cosine"
    train.adam_b1 = 0.9
    train.adam_b2 = 0.999
    train.adam_eps = 1e-8
    train.weight_decay = 0.0
    train.clip_norm = 1.0
    train.batch_size = batch_size  # sequences per optimizer step
    train.micro_batches = 1  # gradient-accumulation slices per step
    train.log_every = 10
    train.checkpoint_every = 25  # steps between resumable checkpoints
    train.snapshots = 3  # intermediate parameter copies per run, for trajectory plots
    return train
