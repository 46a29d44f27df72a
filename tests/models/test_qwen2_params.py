"""Config handling, Hugging Face checkpoint import (with its error report) and export for Qwen2."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2 import (
    CheckpointMismatchError,
    Qwen2Config,
    export_hf_checkpoint,
    hf_state_dict_to_params,
    load_hf_checkpoint,
    params_to_hf_state_dict,
)

from .hf_reference import TINY_CASES, build_hf_model, forward, hf_logits, random_ids

TIED_KWARGS = TINY_CASES[0].hf_kwargs


def _write_checkpoint(directory, hf_config_dict, tensors):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config_dict, f)
    path = os.path.join(directory, "model.safetensors")
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def _hf_tensors(hf_model):
    return {name: tensor.detach().numpy().copy() for name, tensor in hf_model.state_dict().items()}


def _leaves_equal(a, b):
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves_with_path(b)
    assert [path for path, _ in flat_a] == [path for path, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


# ---- config ----


def test_config_round_trips_through_transformers():
    config = Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6, eos_token_id=(5, 6),
        pad_token_id=0, tie_word_embeddings=True,
    )
    hf_config = transformers.Qwen2Config(**config.to_hf_dict())

    assert hf_config.rope_parameters["rope_theta"] == 1e6
    assert hf_config.num_key_value_heads == 2
    assert hf_config.head_dim == 8
    assert Qwen2Config.from_hf_dict(hf_config.to_dict()) == config


def test_config_num_parameters_matches_hf():
    for case in TINY_CASES:
        hf_model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**case.hf_kwargs))
        config = Qwen2Config.from_hf_dict(hf_model.config.to_dict())
        assert config.num_parameters() == hf_model.num_parameters(), case.name


def test_config_reads_legacy_rope_theta():
    config = Qwen2Config.from_hf_dict(
        {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4, "rope_theta": 1e6,
         "rope_scaling": None, "num_key_value_heads": None}
    )
    assert config.rope_theta == 1e6
    assert config.num_key_value_heads == 4


def test_config_rejects_sliding_window():
    with pytest.raises(ValueError, match="use_sliding_window"):
        Qwen2Config.from_hf_dict({"model_type": "qwen2", "use_sliding_window": True})


def test_config_rejects_scaled_rope():
    with pytest.raises(ValueError, match="yarn"):
        Qwen2Config.from_hf_dict({"model_type": "qwen2", "rope_scaling": {"type": "yarn", "factor": 4.0}})


def test_config_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        Qwen2Config.from_pretrained_dir(tmp_path)


def test_config_rejects_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type='llama'"):
        Qwen2Config.from_pretrained_dir(tmp_path)


# ---- import ----


def test_import_maps_every_tensor(tiny_checkpoint):
    hf_model, _, model, _ = tiny_checkpoint
    _, params = FunctionalModule.from_module(model)

    reference = _hf_tensors(hf_model)
    exported = params_to_hf_state_dict(params)
    if hf_model.config.tie_word_embeddings:
        reference.pop("lm_head.weight", None)

    assert sorted(exported) == sorted(reference)
    for key, value in reference.items():
        assert np.array_equal(exported[key], value), key


def test_import_tied_checkpoint_with_lm_head_weight(tmp_path):
    hf_model = build_hf_model(TIED_KWARGS)
    tensors = _hf_tensors(hf_model)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    _write_checkpoint(tmp_path, hf_model.config.to_dict(), tensors)

    model, config = load_hf_checkpoint(tmp_path)

    assert config.tie_word_embeddings
    ids = random_ids(config.vocab_size, (2, 6))
    logits = np.asarray(forward(model, jnp.asarray(ids)))
    np.testing.assert_allclose(logits, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_import_sharded_checkpoint(tmp_path):
    hf_model = build_hf_model(TINY_CASES[1].hf_kwargs)
    hf_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()

    model, config = load_hf_checkpoint(tmp_path)

    ids = random_ids(config.vocab_size, (2, 6))
    logits = np.asarray(forward(model, jnp.asarray(ids)))
    np.testing.assert_allclose(logits, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_import_bfloat16_checkpoint_into_float32(tmp_path):
    hf_model = build_hf_model(TIED_KWARGS).to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)

    model, _ = load_hf_checkpoint(tmp_path)

    embedding = model.model.embed_tokens.embedding[...]
    assert embedding.dtype == jnp.float32
    expected = hf_model.model.embed_tokens.weight.detach().float().numpy()
    assert np.array_equal(np.asarray(embedding), expected)


def test_import_reports_extra_and_missing_keys(tmp_path):
    hf_model = build_hf_model(TIED_KWARGS)
    tensors = _hf_tensors(hf_model)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(4, np.float32)
    _write_checkpoint(tmp_path, hf_model.config.to_dict(), tensors)

    with pytest.raises(CheckpointMismatchError) as error:
        load_hf_checkpoint(tmp_path)

    message = str(error.value)
    assert "model.layers.0.self_attn.rotary_emb.inv_freq (model.safetensors)" in message
    assert "model.layers.1.mlp.up_proj.weight (64, 32)" in message


def test_import_reports_shape_mismatch_with_file(tmp_path):
    hf_model = build_hf_model(TIED_KWARGS)
    tensors = _hf_tensors(hf_model)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)
    tensors["model.norm.weight"] = np.ones(31, np.float32)
    _write_checkpoint(tmp_path, hf_model.config.to_dict(), tensors)

    with pytest.raises(CheckpointMismatchError) as error:
        load_hf_checkpoint(tmp_path)

    message = str(error.value)
    expected_k_proj = "checkpoint (32, 32), model expects (16, 32)"
    assert f"model.layers.0.self_attn.k_proj.weight in model.safetensors: {expected_k_proj}" in message
    assert "model.norm.weight in model.safetensors: checkpoint (31,), model expects (32,)" in message


def test_import_rejects_checkpoint_without_safetensors(tmp_path):
    hf_model = build_hf_model(TIED_KWARGS)
    hf_model.config.save_pretrained(tmp_path)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")

    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf_checkpoint(tmp_path)


def test_state_dict_conversion_reports_missing_key():
    hf_model = build_hf_model(TIED_KWARGS)
    tensors = _hf_tensors(hf_model)
    config = Qwen2Config.from_hf_dict(hf_model.config.to_dict())

    params = hf_state_dict_to_params(tensors, config)
    _leaves_equal(params, hf_state_dict_to_params(params_to_hf_state_dict(params), config))

    del tensors["model.norm.weight"]
    with pytest.raises(CheckpointMismatchError, match="model.norm.weight"):
        hf_state_dict_to_params(tensors, config)


# ---- export ----


def test_export_round_trips_exactly(tiny_checkpoint, tmp_path):
    hf_model, _, model, config = tiny_checkpoint
    _, params = FunctionalModule.from_module(model)
    export_dir = tmp_path / "exported"

    export_hf_checkpoint(params, config, export_dir)

    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(export_dir).eval()
    ids = random_ids(config.vocab_size, (2, 9), seed=7)
    np.testing.assert_allclose(hf_logits(reloaded, ids), hf_logits(hf_model, ids), atol=1e-6, rtol=0)

    reimported, reimported_config = load_hf_checkpoint(export_dir)
    assert reimported_config == config
    _leaves_equal(nnx.to_pure_dict(nnx.state(reimported)), params)


def test_export_casts_to_bfloat16(tmp_path):
    hf_model = build_hf_model(TIED_KWARGS)
    config = Qwen2Config.from_hf_dict(hf_model.config.to_dict())
    params = hf_state_dict_to_params(_hf_tensors(hf_model), config)

    export_hf_checkpoint(params, config, tmp_path / "bf16", dtype=jnp.bfloat16)

    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "bf16")
    assert reloaded.dtype == torch.bfloat16
    expected = torch.as_tensor(_hf_tensors(hf_model)["model.norm.weight"]).to(torch.bfloat16)
    assert torch.equal(reloaded.model.norm.weight.detach(), expected)


def test_export_rejects_non_empty_directory(tiny_checkpoint, tmp_path):
    _, _, model, config = tiny_checkpoint
    _, params = FunctionalModule.from_module(model)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")

    with pytest.raises(FileExistsError, match="not empty"):
        export_hf_checkpoint(params, config, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"

    # An existing empty directory is a valid target.
    (tmp_path / "empty").mkdir()
    export_hf_checkpoint(params, config, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").exists()


def test_export_failure_leaves_no_directory(tiny_checkpoint, tmp_path):
    _, _, model, config = tiny_checkpoint
    _, params = FunctionalModule.from_module(model)

    with pytest.raises(ValueError, match="int8"):
        export_hf_checkpoint(params, config, tmp_path / "out", dtype=jnp.int8)

    assert os.listdir(tmp_path) == []


def test_export_rejects_params_of_other_config(tiny_checkpoint, tmp_path):
    _, _, model, config = tiny_checkpoint
    _, params = FunctionalModule.from_module(model)
    deeper = dataclasses.replace(config, num_hidden_layers=config.num_hidden_layers + 1)

    with pytest.raises(CheckpointMismatchError, match="missing"):
        export_hf_checkpoint(params, deeper, tmp_path / "out")
