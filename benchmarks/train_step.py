"""Time one AdamW training step of our NNX Qwen2 against transformers' PyTorch Qwen2 on CPU.

Run: `python benchmarks/train_step.py [--steps 10 --threads 2 ...]`. Both models start from the
same weights and train on the same batch. The script prints tokens/s for each, their ratio, and
one JSON line with every setting and version. It measures and has no pass or fail.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_size", type=int, default=2048)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--intermediate_size", type=int, default=768)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=8)
    parser.add_argument("--num_kv_heads", type=int, default=2)
    parser.add_argument("--untied", action="store_true", help="use a separate LM head (default: tied)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per framework")
    parser.add_argument(
        "--warmup", type=int, default=2,
        help="untimed steps before timing, at least 1 (ours compiles in the first)",
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(),
        help="CPU cores for both frameworks: the process is pinned to this many cores "
        "and torch runs this many threads",
    )
    parser.add_argument("--torch_attention", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()

    # Pinning before jax starts makes XLA size its thread pool to the same cores torch gets.
    cores = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cores)

    import flax
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    import transformers
    from flax import nnx

    from merit_jax.models.functional import FunctionalModule
    from merit_jax.models.qwen2 import Qwen2Config, hf_state_dict_to_params

    torch.set_num_threads(args.threads)
    tokens_per_step = args.batch_size * args.seq_len

    # ---- models: torch builds the weights, ours copies them ----
    config = Qwen2Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        tie_word_embeddings=not args.untied,
    )
    torch.manual_seed(args.seed)
    hf_config = transformers.Qwen2Config(**config.to_hf_dict(), attn_implementation=args.torch_attention)
    torch_model = transformers.Qwen2ForCausalLM(hf_config).train()
    state_dict = {name: value.detach().numpy() for name, value in torch_model.state_dict().items()}
    fm, _ = FunctionalModule.from_module(nnx.eval_shape(lambda: _build(config)))
    params = hf_state_dict_to_params(state_dict, config)

    batch = np.random.default_rng(args.seed).integers(0, args.vocab_size, (args.batch_size, args.seq_len))
    jax_batch = jnp.asarray(batch, jnp.int32)
    torch_batch = torch.as_tensor(batch, dtype=torch.long)

    # ---- ours: one jitted step, next-token cross-entropy averaged over B * (L - 1) ----
    optimizer = optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay)
    opt_state = optimizer.init(params)

    def loss_fn(params, ids):
        logits = fm.apply(params, ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    # Donating the old parameters and optimizer state lets XLA update them in place.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def jax_step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run_ours():
        nonlocal params, opt_state
        params, opt_state, loss = jax_step(params, opt_state, jax_batch)
        return float(loss.block_until_ready())

    # ---- torch: transformers shifts the labels itself, the same loss ----
    torch_optimizer = torch.optim.AdamW(
        torch_model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay
    )

    def run_torch():
        loss = torch_model(input_ids=torch_batch, labels=torch_batch).loss
        loss.backward()
        torch_optimizer.step()
        torch_optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    results = {}
    for name, step in (("ours", run_ours), ("torch", run_torch)):
        first_loss = step()
        for _ in range(args.warmup - 1):
            step()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        results[name] = {
            "first_loss": first_loss,
            "median_s": median,
            "min_s": min(times),
            "tokens_per_s": tokens_per_step / median,
            "tokens_per_s_at_min": tokens_per_step / min(times),
        }
        print(
            f"{name:>5}: median {median * 1e3:8.1f} ms  min {min(times) * 1e3:8.1f} ms  "
            f"{tokens_per_step / median:10.0f} tokens/s  (first loss {first_loss:.5f})"
        )

    ratio = results["ours"]["tokens_per_s"] / results["torch"]["tokens_per_s"]
    print(f"ratio ours/torch (tokens/s, median): {ratio:.3f}")

    record = {
        "benchmark": "qwen2_train_step",
        "settings": vars(args),
        "num_parameters": config.num_parameters(),
        "tokens_per_step": tokens_per_step,
        "results": results,
        "ratio_ours_over_torch": ratio,
        "ratio_ours_over_torch_at_min": (
            results["ours"]["tokens_per_s_at_min"] / results["torch"]["tokens_per_s_at_min"]
        ),
        "threads": {
            "torch_num_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "pinned_cores": cores,
            "os_cpu_count": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        },
        "versions": {
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "platform": platform.platform(),
        "processor": platform.processor(),
        "jax_devices": [str(device) for device in jax.devices()],
    }
    print(json.dumps(record, sort_keys=True))


def _build(config):
    from flax import nnx

    from merit_jax.models.qwen2 import Qwen2ForCausalLM

    return Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))


if __name__ == "__main__":
    main()
