"""Session fixtures: each tiny Qwen2 case saved with transformers and loaded with ours."""

import pytest

from merit_jax.models.qwen2 import load_hf_checkpoint

from .hf_reference import TINY_CASES, build_hf_model


@pytest.fixture(scope="session", params=TINY_CASES, ids=lambda case: case.name)
def tiny_checkpoint(request, tmp_path_factory):
    """(HF model, checkpoint directory, our model, our config) for each tiny case."""
    case = request.param
    hf_model = build_hf_model(case.hf_kwargs)
    directory = tmp_path_factory.mktemp(case.name)
    hf_model.save_pretrained(directory, safe_serialization=True)
    model, config = load_hf_checkpoint(directory)
    return hf_model, directory, model, config
