"""The state a run trains and the one optimizer step that advances it, for every task.

A task supplies only its loss: `loss_fn(variables, batch, rng) -> (loss, (metrics, batch_stats))`
with `variables = {"params", "batch_stats"}`. `train_step` is pure, and compiled by the task with
`jax.jit` over the device mesh (batch sharded, state replicated).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from lct_flax import freezing
from lct_flax import parallel

LossFn = Callable[[dict, dict, jax.Array], tuple[jax.Array, tuple[dict, Any]]]


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: the step, the model's variables, the optimizer
  state and the base RNG key (each step folds in its step number)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}

  @classmethod
  def create(cls, variables: dict, optimizer: optax.GradientTransformation,
             rng: jax.Array) -> "TrainState":
    """The state at step 0 of freshly initialised model `variables`."""
    params = variables["params"]
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get("batch_stats", {}), opt_state=optimizer.init(params),
               rng=rng)


def abstract_state_of(init_state: Callable[[], TrainState], mesh: Any) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state `init_state()` creates, without
  creating it: what a checkpoint is restored into."""
  replicated = parallel.replicated_sharding(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      jax.eval_shape(init_state))


def train_step(state: TrainState, batch: dict, *, loss_fn: LossFn,
               optimizer: optax.GradientTransformation,
               param_labels: Any = None) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch: `loss_fn`'s value and gradient (with `param_labels`,
  `freezing.parameter_labels`, the frozen parameters' gradients are never computed), the update.
  The step's RNG is the state's key folded with the step number. Metrics: `loss`, the loss's own
  metrics, `grad_norm` (before any clipping) and `finite` for the loop's NaN guard."""
  rng = jax.random.fold_in(state.rng, state.step)

  def objective(params):
    return loss_fn({"params": params, "batch_stats": state.batch_stats}, batch, rng)

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params)
  if param_labels is not None:
    grads = freezing.zero_frozen(grads, param_labels)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **metrics, "grad_norm": grad_norm,
             "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), metrics
