"""MERIT: conflict-aware dataset splitting and one-shot weight merging, in JAX/Flax."""
