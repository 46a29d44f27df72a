"""MERIT on the paper's 7B build (Qwen2.5-VL vision encoder with Qwen2.5-7B) with a Vision-FLAN mixture.

Run (the paths are yours; nothing is downloaded):
    python -m merit_jax.main --config=configs/qwen7b.py --workdir=workdirs/qwen7b \
        --config.model.checkpoint=/data/Qwen2.5-VL-7B-Instruct \
        --config.data.annotation_path=/data/vision-flan/annotation_191-task_1k.json \
        --config.data.image_root=/data/vision-flan/images_191task_1k

The architecture is Qwen2.5-VL-7B-Instruct's. The settings are those of
`merit_jax.pipeline.defaults.vision_flan_config`; the paper's 7B study used 176 task units of
its own mixture and MERIT-2D (K = 4), so pass `--config.split.dims=(2,)` to run only that.
"""

import ml_collections

from merit_jax.pipeline.defaults import parse_arg, vision_flan_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(arg)
    if preset:
        raise ValueError(f"unknown config preset {preset!r}; this config takes only branch=... or stage=...")
    return vision_flan_config("7b", options)
