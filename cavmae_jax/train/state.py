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
    # Finetuning weight averaging (official `wa_model`): the running mean of the end-of-epoch
    # params of epochs [wa_start, wa_end], kept in the state so that resuming stays exact.
    avg_params: Any = None
    avg_count: Any = None  # int32 [] snapshots in avg_params


def create(params: Any, tx: optax.GradientTransformation, seed: int,
           weight_averaging: bool = False) -> TrainState:
    avg = jax.tree.map(jnp.zeros_like, params) if weight_averaging else None
    count = jnp.zeros((), jnp.int32) if weight_averaging else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.PRNGKey(seed), avg_params=avg, avg_count=count)


def step_key(state: TrainState) -> jax.Array:
    """The key of the current step: the same on every mesh and after every resume."""
    return jax.random.fold_in(state.rng, state.step)


def add_to_average(state: TrainState) -> TrainState:
    """Folds the current params into the running average (the mean of all snapshots so far)."""
    weight = 1.0 / (state.avg_count + 1).astype(jnp.float32)
    avg = jax.tree.map(lambda a, p: a + (p - a) * weight, state.avg_params, state.params)
    return state.replace(avg_params=avg, avg_count=state.avg_count + 1)
