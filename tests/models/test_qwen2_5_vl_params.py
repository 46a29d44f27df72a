"""Qwen2.5-VL Hugging Face checkpoint import (naming, sharding, error report) and export."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx
from safetensors import safe_open

from merit_jax.models.functional import FunctionalModule
from merit_jax.models.qwen2_5_vl import (
    CheckpointMismatchError,
    Qwen2_5_VLConfig,
    export_hf_checkpoint,
    hf_state_dict_to_params,
    load_hf_checkpoint,
    params_to_hf_state_dict,
    rope_index,
    vision_layout,
)

from .vl_reference import (
    TINY_VL_CASES,
    build_hf_model,
    forward,
    hf_logits,
    pad_patches,
    pad_rows,
    process_images,
    prompt,
    tiny_vl_checkpoint,  # noqa: F401 (pytest fixture)
)

WINDOWS = TINY_VL_CASES[0]


def _disk_tensors(directory) -> dict[str, np.ndarray]:
    with safe_open(os.path.join(directory, "model.safetensors"), framework="np") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def _write_checkpoint(directory, hf_config_dict, tensors):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config_dict, f)
    safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def _leaves_equal(a, b):
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves_with_path(b)
    assert [path for path, _ in flat_a] == [path for path, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


def _image_inputs(config, seed=0):
    pixels, grids = process_images([(112, 112)], seed=seed)
    ids, mask = pad_rows([prompt(grids, [3, 2], seed=seed)], side="right")
    ours = (ids, mask, rope_index(ids, mask, [grids], config), pad_patches(pixels, 64),
            vision_layout(grids, config, 64))
    return ours, (ids, mask, pixels, grids)


def test_import_maps_every_disk_tensor(tiny_vl_checkpoint):
    _, directory, model, config = tiny_vl_checkpoint
    _, params = FunctionalModule.from_module(model)

    on_disk = _disk_tensors(directory)
    exported = params_to_hf_state_dict(params, config)

    assert "visual.patch_embed.proj.weight" in on_disk
    assert on_disk["visual.patch_embed.proj.weight"].ndim == 5
    assert sorted(exported) == sorted(on_disk)
    for key, value in on_disk.items():
        assert np.array_equal(exported[key], value), key


def test_import_accepts_in_memory_names(tiny_vl_checkpoint):
    hf_model, _, model, config = tiny_vl_checkpoint
    # transformers 5 module names: model.visual.*, model.language_model.*.
    state_dict = {key: value.detach().numpy() for key, value in hf_model.state_dict().items()}
    assert any(key.startswith("model.language_model.") for key in state_dict)

    params = hf_state_dict_to_params(state_dict, config)

    _leaves_equal(params, nnx.to_pure_dict(nnx.state(model)))


def test_import_places_params_on_target_sharding(tiny_vl_checkpoint):
    _, directory, model, _ = tiny_vl_checkpoint
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    requested = []

    def sharding(path):
        requested.append(path)
        if path.endswith("kernel"):
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
        return None

    sharded, _ = load_hf_checkpoint(directory, sharding=sharding)

    assert "visual/blocks/0/attn/qkv/kernel" in requested
    assert "visual/patch_embed/proj/kernel" in requested
    qkv = sharded.visual.blocks[0].attn.qkv.kernel[...]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "data")
    _leaves_equal(nnx.to_pure_dict(nnx.state(sharded)), nnx.to_pure_dict(nnx.state(model)))


# Runs in a fresh process because the CPU device count is fixed when JAX starts.
_SHARDED_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from flax import nnx
    from merit_jax.models.qwen2_5_vl import load_hf_checkpoint

    assert len(jax.devices()) == 4, jax.devices()
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    P = jax.sharding.PartitionSpec

    def sharding(path):
        # Kernels split both axes (so transposed reads slice both), vectors split their only axis.
        spec = P("data", "model") if path.endswith(("kernel", "embedding")) else P("data")
        return jax.sharding.NamedSharding(mesh, spec)

    sharded, _ = load_hf_checkpoint(sys.argv[1], sharding=sharding)
    plain, _ = load_hf_checkpoint(sys.argv[1])
    sharded_leaves = nnx.to_flat_state(nnx.state(sharded))
    plain_leaves = dict(nnx.to_flat_state(nnx.state(plain)))
    for path, variable in sharded_leaves:
        value = variable.get_value()
        assert len(value.sharding.device_set) == 4, path
        assert np.array_equal(np.asarray(value), np.asarray(plain_leaves[path].get_value())), path
    print("checked", len(sharded_leaves))
    """
)


def test_import_sharded_over_four_devices_equals_unsharded(tmp_path):
    build_hf_model(WINDOWS).save_pretrained(tmp_path, safe_serialization=True)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")

    result = subprocess.run(
        [sys.executable, "-c", _SHARDED_LOAD_SCRIPT, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "checked" in result.stdout


def test_import_bfloat16_checkpoint_into_float32(tmp_path):
    hf_model = build_hf_model(WINDOWS).to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)

    model, _ = load_hf_checkpoint(tmp_path)

    kernel = model.visual.patch_embed.proj.kernel[...]
    assert kernel.dtype == jnp.float32
    expected = hf_model.model.visual.patch_embed.proj.weight.detach().float().numpy()
    assert np.array_equal(np.asarray(kernel), expected.reshape(expected.shape[0], -1).T)


def test_import_reports_every_problem_with_file(tmp_path, tiny_vl_checkpoint):
    _, directory, _, _ = tiny_vl_checkpoint
    tensors = _disk_tensors(directory)
    del tensors["visual.blocks.1.mlp.up_proj.weight"]
    del tensors["model.layers.0.self_attn.q_proj.bias"]
    tensors["visual.blocks.0.attn.rotary.inv_freq"] = np.zeros(4, np.float32)
    tensors["visual.merger.mlp.0.bias"] = np.zeros(7, np.float32)
    with open(os.path.join(directory, "config.json")) as f:
        _write_checkpoint(tmp_path, json.load(f), tensors)

    with pytest.raises(CheckpointMismatchError) as error:
        load_hf_checkpoint(tmp_path)

    message = str(error.value)
    config = Qwen2_5_VLConfig.from_pretrained_dir(directory)
    vision = config.vision_config
    merged = vision.hidden_size * vision.merge_unit
    assert "visual.blocks.0.attn.rotary.inv_freq (model.safetensors)" in message
    assert f"visual.blocks.1.mlp.up_proj.weight ({vision.intermediate_size}, {vision.hidden_size})" in message
    assert f"model.layers.0.self_attn.q_proj.bias ({config.hidden_size},)" in message
    assert f"visual.merger.mlp.0.bias in model.safetensors: checkpoint (7,), model expects ({merged},)" in message


def test_export_round_trips_through_transformers(tiny_vl_checkpoint, tmp_path):
    hf_model, _, model, config = tiny_vl_checkpoint
    _, params = FunctionalModule.from_module(model)
    export_dir = tmp_path / "exported"

    export_hf_checkpoint(params, config, export_dir)

    reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(export_dir).eval()
    ours_inputs, hf_inputs = _image_inputs(config, seed=11)
    np.testing.assert_allclose(hf_logits(reloaded, *hf_inputs), hf_logits(hf_model, *hf_inputs), atol=1e-6, rtol=0)

    reimported, reimported_config = load_hf_checkpoint(export_dir)
    assert reimported_config == config
    _leaves_equal(nnx.to_pure_dict(nnx.state(reimported)), params)
    np.testing.assert_array_equal(
        np.asarray(forward(reimported, *ours_inputs)), np.asarray(forward(model, *ours_inputs))
    )


def test_export_rejects_non_empty_directory(tiny_vl_checkpoint, tmp_path):
    _, _, model, config = tiny_vl_checkpoint
    _, params = FunctionalModule.from_module(model)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")

    with pytest.raises(FileExistsError, match="not empty"):
        export_hf_checkpoint(params, config, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"

    with pytest.raises(ValueError, match="int8"):
        export_hf_checkpoint(params, config, tmp_path / "out", dtype=jnp.int8)
    assert sorted(os.listdir(tmp_path)) == ["taken"]
