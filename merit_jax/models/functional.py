"""A functional view of a Flax NNX module: a pure nested dict of parameters and an apply function.

The method code in `merit_jax.core` works on plain pytrees, so models are handed to it as
`(params, apply)`: `params` is the pure dict of every `nnx.Param` (keys are attribute names and
integer layer indices) and `apply(params, *args)` rebuilds the module inside the traced function.
"""

import dataclasses
from typing import Any

import jax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class FunctionalModule:
    """An NNX graph definition with a template of its state, detached from any values."""

    graphdef: Any
    state_template: Any

    @classmethod
    def from_module(cls, module: nnx.Module) -> tuple["FunctionalModule", dict]:
        """Split `module` into its functional form and its parameters as a pure dict."""
        graphdef, state = nnx.split(module)
        non_params = [
            jax.tree_util.keystr(path)
            for path, variable in nnx.to_flat_state(state)
            if not isinstance(variable, nnx.Param)
        ]
        if non_params:
            # Only parameters travel through gradients, checkpoints and merges, so any other
            # variable would be silently dropped.
            raise ValueError(
                f"module {type(module).__name__} has non-parameter state {non_params[:5]}; "
                "compute such values on the fly or store them as nnx.Param"
            )
        return cls(graphdef, state), nnx.to_pure_dict(state)

    def bind(self, params: dict) -> nnx.Module:
        """Return a module whose parameters are `params` (works under jit and grad)."""
        state = jax.tree.map(lambda leaf: leaf, self.state_template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def apply(self, params: dict, *args, **kwargs):
        """Call the module with `params` in place of its own parameters."""
        return self.bind(params)(*args, **kwargs)
