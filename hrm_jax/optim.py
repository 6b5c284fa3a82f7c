"""Adam-atan2 with decoupled weight decay, the learning-rate schedule and the parameter EMA
(docs/reference.md#optimiser).

Per parameter and step, with the scheduled lr:
    p  *= 1 - lr * weight_decay                    (before the update, every parameter)
    m   = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g^2;   t += 1
    p  -= lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
atan2 needs no epsilon and is exactly invariant to the scale of the gradient.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

Schedule = Union[float, optax.Schedule]


class AdamAtan2State(NamedTuple):
  count: jax.Array  # [] int32, steps taken
  mu: Any  # first moments, like params
  nu: Any  # second moments, like params


def adam_atan2(learning_rate: Schedule, b1: float = 0.9, b2: float = 0.95,
               weight_decay: float = 0.1) -> optax.GradientTransformation:
  """The reference optimiser as an optax transformation; updates are added to params."""

  def init(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return AdamAtan2State(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                          jax.tree.map(zeros, params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("adam_atan2 needs params (decoupled weight decay)")
    count = state.count + 1
    t = count.astype(jnp.float32)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g.astype(jnp.float32) - m), state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32)),
                      state.nu, grads)
    step_size = lr / (1 - b1**t)
    v_scale = 1.0 / jnp.sqrt(1 - b2**t)

    def param_update(p, m, v):
      decayed = p * (1 - lr * weight_decay)
      new_p = decayed - step_size * jnp.arctan2(m, jnp.sqrt(v) * v_scale)
      return (new_p - p).astype(p.dtype)

    updates = jax.tree.map(param_update, params, mu, nu)
    return updates, AdamAtan2State(count, mu, nu)

  return optax.GradientTransformation(init, update)


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int,
                  lr_min_ratio: float = 1.0) -> optax.Schedule:
  """Linear warm-up to `lr`, then cosine to `lr * lr_min_ratio` at `total_steps`.

  With lr_min_ratio 1.0 (pretraining) the rate is constant after warm-up. The value at step
  s is the rate of the update that takes the count from s to s + 1 (the reference steps its
  scheduler before each update with step = s + 1).
  """

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0
    warm = s / max(warmup_steps, 1)
    progress = jnp.clip((s - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = lr_min_ratio + (1 - lr_min_ratio) * 0.5 * (1 + jnp.cos(math.pi * progress))
    return lr * jnp.where(s < warmup_steps, warm, cosine)

  return schedule


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """ema + (1 - decay) * (params - ema), in float32."""
  return jax.tree.map(lambda e, p: e + (1 - decay) * (p.astype(e.dtype) - e), ema, params)
