"""End-to-end run that starts from a Hugging Face Qwen2 checkpoint instead of a warm-up.

This is the path real-scale configs take: the tokenizer and θ0 come from the user's directory,
the init stage records a pointer, and every later stage loads θ0 from the safetensors files.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from merit_jax import data as data_lib
from tests.demo_runs import user_environment

ROOT = Path(__file__).resolve().parents[2]
TASKS = [
    "number_words_en", "number_words_fr", "unicode_category", "is_leap_year",
    "weekday_name", "reverse_word", "decimal_format", "uppercase_word",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    import torch
    import transformers

    directory = tmp_path_factory.mktemp("hf") / "tiny-qwen2"
    mixture = data_lib.builtin_mixture(examples_per_task=40, seed=1, task_names=TASKS)
    tokenizer = data_lib.train_tokenizer(
        data_lib.example_texts([example for task in mixture for example in task.examples]), vocab_size=400
    )
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    data_lib.save_tokenizer(tokenizer, tokenizer_dir)

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    for path in tokenizer_dir.iterdir():
        shutil.copy(path, directory / path.name)
    return directory


def test_pipeline_from_hf_checkpoint(hf_checkpoint, tmp_path):
    workdir = tmp_path / "workdir"
    command = [
        sys.executable, "-m", "merit_jax.main", "--config=configs/demo.py:quick", f"--workdir={workdir}",
        f"--config.model.checkpoint={hf_checkpoint}", "--config.init.mode=checkpoint",
        f"--config.data.builtin_tasks=({','.join(repr(name) for name in TASKS)},)",
        "--config.data.examples_per_task=40",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=user_environment())
    assert result.returncode == 0, result.stderr[-4000:]

    source = json.loads((workdir / "init" / "source.json").read_text())
    assert source == {"hf_checkpoint": str(hf_checkpoint)}
    assert not (workdir / "init" / "params").exists()

    report = json.loads((workdir / "eval" / "results.json").read_text())
    assert sorted(report["tasks"]) == sorted(TASKS)
    base = [report["results"]["base"][task]["loss"] for task in TASKS]
    joint = [report["results"]["joint-2ep"][task]["loss"] for task in TASKS]
    # A random tiny model is near log(vocab); two epochs of training must lower the loss.
    assert np.mean(joint) < np.mean(base)
    assert np.mean(base) == pytest.approx(np.log(400), rel=0.25)
