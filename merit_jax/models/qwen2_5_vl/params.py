"""Mapping between Hugging Face Qwen2.5-VL safetensors checkpoints and the NNX parameters, both ways.

Names on disk are those of the released checkpoints, which transformers 5.25 also writes:
`visual.*`, `model.*` (decoder) and `lm_head.weight`. Import also accepts the in-memory names of
transformers 5 (`model.visual.*`, `model.language_model.*`). Import streams one tensor at a time
and can place each on a target sharding, and export writes one tensor at a time.
"""

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from safetensors import safe_open

from merit_jax.models.qwen2.params import (
    SAFETENSORS_FILE,
    CheckpointMismatchError,
    _flatten,
    _safetensors_files,
    _shape_differences,
    _unflatten,
    _write_safetensors,
)
from merit_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from merit_jax.models.qwen2_5_vl.modeling import Qwen2_5_VLForConditionalGeneration

Path = tuple[str | int, ...]
# Maps a parameter path such as "model/layers/0/self_attn/q_proj/kernel" to its target sharding,
# or to None for the default device.
ShardingFn = Callable[[str], jax.sharding.Sharding | None]

# (pattern on the on-disk name, NNX leaf name, layout). First match wins. Layouts: "same" copies,
# "transpose" turns a torch Linear weight (out, in) into a kernel (in, out), and "patch" flattens
# the Conv3d weight (hidden, C, T, P, P) to a kernel (C*T*P*P, hidden).
_KEY_RULES = (
    (re.compile(r"visual\.patch_embed\.proj\.weight"), "kernel", "patch"),
    (re.compile(r"model\.embed_tokens\.weight"), "embedding", "same"),
    (re.compile(r".*(norm|norm1|norm2|ln_q)\.weight"), "scale", "same"),
    (re.compile(r".*\.weight"), "kernel", "transpose"),
    (re.compile(r".*\.bias"), "bias", "same"),
)
# transformers 5 module names that the released checkpoints store under another prefix.
_IN_MEMORY_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def hf_key_to_path(key: str) -> tuple[Path, str] | None:
    """Map a Hugging Face tensor name to (NNX path, layout), or None if no rule applies."""
    for prefix, disk_prefix in _IN_MEMORY_PREFIXES:
        if key.startswith(prefix):
            key = disk_prefix + key[len(prefix) :]
    *modules, _ = key.split(".")
    if not modules:
        return None
    for pattern, leaf, layout in _KEY_RULES:
        if pattern.fullmatch(key):
            path = tuple(int(part) if part.isdigit() else part for part in modules)
            return path + (leaf,), layout
    return None


def path_to_hf_key(path: Path) -> tuple[str, str]:
    """Map an NNX parameter path to (on-disk Hugging Face tensor name, layout)."""
    *modules, leaf = path
    key = ".".join(str(part) for part in modules) + (".bias" if leaf == "bias" else ".weight")
    mapping = hf_key_to_path(key)
    if mapping is None or mapping[0] != tuple(path):
        raise ValueError(f"parameter {'/'.join(map(str, path))} has no Hugging Face tensor name")
    return key, mapping[1]


def _hf_shape(shape: tuple, layout: str, config: Qwen2_5_VLConfig) -> tuple:
    if layout == "transpose":
        return tuple(shape[::-1])
    if layout == "patch":
        vision = config.vision_config
        patch = (vision.in_channels, vision.temporal_patch_size, vision.patch_size, vision.patch_size)
        return (shape[1],) + patch
    return tuple(shape)


def _to_ours(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "transpose":
        return array.T
    if layout == "patch":
        return array.reshape(array.shape[0], -1).T
    return array


def expected_param_shapes(config: Qwen2_5_VLConfig) -> dict[Path, jax.ShapeDtypeStruct]:
    """Return each parameter path of the model with its shape, allocating nothing."""
    abstract = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(0)))
    return {path: variable.get_value() for path, variable in nnx.to_flat_state(nnx.state(abstract))}


def hf_state_dict_to_params(
    state_dict: Mapping[str, np.ndarray], config: Qwen2_5_VLConfig, *, sharding: ShardingFn | None = None
) -> dict:
    """Convert an in-memory Hugging Face state dict (either naming) to the model's pure parameter dict.

    Raises CheckpointMismatchError listing every unmapped key, missing key and shape mismatch.
    """
    entries = []
    for key, value in state_dict.items():
        host = np.asarray(value)
        entries.append((key, "state_dict", host.shape, lambda host=host: host, lambda index, host=host: host[index]))
    return _convert_entries(entries, config, source="state_dict", sharding=sharding)


def params_to_hf_state_dict(params: dict, config: Qwen2_5_VLConfig, *, dtype=None) -> dict[str, np.ndarray]:
    """Convert the pure parameter dict to on-disk Hugging Face names and layouts as numpy arrays."""
    return {key: np.asarray(produce()) for key, _, _, produce in _hf_tensors(params, config, dtype)}


def load_hf_checkpoint(
    directory: str | os.PathLike, *, dtype=None, param_dtype=None, sharding: ShardingFn | None = None
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig]:
    """Load a Hugging Face Qwen2.5-VL checkpoint directory (config.json + safetensors) as an NNX model.

    dtype sets the compute dtype and param_dtype the stored one (both default to float32,
    whatever the checkpoint stores). sharding(path) gives each parameter's target sharding (None:
    the default device); a sharded parameter is read from disk one shard slice at a time.
    """
    directory = os.fspath(directory)
    overrides = {}
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    config = Qwen2_5_VLConfig.from_pretrained_dir(directory, **overrides)

    files = _safetensors_files(directory)
    logging.info("Loading Qwen2.5-VL checkpoint %s from %d safetensors file(s)", directory, len(files))
    params = _convert_entries(_stream_entries(directory, files), config, source=directory, sharding=sharding)

    abstract = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state), config


def export_hf_checkpoint(
    params: dict, config: Qwen2_5_VLConfig, directory: str | os.PathLike, *, dtype=None
) -> None:
    """Write config.json and model.safetensors that `Qwen2_5_VLForConditionalGeneration.from_pretrained` loads.

    The files are written into a temporary sibling directory that is renamed to `directory`, so an
    interrupted export leaves no partial checkpoint. dtype casts the tensors (default: as stored).
    Raises FileExistsError if `directory` exists and is not empty.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise FileExistsError(
            f"export directory {directory} already exists and is not empty; "
            "choose a new directory or remove the old checkpoint first"
        )
    expected = {path: value.shape for path, value in expected_param_shapes(config).items()}
    actual = {path: np.shape(value) for path, value in _flatten(params).items()}
    if actual != expected:
        raise CheckpointMismatchError(
            "params do not match the model described by config: "
            f"missing {sorted(map(str, expected.keys() - actual.keys()))}, "
            f"unexpected {sorted(map(str, actual.keys() - expected.keys()))}, "
            f"shape mismatches {_shape_differences(actual, expected)}"
        )

    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        tensors = list(_hf_tensors(params, config, dtype))
        storage_dtype = {entry[2] for entry in tensors}
        hf_config = config.to_hf_dict()
        # transformers 5.25's from_pretrained loads the weights in this dtype by default.
        hf_config["dtype"] = storage_dtype.pop() if len(storage_dtype) == 1 else "float32"
        with open(os.path.join(tmp_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
        _write_safetensors(os.path.join(tmp_dir, SAFETENSORS_FILE), tensors)
        os.rename(tmp_dir, directory)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logging.info("Exported %d tensors to %s", len(tensors), directory)


def _stream_entries(directory: str, files: list[str]) -> Iterator[tuple]:
    """Yield (key, file name, shape, read, read_slice) per tensor without reading any data yet.

    The readers return host numpy arrays: safetensors' numpy reader has no bfloat16, so tensors are
    read as JAX arrays pinned to the CPU backend and viewed as numpy (bfloat16 via ml_dtypes).
    """
    cpu = jax.local_devices(backend="cpu")[0]
    for name in files:
        with safe_open(os.path.join(directory, name), framework="flax") as f:
            for key in f.keys():
                tensor_slice = f.get_slice(key)

                def read(f=f, key=key):
                    with jax.default_device(cpu):
                        return np.asarray(f.get_tensor(key))

                def read_slice(index, tensor_slice=tensor_slice):
                    with jax.default_device(cpu):
                        return np.asarray(tensor_slice[index])

                yield key, name, tuple(tensor_slice.get_shape()), read, read_slice


def _place(read, read_slice, layout: str, shape: tuple, dtype, sharding) -> jax.Array:
    """Build one parameter on its sharding (or the default device), reading only what each shard needs."""
    if sharding is None:
        return jnp.asarray(_to_ours(read(), layout).astype(dtype))
    if layout == "patch":
        # The flattening mixes axes, so this small tensor is read whole.
        whole = _to_ours(read(), layout).astype(dtype)
        return jax.make_array_from_callback(shape, sharding, lambda index: whole[index])

    def read_shard(index):
        hf_index = tuple(index[::-1]) if layout == "transpose" else tuple(index)
        return _to_ours(read_slice(hf_index), layout).astype(dtype)

    return jax.make_array_from_callback(shape, sharding, read_shard)


def _convert_entries(
    entries: Iterable[tuple], config: Qwen2_5_VLConfig, *, source: str, sharding: ShardingFn | None
) -> dict:
    """Map checkpoint tensors onto the model's paths, gathering all problems before raising."""
    expected = expected_param_shapes(config)
    param_dtype = jnp.dtype(config.param_dtype)
    loaded: dict[Path, jax.Array] = {}
    seen_in: dict[Path, str] = {}
    unmapped, mismatched, duplicated = [], [], []

    for key, file_name, shape, read, read_slice in entries:
        mapping = hf_key_to_path(key)
        path, layout = mapping if mapping is not None else (None, "same")

        # With tied embeddings the head is the embedding matrix, so a stored lm_head.weight
        # (usually a copy of it) is only checked for its shape.
        if key == "lm_head.weight" and config.tie_word_embeddings:
            embedding_shape = expected[("model", "embed_tokens", "embedding")].shape
            if shape != embedding_shape:
                mismatched.append(_mismatch(key, file_name, shape, embedding_shape))
            continue
        if path not in expected:
            unmapped.append(f"{key} ({file_name})")
            continue
        if path in seen_in:
            duplicated.append(f"{key} in {seen_in[path]} and {file_name}")
            continue
        seen_in[path] = file_name

        hf_shape = _hf_shape(expected[path].shape, layout, config)
        if shape != hf_shape:
            mismatched.append(_mismatch(key, file_name, shape, hf_shape))
            continue
        target = None if sharding is None else sharding("/".join(map(str, path)))
        loaded[path] = _place(read, read_slice, layout, expected[path].shape, param_dtype, target)

    missing = [path for path in expected if path not in seen_in]
    if unmapped or missing or mismatched or duplicated:
        missing_keys = [_describe_path(path, expected, config) for path in missing]
        lines = [f"checkpoint {source} does not match the Qwen2.5-VL model described by its config:"]
        for title, items in (
            ("checkpoint keys with no model parameter", unmapped),
            ("model parameters missing from the checkpoint", missing_keys),
            ("shape mismatches", mismatched),
            ("keys stored twice", duplicated),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        lines.append(
            "Check that config.json describes these weights: the decoder's num_hidden_layers, "
            "hidden_size, intermediate_size, head counts, vocab_size and tie_word_embeddings, and "
            "vision_config's depth, hidden_size, intermediate_size, patch sizes and out_hidden_size."
        )
        raise CheckpointMismatchError("\n".join(lines))

    return _unflatten(loaded)


def _mismatch(key: str, file_name: str, shape: tuple, expected_shape: tuple) -> str:
    return f"{key} in {file_name}: checkpoint {shape}, model expects {expected_shape}"


def _describe_path(path: Path, expected: dict, config: Qwen2_5_VLConfig) -> str:
    key, layout = path_to_hf_key(path)
    shape = _hf_shape(expected[path].shape, layout, config)
    return f"{key} {shape} (param {'/'.join(map(str, path))})"


def _hf_tensors(params: dict, config: Qwen2_5_VLConfig, dtype) -> Iterator[tuple[str, tuple, str, Callable]]:
    """Yield (HF key, HF shape, dtype name, produce) in key order; `produce` builds one host tensor."""
    tensors = []
    for path, value in _flatten(params).items():
        key, layout = path_to_hf_key(path)
        out_dtype = jnp.dtype(dtype or value.dtype)
        shape = _hf_shape(tuple(value.shape), layout, config)

        def produce(value=value, layout=layout, shape=shape, out_dtype=out_dtype):
            array = jnp.asarray(value).astype(out_dtype)
            if layout in ("transpose", "patch"):
                array = array.T.reshape(shape)
            return jax.device_get(array)

        tensors.append((key, shape, out_dtype.name, produce))
    yield from sorted(tensors, key=lambda entry: entry[0])
