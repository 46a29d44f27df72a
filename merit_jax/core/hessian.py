"""Hessian–vector products of the token-weighted loss over the trainable subset, and Lanczos.

Hv = Σ_b HVP(loss_sum_b)(v) / Σ_b token_count_b, where H is the Hessian of the token-mean loss
with respect to the trainable leaves (the token count does not depend on θ). `lanczos` turns any
such operator into top-k Ritz pairs with full reorthogonalization, because without it copies
("ghosts") of converged eigenvalues appear (Paige 1971).
"""

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import tqdm
from absl import logging

from merit_jax.core import tree as tree_lib
from merit_jax.core.gradients import LossFn

HVP_MODES = ("forward_over_reverse", "reverse_over_reverse", "central_difference")

# The paper's central-difference step, for unit-norm v. Its error is O(ε²) truncation plus
# O(u‖∇L‖/ε) float32 round-off, so sweep ε before trusting it on a new model.
DEFAULT_EPSILON = 0.1

# Maximum length of a recorded fallback reason, because JAX errors can run to many lines.
_MAX_REASON_CHARS = 500


def _trainable_loss(loss_fn, frozen, batch):
    """Return trainable ↦ loss_fn(trainable ∪ frozen, batch), i.e. (loss_sum, token_count)."""

    def loss_of_trainable(trainable):
        return loss_fn(tree_lib.combine(trainable, frozen), batch)

    return loss_of_trainable


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def _accumulate_hvp(loss_fn, mode, accumulator, trainable, frozen, vector, batch, epsilon):
    """Add H_b v of one batch's loss_sum to the float32 accumulator.

    Returns the new accumulator and the batch's token count.
    """
    gradient_fn = jax.grad(_trainable_loss(loss_fn, frozen, batch), has_aux=True)

    if mode == "forward_over_reverse":
        _, product, token_count = jax.jvp(gradient_fn, (trainable,), (vector,), has_aux=True)
    elif mode == "reverse_over_reverse":

        def directional_derivative(params):
            gradient, count = gradient_fn(params)
            return tree_lib.tree_vdot(gradient, vector), count

        product, token_count = jax.grad(directional_derivative, has_aux=True)(trainable)
    elif mode == "central_difference":
        plus = jax.tree.map(lambda p, v: p + epsilon * v, trainable, vector)
        minus = jax.tree.map(lambda p, v: p - epsilon * v, trainable, vector)
        gradient_plus, token_count = gradient_fn(plus)
        gradient_minus, _ = gradient_fn(minus)
        product = jax.tree.map(
            lambda a, b: (a - b) / (2.0 * epsilon), gradient_plus, gradient_minus
        )
    else:
        raise ValueError(f"unknown HVP mode {mode!r}; expected one of {HVP_MODES}")

    accumulator = jax.tree.map(lambda acc, p: acc + p.astype(jnp.float32), accumulator, product)
    return accumulator, token_count


def _as_float32(trainable: dict) -> dict:
    """Cast the trainable leaves to float32, raising for a non-float leaf (it has no Hessian)."""
    for path, leaf in tree_lib.leaves_with_paths(trainable):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(f"trainable leaf {path!r} has dtype {leaf.dtype}; exclude it")
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype=jnp.float32), trainable)


def _validate_vector(vector: Any, trainable: dict) -> dict:
    """Return `vector` as float32 after checking it has the trainable subset's paths and shapes."""
    expected = [(path, np.shape(leaf)) for path, leaf in tree_lib.leaves_with_paths(trainable)]
    found = [(path, np.shape(leaf)) for path, leaf in tree_lib.leaves_with_paths(vector)]
    if expected != found:
        raise ValueError(
            "the vector must have the trainable subset's leaf paths and shapes; "
            f"expected {expected[:3]}..., got {found[:3]}... ({len(found)} leaves, "
            f"{len(expected)} expected)"
        )
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype=jnp.float32), vector)


def _hvp_over_batches(loss_fn, mode, trainable, frozen, batches, vector, epsilon) -> dict:
    accumulator = jax.tree.map(jnp.zeros_like, trainable)
    epsilon = jnp.float32(epsilon)
    token_counts = []
    for batch in batches:
        accumulator, token_count = _accumulate_hvp(
            loss_fn, mode, accumulator, trainable, frozen, vector, batch, epsilon
        )
        token_counts.append(token_count)

    if not token_counts:
        raise ValueError("no batches were given; the Hessian probe set is empty")
    total_tokens = float(np.sum(np.asarray(jax.device_get(token_counts), dtype=np.float64)))
    if not total_tokens > 0:
        raise ValueError(
            f"total token count is {total_tokens} over {len(token_counts)} batches; the probe "
            "batches contain no supervised (loss-bearing) tokens"
        )
    return jax.tree.map(lambda acc: acc / np.float32(total_tokens), accumulator)


def hvp(
    loss_fn: LossFn,
    params: dict,
    batches: Iterable[Any],
    vector: dict,
    *,
    trainable: tree_lib.PathPredicate,
    mode: str = "forward_over_reverse",
    epsilon: float = DEFAULT_EPSILON,
) -> dict:
    """Return Hv (float32, the structure of the trainable subset) of the token-mean loss.

    The trainable leaves are upcast to float32 before differentiating, which doubles their
    memory for bfloat16 checkpoints. Frozen leaves enter the jitted step as arguments, so it is
    compiled once per `loss_fn`, mode and batch shape.
    `epsilon` is the step of "central_difference" and is ignored by the other modes.
    """
    if mode not in HVP_MODES:
        raise ValueError(f"unknown HVP mode {mode!r}; expected one of {HVP_MODES}")
    trainable_params, frozen_params = tree_lib.partition(params, trainable)
    trainable_params = _as_float32(trainable_params)
    vector = _validate_vector(vector, trainable_params)
    return _hvp_over_batches(
        loss_fn, mode, trainable_params, frozen_params, batches, vector, epsilon
    )


class HVPOperator:
    """The linear map v ↦ Hv at fixed parameters and probe batches, on trees or flat vectors.

    The flat layout concatenates the trainable leaves in canonical order
    (`merit_jax.core.tree.leaves_with_paths`), each raveled row-major. Attributes: mode (the
    HVP mode in use), fallback_reason (why "auto" left forward-over-reverse, else None), size
    (number of trainable entries), paths and shapes (of the trainable leaves, canonical order).
    """

    def __init__(self, loss_fn, trainable, frozen, batches, mode, epsilon, fallback_reason):
        self._loss_fn = loss_fn
        self._trainable = trainable
        self._frozen = frozen
        self._batches = batches
        self._epsilon = epsilon
        self.mode = mode
        self.fallback_reason = fallback_reason

        leaves, self._treedef = jax.tree_util.tree_flatten(trainable)
        self.paths = [path for path, _ in tree_lib.leaves_with_paths(trainable)]
        self.shapes = [tuple(leaf.shape) for leaf in leaves]
        self._offsets = np.cumsum([0] + [int(np.prod(shape)) for shape in self.shapes])
        self.size = int(self._offsets[-1])

    def apply(self, vector: dict) -> dict:
        """Return Hv for a tree with the trainable subset's structure (float32)."""
        vector = _validate_vector(vector, self._trainable)
        return _hvp_over_batches(
            self._loss_fn, self.mode, self._trainable, self._frozen, self._batches, vector,
            self._epsilon,
        )

    def flatten(self, tree: dict) -> jax.Array:
        """Return the canonical flat float32 vector (size,) of a trainable-structured tree."""
        leaves = jax.tree_util.tree_leaves(tree)
        return jnp.concatenate([jnp.ravel(jnp.asarray(leaf, jnp.float32)) for leaf in leaves])

    def unflatten(self, flat: Any) -> dict:
        """Return the trainable-structured tree of a flat vector (size,)."""
        flat = jnp.asarray(flat, dtype=jnp.float32)
        if flat.shape != (self.size,):
            raise ValueError(f"expected a flat vector of shape ({self.size},), got {flat.shape}")
        leaves = [
            flat[start:stop].reshape(shape)
            for start, stop, shape in zip(self._offsets[:-1], self._offsets[1:], self.shapes)
        ]
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    def matvec(self, flat: Any) -> jax.Array:
        """Return H v as a flat float32 vector (size,) for a flat vector v (size,)."""
        return self.flatten(self.apply(self.unflatten(flat)))


def _forward_mode_failure(loss_fn, trainable, frozen, batch) -> str | None:
    """Lower (without compiling or running) the forward-over-reverse step and return why it fails.

    `jax.eval_shape` is not enough: in JAX 0.10.2 the jvp of a custom_vjp backward pass is
    expanded only when the program is lowered, so tracing alone succeeds.
    """
    try:
        _accumulate_hvp.lower(
            loss_fn, "forward_over_reverse", trainable, trainable, frozen, trainable, batch,
            jnp.float32(0.0),
        )
    except (TypeError, NotImplementedError) as error:
        # jvp raises TypeError through custom_vjp functions and NotImplementedError for
        # primitives without a forward-mode rule (some Pallas kernels).
        return f"{type(error).__name__}: {error}"[:_MAX_REASON_CHARS]
    return None


def make_hvp_operator(
    loss_fn: LossFn,
    params: dict,
    batches: Iterable[Any],
    *,
    trainable: tree_lib.PathPredicate,
    mode: str = "auto",
    epsilon: float = DEFAULT_EPSILON,
) -> HVPOperator:
    """Build the HVP operator at `params` over the probe `batches` (kept in a list and reused).

    mode "auto" lowers the forward-over-reverse step for the first batch and, if that raises,
    uses reverse-over-reverse, logs a warning and records the error in `fallback_reason`.
    """
    if mode != "auto" and mode not in HVP_MODES:
        raise ValueError(f"unknown HVP mode {mode!r}; expected 'auto' or one of {HVP_MODES}")
    batches = list(batches)
    if not batches:
        raise ValueError("no batches were given; the Hessian probe set is empty")
    trainable_params, frozen_params = tree_lib.partition(params, trainable)
    trainable_params = _as_float32(trainable_params)

    fallback_reason = None
    if mode == "auto":
        fallback_reason = _forward_mode_failure(
            loss_fn, trainable_params, frozen_params, batches[0]
        )
        mode = "forward_over_reverse" if fallback_reason is None else "reverse_over_reverse"
        if fallback_reason is not None:
            logging.warning(
                "forward-over-reverse HVP failed to lower, so reverse-over-reverse is used: %s",
                fallback_reason,
            )

    operator = HVPOperator(
        loss_fn, trainable_params, frozen_params, batches, mode, epsilon, fallback_reason
    )
    logging.info(
        "HVP operator: mode %s, %d parameters in %d leaves, %d batches",
        mode, operator.size, len(operator.paths), len(batches),
    )
    return operator


@dataclasses.dataclass(frozen=True)
class LanczosResult:
    """Top-k Ritz pairs of a symmetric operator and the diagnostics to judge them.

    eigenvalues: (k,) largest algebraic Ritz values θ_i, descending, float64. eigenvectors:
    (k, size) float32 unit Ritz vectors y_i (a jax.Array, or a NumPy array with basis_on_host).
    smallest_eigenvalue: the smallest Ritz value. ritz_values: (m,) all final Ritz values,
    descending. residuals: (k,) ‖Hy_i − θ_iy_i‖ from k extra matvecs. residual_estimates: (k,)
    β_m|s_{m,i}|. gaps: (k,) min_{j≠i}|θ_i − θ_j| over all Ritz values. angle_bounds: (k,)
    residual/gap, the Davis–Kahan bound on sin∠(y_i, eigenvector). converged: (k,) residual ≤
    converged_tol·|θ_1|. orthogonality_loss: max|QᵀQ − I| over the m basis vectors.
    ritz_history: per iteration j, the Ritz values of T_j, descending. alphas, betas: (m,)
    tridiagonal coefficients (betas[-1] is β_m). num_iterations: m (fewer than requested after an
    invariant subspace). num_matvecs: operator applications, the k residual checks included.
    """

    eigenvalues: np.ndarray
    eigenvectors: Any
    smallest_eigenvalue: float
    ritz_values: np.ndarray
    residuals: np.ndarray
    residual_estimates: np.ndarray
    gaps: np.ndarray
    angle_bounds: np.ndarray
    converged: np.ndarray
    orthogonality_loss: float
    ritz_history: list[np.ndarray]
    alphas: np.ndarray
    betas: np.ndarray
    num_iterations: int
    num_matvecs: int
    wall_time_s: float


_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnums=5)
def _device_lanczos_step(basis, q, q_previous, beta_previous, w, reorthogonalize):
    """Apply the three-term recurrence to w = Hq and, if asked, two full reorthogonalizations."""
    w = w - beta_previous * q_previous
    alpha = jnp.vdot(w, q)
    w = w - alpha * q
    if reorthogonalize:
        # Classical Gram–Schmidt twice ("twice is enough"). Rows not yet filled are zero.
        for _ in range(2):
            coefficients = jnp.dot(basis, w, precision=_HIGHEST)
            w = w - jnp.dot(coefficients, basis, precision=_HIGHEST)
    return w, alpha, jnp.linalg.norm(w)


@functools.partial(jax.jit, donate_argnums=0)
def _store_row(basis, index, row):
    return basis.at[index].set(row)


class _DeviceBasis:
    """Zero-padded (m + 1, size) float32 basis in device memory."""

    def __init__(self, num_rows: int, size: int):
        self.rows = jnp.zeros((num_rows, size), dtype=jnp.float32)

    def vector(self, value) -> jax.Array:
        return jnp.asarray(value, dtype=jnp.float32)

    def step(self, q, q_previous, beta_previous, w, reorthogonalize):
        w, alpha, beta = _device_lanczos_step(
            self.rows, q, q_previous, jnp.float32(beta_previous), w, reorthogonalize
        )
        return w, float(alpha), float(beta)

    def store(self, index: int, row) -> None:
        self.rows = _store_row(self.rows, index, row)

    def norm(self, vector) -> float:
        return float(jnp.linalg.norm(vector))

    def gram(self, count: int) -> np.ndarray:
        rows = self.rows[:count]
        return np.asarray(jnp.dot(rows, rows.T, precision=_HIGHEST), dtype=np.float64)

    def combine(self, coefficients: np.ndarray) -> jax.Array:
        count = coefficients.shape[1]
        weights = jnp.asarray(coefficients, dtype=jnp.float32)
        return jnp.dot(weights, self.rows[:count], precision=_HIGHEST)


class _HostBasis:
    """Zero-padded (m + 1, size) float32 basis in host memory, reorthogonalized in column chunks."""

    def __init__(self, num_rows: int, size: int, chunk_size: int):
        self.rows = np.zeros((num_rows, size), dtype=np.float32)
        self.chunk_size = chunk_size

    def vector(self, value) -> np.ndarray:
        return np.asarray(value, dtype=np.float32)

    def _chunks(self):
        size = self.rows.shape[1]
        return [slice(start, min(start + self.chunk_size, size))
                for start in range(0, size, self.chunk_size)]

    def _dot(self, first, second) -> float:
        """Return ⟨first, second⟩ accumulated in float64 over column chunks."""
        return float(sum(first[part].astype(np.float64) @ second[part] for part in self._chunks()))

    def step(self, q, q_previous, beta_previous, w, reorthogonalize):
        # Chunk by chunk, so that no full-length float64 copy of w is ever made.
        w = np.array(w, dtype=np.float32)
        w -= np.float32(beta_previous) * q_previous
        alpha = self._dot(w, q)
        w -= np.float32(alpha) * q
        if reorthogonalize:
            for _ in range(2):
                coefficients = sum(self.rows[:, part].astype(np.float64) @ w[part]
                                   for part in self._chunks())
                for part in self._chunks():
                    w[part] -= (coefficients @ self.rows[:, part]).astype(np.float32)
        return w, alpha, self.norm(w)

    def store(self, index: int, row) -> None:
        self.rows[index] = row

    def norm(self, vector) -> float:
        return float(np.sqrt(self._dot(vector, vector)))

    def gram(self, count: int) -> np.ndarray:
        return sum(self.rows[:count, part].astype(np.float64) @ self.rows[:count, part].T
                   for part in self._chunks())

    def combine(self, coefficients: np.ndarray) -> np.ndarray:
        count = coefficients.shape[1]
        parts = [
            (coefficients @ self.rows[:count, part]).astype(np.float32) for part in self._chunks()
        ]
        return np.concatenate(parts, axis=1)


def _validate_lanczos_arguments(size: int, num_iterations: int, k: int) -> None:
    if not 1 <= k <= num_iterations:
        raise ValueError(f"k must be in [1, num_iterations = {num_iterations}], got {k}")
    if num_iterations > size:
        raise ValueError(
            f"num_iterations = {num_iterations} exceeds the operator size {size}; a Krylov "
            "space cannot have more dimensions than the operator"
        )


def lanczos(
    matvec: Callable[[Any], Any],
    size: int,
    *,
    num_iterations: int,
    k: int,
    seed: int,
    tol_break: float = 1e-10,
    reorthogonalize: bool = True,
    basis_on_host: bool = False,
    converged_tol: float = 1e-3,
    host_chunk_size: int = 1 << 22,
    progress: bool = False,
) -> LanczosResult:
    """Estimate the top-k (largest algebraic) eigenpairs of a symmetric operator by Lanczos.

    matvec maps a flat float32 vector (size,) to Hv (size,). The start vector is
    `jax.random.normal(jax.random.key(seed), (size,))`, normalized. Iteration j stops early
    when β_j ≤ tol_break·max|α| (an invariant subspace). The tridiagonal eigenproblem is
    solved in float64 on the host. basis_on_host keeps the (num_iterations + 1, size) basis in
    host memory and reorthogonalizes in chunks of host_chunk_size columns. reorthogonalize=False
    keeps only the three-term recurrence, which lets ghost eigenvalues appear.

    NOTE: the device basis is one unsharded array on the default device, so for models whose
    (num_iterations + 1) × size float32 basis does not fit there, use basis_on_host.
    """
    _validate_lanczos_arguments(size, num_iterations, k)
    started = time.perf_counter()
    if basis_on_host:
        basis = _HostBasis(num_iterations + 1, size, host_chunk_size)
    else:
        basis = _DeviceBasis(num_iterations + 1, size)

    start = jax.random.normal(jax.random.key(seed), (size,), dtype=jnp.float32)
    q = basis.vector(start / jnp.linalg.norm(start))
    q_previous = basis.vector(jnp.zeros(size, dtype=jnp.float32))
    basis.store(0, q)

    alphas, betas, history = [], [], []
    beta_previous = 0.0
    for index in tqdm.trange(num_iterations, desc="lanczos", disable=not progress):
        w = basis.vector(matvec(q))
        if w.shape != (size,):
            raise ValueError(f"matvec returned shape {w.shape}, expected ({size},)")
        w, alpha, beta = basis.step(q, q_previous, beta_previous, w, reorthogonalize)
        alphas.append(alpha)
        betas.append(beta)
        current = scipy.linalg.eigvalsh_tridiagonal(np.array(alphas), np.array(betas[:-1]))
        history.append(current[::-1])

        if beta <= tol_break * max(abs(a) for a in alphas):
            logging.info("Lanczos found an invariant subspace after %d iterations", index + 1)
            break
        if index + 1 < num_iterations:
            q_previous, q = q, basis.vector(w / beta)
            basis.store(index + 1, q)
            beta_previous = beta

    num_done = len(alphas)
    alphas, betas = np.array(alphas), np.array(betas)
    ritz_values, ritz_coefficients = scipy.linalg.eigh_tridiagonal(alphas, betas[:-1])
    ritz_values, ritz_coefficients = ritz_values[::-1], ritz_coefficients[:, ::-1]
    if k > num_done:
        logging.warning("Lanczos stopped after %d iterations, so only %d of the %d requested "
                        "pairs exist", num_done, num_done, k)
    count = min(k, num_done)

    vectors = basis.combine(ritz_coefficients[:, :count].T)
    norms = np.array([basis.norm(vector) for vector in vectors], dtype=np.float32)
    vectors = vectors / basis.vector(norms)[:, None]
    residuals = np.array([
        basis.norm(basis.vector(matvec(vectors[i])) - np.float32(ritz_values[i]) * vectors[i])
        for i in range(count)
    ])

    gaps = np.array([
        np.min(np.abs(np.delete(ritz_values, i) - ritz_values[i])) if num_done > 1 else np.inf
        for i in range(count)
    ])
    orthogonality_loss = float(np.max(np.abs(basis.gram(num_done) - np.eye(num_done))))
    result = LanczosResult(
        eigenvalues=ritz_values[:count],
        eigenvectors=vectors,
        smallest_eigenvalue=float(ritz_values[-1]),
        ritz_values=ritz_values,
        residuals=residuals,
        residual_estimates=betas[-1] * np.abs(ritz_coefficients[-1, :count]),
        gaps=gaps,
        angle_bounds=residuals / gaps,
        converged=residuals <= converged_tol * abs(ritz_values[0]),
        orthogonality_loss=orthogonality_loss,
        ritz_history=history,
        alphas=alphas,
        betas=betas,
        num_iterations=num_done,
        num_matvecs=num_done + count,
        wall_time_s=time.perf_counter() - started,
    )
    logging.info(
        "Lanczos: %d iterations, %d matvecs, top Ritz value %.6g, %d/%d converged, "
        "orthogonality loss %.2g, %.1f s", num_done, result.num_matvecs, ritz_values[0],
        int(result.converged.sum()), count, orthogonality_loss, result.wall_time_s,
    )
    return result
