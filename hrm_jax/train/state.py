"""The train state: float32 master params, optimizer state, EMA, fixed buffers, step, RNG."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: updates taken
  params: Any  # float32 master weights
  opt_state: Any
  ema: Any  # EMA of params, used for eval/export by default
  buffers: Any  # fixed, never-trained variables (z_L_init)
  rng: jax.Array  # [2] uint32 raw key; per-step randomness is fold_in(rng, step)


def example_batch(rows: int, seq: int) -> dict[str, jax.Array]:
  ints = jnp.zeros((rows, seq), jnp.int32)
  return {"inputs": ints, "positions": ints, "segment_ids": ints,
          "prefix_mask": jnp.zeros((rows, seq), bool)}


def _boxed_state(model: LanguageModel, tx: optax.GradientTransformation,
                 rng: jax.Array) -> TrainState:
  """State whose params, optimizer moments and EMA keep their logical-axis boxes."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, example_batch(1, 8))
  params = variables["params"]
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params),
                    ema=params, buffers=variables.get("buffers", {}),
                    rng=jax.random.key_data(state_rng))


def state_shardings(model: LanguageModel, tx: optax.GradientTransformation, mesh: Mesh,
                    rules=sharding_lib.DEFAULT_RULES) -> TrainState:
  """NamedSharding of every state leaf, from abstract shapes (nothing is allocated)."""
  abstract = jax.eval_shape(lambda r: _boxed_state(model, tx, r), jax.random.PRNGKey(0))
  return sharding_lib.param_shardings(abstract, mesh, rules)


def abstract_state(model: LanguageModel, tx: optax.GradientTransformation) -> TrainState:
  return nn.unbox(jax.eval_shape(lambda r: _boxed_state(model, tx, r), jax.random.PRNGKey(0)))


def init_state(model: LanguageModel, tx: optax.GradientTransformation, rng: jax.Array,
               shardings: TrainState) -> TrainState:
  """A fresh state created directly in its sharded layout."""
  return jax.jit(lambda r: nn.unbox(_boxed_state(model, tx, r)), out_shardings=shardings)(rng)
