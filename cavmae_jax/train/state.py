"""TrainState: everything a training step reads and writes, as one pytree for jit and Orbax."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 [], number of updates applied so far
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2] raw key; step keys are fold_in(rng, step)


def create(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.PRNGKey(seed))


def step_key(state: TrainState) -> jax.Array:
    """The key of the current step: the same on every mesh and after every resume."""
    return jax.random.fold_in(state.rng, state.step)
