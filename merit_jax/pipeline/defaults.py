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

    # Placement; none of it enters stage hashes, so jobs with other layouts share a workdir.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # devices on the data (batch and FSDP) axis; -1 takes all the rest
    config.mesh.model = 1  # devices on the model axis (tensor parallelism through the rules)
    config.mesh.rules = ()  # (regex on parameter paths, partition spec) pairs; the rest is FSDP
    config.mesh.parallel_branches = 1  # branches trained at once on disjoint groups of devices

    config.distributed = ml_collections.ConfigDict()
    config.distributed.initialize = False  # call jax.distributed.initialize (several hosts)
    config.distributed.coordinator_address = ""  # host:port; empty lets JAX read the cluster's
    config.distributed.num_processes = 0
    config.distributed.process_id = -1

    # What this invocation does: "all" stages, only "prepare" (data to split), only "train",
    # or "merge" (merges and evaluation). `branch` trains that one branch run (name or index).
    config.job = ml_collections.ConfigDict()
    config.job.stage = "all"
    config.job.branch = ""
    config.job.wait_for_branches = 0  # seconds a merge waits for missing branches; 0 fails at once
    return config


JOB_OPTIONS = ("branch", "stage")


def parse_arg(arg: str | None) -> tuple[str, dict[str, str]]:
    """Split a config argument such as "quick,branch=3" into the preset ("quick") and job options."""
    preset, options = "", {}
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            if preset:
                raise ValueError(f"config argument {arg!r} names two presets, {preset!r} and {item!r}")
            preset = item
            continue
        key, value = (part.strip() for part in item.split("=", 1))
        if key not in JOB_OPTIONS:
            raise ValueError(f"unknown config option {key!r} in {arg!r}; use one of {JOB_OPTIONS}")
        options[key] = value
    return preset, options


def apply_job_options(config: ml_collections.ConfigDict, options: dict[str, str]) -> ml_collections.ConfigDict:
    """Set `config.job` from parsed options: branch=k trains one branch, stage=... picks the stages."""
    if "branch" in options:
        config.job.branch = options["branch"]
        config.job.stage = "train"
    if "stage" in options:
        config.job.stage = options["stage"]
    return config


def vision_flan_config(size: str, options: dict[str, str] | None = None) -> ml_collections.ConfigDict:
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
    return apply_job_options(config, options or {})
