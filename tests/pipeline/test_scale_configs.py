"""Tests of the real-scale configs: abstract 3B and 7B builds and their trainable subsets.

The models are built with `nnx.eval_shape`, so no weights are allocated.
"""

import importlib.util
from pathlib import Path

import pytest

from merit_jax.core import tree as tree_lib
from merit_jax.pipeline.context import Context
from merit_jax.pipeline.errors import ConfigError
from merit_jax.pipeline.runner import validate_config

ROOT = Path(__file__).resolve().parents[2]

# Total parameters of Qwen2.5-VL-3B-Instruct and Qwen2.5-VL-7B-Instruct as their model cards
# round them (3.75B and 8.29B), and the exact counts those roundings come from.
PUBLISHED = {"qwen3b": (3.75e9, 3_754_622_976), "qwen7b": (8.29e9, 8_292_166_656)}


def _config(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def scale_context(request, tmp_path_factory):
    """A context of one scale config with its abstract parameters built once."""
    ctx = Context(_config(request.param), tmp_path_factory.mktemp(request.param) / "workdir")
    ctx.abstract_params
    return request.param, ctx


def test_abstract_build_matches_published_size(scale_context):
    name, ctx = scale_context
    rounded, exact = PUBLISHED[name]
    total = tree_lib.tree_size(ctx.abstract_params)
    assert total == exact
    assert round(total / 1e7) * 1e7 == pytest.approx(rounded)
    assert ctx.model_config.num_parameters() == total
    assert not ctx.workdir.exists()


def test_only_language_model_is_trainable(scale_context):
    _, ctx = scale_context
    trainable, frozen = tree_lib.partition(ctx.abstract_params, ctx.trainable)
    assert set(frozen) == {"visual"}
    assert "visual" not in trainable
    vision_size = tree_lib.tree_size(frozen)
    assert vision_size == ctx.model_config.vision_config.num_parameters()
    assert tree_lib.tree_size(trainable) == tree_lib.tree_size(ctx.abstract_params) - vision_size


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_scale_configs_need_checkpoint_then_validate(name):
    config = _config(name)
    with pytest.raises(ConfigError, match="config.model.checkpoint is empty"):
        validate_config(config, num_tasks=136)
    config.model.checkpoint = "/data/checkpoint"
    validate_config(config, num_tasks=136)
    assert config.train.batch_size == 128
    assert config.train.learning_rate == 1e-5
    assert config.data.images.max_pixels == 784 * 784
