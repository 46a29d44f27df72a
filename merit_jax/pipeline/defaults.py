"""The full default config; experiment files in `configs/` start from it and override fields.

Defaults are the paper-scale choices (AdamW at peak 1e-5 with 3% warm-up and cosine decay, 128
sequences per step, gradient stride 5, cosine PCA, sample-weighted splits, token-weighted merges).
Every field exists in every config, so stage hashes and `--config.x.y=...` overrides always work.
"""

import ml_collections


def train_config(*, learning_rate: float = 1e-5, batch_size: int = 128) -> ml_collections.ConfigDict:
    """Optimizer and loop settings of one kind of run (θ0 warm-up, or joint and branch runs)."""
    train = ml_collections.ConfigDict()
    train.optimizer = "adamw"  # or "sgd"
    train.learning_rate = learning_rate  # peak
    train.warmup_fraction = 0.03  # of the run's own steps, linear from 0
    train.decay = "cosine"  # to 0 over the run's steps, or "constant"
    train.adam_b1 = 0.9
    train.adam_b2 = 0.999
    train.adam_eps = 1e-8
    train.weight_decay = 0.0
    train.clip_norm = 1.0  # global gradient norm; 0 disables clipping
    train.batch_size = batch_size  # sequences per optimizer step
    train.micro_batches = 1  # gradient-accumulation slices per step (text models only)
    train.log_every = 10  # steps between metrics.jsonl records
    train.checkpoint_every = 200  # steps between resumable checkpoints
    train.snapshots = 0  # intermediate parameter copies per run, for trajectory plots
    return train


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "merit"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # builtin (text tasks shipped with the package), jsonl (your text mixture), digits (built-in
    # image tasks), vision_flan (annotation_path) or llava (annotation_paths, one task each).
    config.data.source = "builtin"
    config.data.jsonl_path = ""
    config.data.annotation_path = ""
    config.data.annotation_paths = ()
    config.data.image_root = ""
    config.data.builtin_tasks = ()  # a subset of the built-in tasks; empty means all of them
    # Read mixtures only: keep this many of the tasks with >= min_examples_per_task examples,
    # drawn with task_seed from the name-sorted list (0 keeps them all).
    config.data.num_tasks = 0
    config.data.task_seed = 42
    config.data.examples_per_task = 560  # built-in mixtures only
    config.data.min_examples_per_task = 50
    config.data.warmup_size = 0  # examples per task kept apart for the θ0 warm-up
    config.data.heldout_size = 50  # examples per task kept for evaluation
    config.data.calibration_size = 200  # examples per task for the gradient at θ0 (a subset of train)
    config.data.max_length = 4096  # tokens, image tokens included; longer examples lose their end
    config.data.bucket_lengths = (256, 512, 1024, 2048, 4096)  # padded sequence lengths
    config.data.images = ml_collections.ConfigDict()
    config.data.images.min_pixels = 56 * 56
    config.data.images.max_pixels = 784 * 784
    config.data.images.max_patches = 16384  # image patches per batch (a static shape)
    config.data.images.image_size = 56  # side of the built-in digit images, in pixels

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.vocab_size = 2048  # when a tokenizer is trained (models from scratch)

    config.model = ml_collections.ConfigDict()
    config.model.family = "qwen2"  # or "qwen2_5_vl"
    config.model.checkpoint = ""  # a local Hugging Face directory
    config.model.published = ""  # "3b" or "7b": a Qwen2.5-VL architecture without weights
    config.model.dtype = "float32"  # compute dtype; parameters and optimizer state stay float32
    config.model.remat = False  # recompute each decoder layer in the backward pass to save memory
    config.model.scratch = ml_collections.ConfigDict()  # decoder of a model trained from scratch
    config.model.vision = ml_collections.ConfigDict()  # vision tower of a VL model from scratch

    # Which parameters gradients, training and merging act on (regexes on leaf paths).
    config.trainable = ml_collections.ConfigDict()
    config.trainable.include = (".*",)
    config.trainable.exclude = ()

    config.train = train_config()

    config.init = ml_collections.ConfigDict()
    config.init.mode = "checkpoint"  # θ0 = model.checkpoint, or "warmup" on the warm-up examples
    config.init.epochs = 1
    config.init.train = train_config()

    config.gradients = ml_collections.ConfigDict()
    config.gradients.stride = 5
    config.gradients.block_size = 1 << 20  # gradient entries per block of the Gram matrix

    config.conflicts = ml_collections.ConfigDict()
    config.conflicts.pca_mode = "rows_colcentered"  # or "gram_eig", "double_centered"

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
    config.eval.max_new_tokens_buckets = (16, 32, 64, 128, 256)
    return config


def vision_flan_config(size: str) -> ml_collections.ConfigDict:
    """MERIT on a published Qwen2.5-VL size ("3b" or "7b") with a Vision-FLAN mixture, as the paper runs it.

    θ0 is the user's checkpoint. Of the tasks with at least 50 examples, 136 are drawn with seed
    42. Only the language-model decoder trains (vision tower and projector frozen), at peak
    learning rate 1e-5 with 3% warm-up and cosine decay, 128 sequences per step, images of at
    most 784 x 784 pixels and sequences of at most 4096 tokens.
    """
    config = default_config()
    config.name = f"qwen2.5-vl-{size}"

    config.data.source = "vision_flan"
    config.data.num_tasks = 136
    config.data.task_seed = 42
    config.data.min_examples_per_task = 50
    config.data.heldout_size = 20
    config.data.images.max_pixels = 784 * 784
    # 128 sequences per step as 16 micro-batches of 8, each with up to 8 images of 784 x 784
    # pixels (3136 patches each).
    config.data.images.max_patches = 8 * 3136

    config.model.family = "qwen2_5_vl"
    config.model.published = size  # the architecture, for shape-only builds without a checkpoint
    config.model.dtype = "bfloat16"
    config.model.remat = True

    config.trainable.include = ("^model/", "^lm_head/")
    config.trainable.exclude = ()

    config.train.micro_batches = 16
    config.init.mode = "checkpoint"
    return config
