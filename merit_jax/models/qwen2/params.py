"""Mapping between Hugging Face Qwen2 safetensors checkpoints and `Qwen2ForCausalLM` NNX parameters.

A name maps by rule: dots become path separators, `weight` becomes `kernel` (Linear, transposed
from (out, in) to (in, out)), `embedding` (embed_tokens) or `scale` (norms). Import streams one
tensor at a time; export writes a safetensors file one tensor at a time.
"""

import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from safetensors import safe_open

from merit_jax.models.qwen2.config import Qwen2Config
from merit_jax.models.qwen2.modeling import Qwen2ForCausalLM

Path = tuple[str | int, ...]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype codes for the dtypes a checkpoint of this model can hold.
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensor names or shapes do not match the model its config describes."""


def hf_key_to_path(key: str) -> tuple[Path, bool] | None:
    """Map a Hugging Face tensor name to (NNX path, transpose?), or None if no rule applies."""
    *modules, leaf = key.split(".")
    if not modules:
        return None
    owner = modules[-1]

    if leaf == "bias" and owner.endswith("_proj"):
        name, transpose = "bias", False
    elif leaf != "weight":
        return None
    elif owner == "embed_tokens":
        name, transpose = "embedding", False
    elif owner.endswith("norm"):
        name, transpose = "scale", False
    elif owner.endswith("_proj") or owner == "lm_head":
        name, transpose = "kernel", True
    else:
        return None

    path = tuple(int(part) if part.isdigit() else part for part in modules)
    return path + (name,), transpose


def path_to_hf_key(path: Path) -> tuple[str, bool]:
    """Map an NNX parameter path to (Hugging Face tensor name, transpose?)."""
    *modules, name = path
    leaf = "bias" if name == "bias" else "weight"
    return ".".join(str(part) for part in modules) + "." + leaf, name == "kernel"


def expected_param_shapes(config: Qwen2Config) -> dict[Path, jax.ShapeDtypeStruct]:
    """Return each parameter path of `Qwen2ForCausalLM(config)` with its shape, allocating nothing."""
    abstract = nnx.eval_shape(lambda: Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)))
    return {path: variable.get_value() for path, variable in nnx.to_flat_state(nnx.state(abstract))}


def hf_state_dict_to_params(
    state_dict: Mapping[str, jax.Array | np.ndarray], config: Qwen2Config
) -> dict:
    """Convert an in-memory Hugging Face state dict to the model's pure parameter dict.

    Raises CheckpointMismatchError listing every unmapped key, missing key and shape mismatch.
    """
    entries = (
        (key, "state_dict", tuple(np.shape(value)), lambda value=value: jnp.asarray(value))
        for key, value in state_dict.items()
    )
    return _convert_entries(entries, config, source="state_dict")


def params_to_hf_state_dict(params: dict, *, dtype=None) -> dict[str, np.ndarray]:
    """Convert the pure parameter dict to Hugging Face names and layouts as numpy arrays.

    The result is a host copy of every tensor at once, while `export_hf_checkpoint` streams.
    """
    return {key: np.asarray(read()) for key, _, _, read in _hf_tensors(params, dtype)}


def load_hf_checkpoint(
    directory: str | os.PathLike, *, dtype=None, param_dtype=None
) -> tuple[Qwen2ForCausalLM, Qwen2Config]:
    """Load a Hugging Face Qwen2 checkpoint directory (config.json + safetensors) as an NNX model.

    dtype sets the compute dtype and param_dtype the stored one (both default to float32,
    whatever dtype the checkpoint's tensors have). Sharded checkpoints are read through
    model.safetensors.index.json.
    """
    directory = os.fspath(directory)
    overrides = {}
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    config = Qwen2Config.from_pretrained_dir(directory, **overrides)

    files = _safetensors_files(directory)
    logging.info("Loading Qwen2 checkpoint %s from %d safetensors file(s)", directory, len(files))
    params = _convert_entries(_stream_entries(directory, files), config, source=directory)

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state), config


def export_hf_checkpoint(
    params: dict, config: Qwen2Config, directory: str | os.PathLike, *, dtype=None
) -> None:
    """Write config.json and model.safetensors for `transformers.Qwen2ForCausalLM.from_pretrained`.

    The files are written into a temporary sibling directory that is renamed to `directory`, so
    an interrupted export leaves no partial checkpoint. dtype casts the tensors (default: as
    stored). Raises FileExistsError if `directory` exists and is not empty.
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
        tensors = list(_hf_tensors(params, dtype))
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


def _safetensors_files(directory: str) -> list[str]:
    """Return the checkpoint's safetensors file names, from the index when it is sharded."""
    index_path = os.path.join(directory, SAFETENSORS_INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not weight_map:
            raise ValueError(
                f"{index_path} has no 'weight_map', so the sharded checkpoint index is invalid"
            )
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(os.path.join(directory, SAFETENSORS_FILE)):
        files = [SAFETENSORS_FILE]
    else:
        present = sorted(os.listdir(directory))
        raise FileNotFoundError(
            f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} in {directory} (found {present}); "
            "weights load only from safetensors: convert a pytorch_model.bin checkpoint with "
            "save_pretrained(..., safe_serialization=True)"
        )

    absent = [name for name in files if not os.path.isfile(os.path.join(directory, name))]
    if absent:
        raise FileNotFoundError(
            f"checkpoint {directory} is missing shard file(s) {absent} "
            f"listed in {SAFETENSORS_INDEX_FILE}"
        )
    return files


def _stream_entries(directory: str, files: list[str]) -> Iterator[tuple[str, str, tuple, Callable]]:
    """Yield (key, file name, shape, read) per tensor; `read` loads that tensor alone."""
    for name in files:
        with safe_open(os.path.join(directory, name), framework="flax") as f:
            for key in f.keys():
                shape = tuple(f.get_slice(key).get_shape())
                yield key, name, shape, lambda f=f, key=key: f.get_tensor(key)


def _convert_entries(
    entries: Iterable[tuple[str, str, tuple, Callable]], config: Qwen2Config, *, source: str
) -> dict:
    """Map checkpoint tensors onto the model's paths, gathering all problems before raising.

    NOTE: every tensor lands unsharded on the default device, so the whole model must fit there.
    """
    expected = expected_param_shapes(config)
    param_dtype = jnp.dtype(config.param_dtype)
    loaded: dict[Path, jax.Array] = {}
    seen_in: dict[Path, str] = {}
    unmapped, mismatched, duplicated = [], [], []

    for key, file_name, shape, read in entries:
        mapping = hf_key_to_path(key)
        path, transpose = mapping if mapping is not None else (None, False)

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

        hf_shape = expected[path].shape[::-1] if transpose else expected[path].shape
        if shape != hf_shape:
            mismatched.append(_mismatch(key, file_name, shape, hf_shape))
            continue
        tensor = read()
        loaded[path] = (tensor.T if transpose else tensor).astype(param_dtype)

    missing = [path for path in expected if path not in seen_in]
    if unmapped or missing or mismatched or duplicated:
        missing_keys = [_describe_path(path, expected) for path in missing]
        lines = [f"checkpoint {source} does not match the Qwen2 model described by its config:"]
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
            "Check that config.json (num_hidden_layers, hidden_size, intermediate_size, head counts, "
            "vocab_size, tie_word_embeddings) describes these weights."
        )
        raise CheckpointMismatchError("\n".join(lines))

    return _unflatten(loaded)


def _mismatch(key: str, file_name: str, shape: tuple, expected_shape: tuple) -> str:
    return f"{key} in {file_name}: checkpoint {shape}, model expects {expected_shape}"


def _describe_path(path: Path, expected: dict) -> str:
    key, transpose = path_to_hf_key(path)
    shape = expected[path].shape[::-1] if transpose else expected[path].shape
    return f"{key} {shape} (param {'/'.join(map(str, path))})"


def _hf_tensors(params: dict, dtype) -> Iterator[tuple[str, tuple, str, Callable]]:
    """Yield (HF key, HF shape, dtype name, produce) in key order; `produce` builds one tensor."""
    entries = []
    for path, value in _flatten(params).items():
        key, transpose = path_to_hf_key(path)
        out_dtype = jnp.dtype(dtype or value.dtype)
        shape = tuple(value.shape[::-1]) if transpose else tuple(value.shape)

        def produce(value=value, transpose=transpose, out_dtype=out_dtype):
            array = jnp.asarray(value).astype(out_dtype)
            return jax.device_get(array.T if transpose else array)

        entries.append((key, shape, out_dtype.name, produce))
    yield from sorted(entries, key=lambda entry: entry[0])


def _write_safetensors(path: str, tensors: list[tuple[str, tuple, str, Callable]]) -> None:
    """Write a safetensors file, materializing one tensor on the host at a time.

    Layout (safetensors format): u64 little-endian header size, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the raw little-endian tensor bytes in header order.
    """
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape, dtype_name, _ in tensors:
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise ValueError(
                f"cannot export {key} with dtype {dtype_name}; use one of {sorted(_SAFETENSORS_DTYPES)}"
            )
        size = math.prod(shape) * jnp.dtype(dtype_name).itemsize
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[dtype_name],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size

    # Padding the header with spaces to a multiple of 8 bytes keeps the tensor data aligned, as the
    # safetensors 0.8.0 writer does.
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)

    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for key, shape, _, produce in tensors:
            array = np.ascontiguousarray(produce())
            if array.shape != shape:
                raise AssertionError(
                    f"tensor {key} has shape {array.shape} but the header records {shape}"
                )
            f.write(array.reshape(-1).view(np.uint8).data)
        f.flush()
        os.fsync(f.fileno())


def _flatten(params: dict, prefix: Path = ()) -> dict[Path, jax.Array]:
    flat = {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix + (name,)))
        else:
            flat[prefix + (name,)] = value
    return flat


def _unflatten(flat: dict[Path, jax.Array]) -> dict:
    nested: dict = {}
    for path, value in flat.items():
        node = nested
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return nested


def _shape_differences(actual: dict, expected: dict) -> list[str]:
    common = sorted(actual.keys() & expected.keys(), key=str)
    return [
        f"{'/'.join(map(str, path))}: {actual[path]}, expected {expected[path]}"
        for path in common
        if actual[path] != expected[path]
    ]
