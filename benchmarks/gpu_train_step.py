"""Train-step throughput and model FLOP utilization of the Qwen2.5-VL-3B decoder on any accelerator.

    python benchmarks/gpu_train_step.py                       # 3B shapes, every local device
    python benchmarks/gpu_train_step.py --size=tiny --steps=3  # a CPU smoke test

Random weights, bf16 compute with float32 parameters and AdamW state, FSDP over all devices,
rematerialized layers, text-only batches of fixed length. Model FLOPs per token are
6 × (parameters without the embedding) + 12 × layers × hidden × sequence (attention), the usual
accounting (Chowdhery et al., 2022, appendix B). MFU divides achieved FLOP/s by the peak dense
bf16 FLOP/s of the device, looked up by name or given with --peak_tflops. This is a script for a
GPU session, not a test.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from merit_jax.core import sharding as sharding_lib
from merit_jax.core import tree as tree_lib
from merit_jax.models import qwen2, qwen2_5_vl
from merit_jax.models.functional import FunctionalModule
from merit_jax.training.loss import make_causal_lm_loss
from merit_jax.training.optimizer import make_optimizer
from merit_jax.training.trainer import make_train_step

# Dense bf16 peaks per device from the vendors' data sheets (TFLOP/s, without sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "V100": 125.0, "L4": 121.0, "TPU v4": 275.0, "TPU v5e": 197.0}


def _decoder_config(size: str) -> qwen2.Qwen2Config:
    if size == "tiny":
        return qwen2.Qwen2Config(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, dtype="bfloat16", remat=True,
        )
    text = qwen2_5_vl.published_config("3b").text_config
    return qwen2.Qwen2Config(**{**text.__dict__, "dtype": "bfloat16", "remat": True})


def _peak_tflops(device, override: float) -> float | None:
    if override > 0:
        return override
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in device.device_kind.lower():
            return peak
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["3b", "tiny"], default="3b")
    parser.add_argument("--batch_size", type=int, default=0, help="sequences per step (default: 4 per device)")
    parser.add_argument("--micro_batches", type=int, default=1)
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps; the first compiles")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="per-device peak, if not in the table")
    args = parser.parse_args()

    config = _decoder_config(args.size)
    devices = jax.devices()
    batch_size = args.batch_size or 4 * len(devices)
    mesh = sharding_lib.make_mesh(-1, 1)
    abstract = FunctionalModule.from_module(nnx.eval_shape(lambda: qwen2.Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))))
    functional, abstract_params = abstract
    shardings = sharding_lib.param_shardings(abstract_params, mesh)

    # Random weights created directly in their shards.
    params = jax.jit(
        lambda: FunctionalModule.from_module(qwen2.Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)))[1],
        out_shardings=shardings,
    )()
    train = ml_collections.ConfigDict(dict(optimizer="adamw", adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.0, clip_norm=1.0))
    optimizer = make_optimizer(train)
    step = make_train_step(make_causal_lm_loss(functional.apply), optimizer, args.micro_batches)
    opt_state = jax.jit(optimizer.init)(params)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (batch_size, args.seq_len), dtype=np.int32)
    batch = {
        "input_ids": ids,
        "targets": np.roll(ids, -1, axis=1),
        "loss_mask": np.ones((batch_size, args.seq_len), np.float32),
        "attention_mask": np.ones((batch_size, args.seq_len), np.int32),
    }
    batch_specs = jax.tree.map(lambda _: PartitionSpec("data", None), batch)
    batch = sharding_lib.place(batch, sharding_lib.batch_shardings(batch_specs, mesh))

    frozen: dict = {}
    times = []
    for index in range(args.warmup + args.steps):
        started = time.perf_counter()
        params, opt_state, metrics = step(params, opt_state, frozen, batch, np.float32(1e-5))
        jax.block_until_ready(metrics["loss_sum"])
        if index >= args.warmup:
            times.append(time.perf_counter() - started)

    step_time = float(np.median(times))
    tokens_per_second = batch_size * args.seq_len / step_time
    embedding = config.vocab_size * config.hidden_size
    flops_per_token = 6 * (tree_lib.tree_size(abstract_params) - embedding)
    flops_per_token += 12 * config.num_hidden_layers * config.hidden_size * args.seq_len
    peak = _peak_tflops(devices[0], args.peak_tflops)
    mfu = tokens_per_second * flops_per_token / (peak * 1e12 * len(devices)) if peak else None
    print(
        json.dumps(
            {
                "size": args.size,
                "devices": len(devices),
                "device_kind": devices[0].device_kind,
                "batch_size": batch_size,
                "seq_len": args.seq_len,
                "micro_batches": args.micro_batches,
                "parameters": tree_lib.tree_size(abstract_params),
                "step_time_s": step_time,
                "tokens_per_second": tokens_per_second,
                "model_tflops_per_second": tokens_per_second * flops_per_token / 1e12,
                "mfu": mfu,
                "peak_tflops_per_device": peak,
                "jax": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
