"""MERIT on Qwen2.5-VL-3B-Instruct with a Vision-FLAN mixture, as in the paper's 3B study.

Run (the paths are yours; nothing is downloaded):
    python -m merit_jax.main --config=configs/qwen3b.py --workdir=workdirs/qwen3b \
        --config.model.checkpoint=/data/Qwen2.5-VL-3B-Instruct \
        --config.data.annotation_path=/data/vision-flan/annotation_191-task_1k.json \
        --config.data.image_root=/data/vision-flan/images_191task_1k

The settings are those of `merit_jax.pipeline.defaults.vision_flan_config`: 136 tasks, only the
language-model decoder trained, AdamW at 1e-5, 128 sequences per step, images of at most
784 x 784 pixels. The results table lists held-out loss and exact match per task; the paper's
benchmarks are not run here.
"""

import ml_collections

from merit_jax.pipeline.defaults import parse_arg, vision_flan_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(arg)
    if preset:
        raise ValueError(f"unknown config preset {preset!r}; this config takes only branch=... or stage=...")
    return vision_flan_config("3b", options)
