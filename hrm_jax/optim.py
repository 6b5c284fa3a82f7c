"""Adam-atan2 with decoupled weight decay, the learning-rate schedule and the parameter EMA
(docs/reference.md#optimiser).

Per parameter tensor p that receives a gradient g in this step, with the scheduled lr:
    p  *= 1 - lr * weight_decay                    (before the update)
    m   = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g^2;   t_p += 1
    p  -= lr / (1 - b1^t_p) * atan2(m, sqrt(v) / sqrt(1 - b2^t_p))
    ema = ema + (1 - ema_decay) * (p - ema)
A tensor the step does not differentiate (the reference's `grad is None`: the embedding while
truncated backprop runs only the last passes, or always in trm) is left alone: no decay, no
moment, count or EMA change. Its count t_p is its own, so its bias correction starts at 1 the
first time it gets a gradient. Which tensors those are is static per compiled step
(`hrm_jax.train.grad_mask`). atan2 needs no epsilon and is exactly invariant to the scale of
the gradient.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Union

import flax.core.meta
import jax
import jax.numpy as jnp
import optax

Schedule = Union[float, optax.Schedule]


class AdamAtan2State(NamedTuple):
  count: jax.Array  # [] int32: updates taken, the step of the lr schedule
  mu: Any  # first moments, like params
  nu: Any  # second moments, like params
  counts: Any  # [] int32 per parameter tensor: updates it took (its bias correction)


def _per_tensor(fn, params):
  """fn of each parameter tensor; a logical-axis box counts as one tensor, so a per-tensor
  scalar is never given the box's axis names."""
  return jax.tree.map(fn, params, is_leaf=lambda x: isinstance(x, flax.core.meta.AxisMetadata))


def all_tensors(tree: Any) -> Any:
  """A has_grad tree that updates every tensor (a step that differentiates everything)."""
  return jax.tree.map(lambda _: True, tree)


def adam_atan2(learning_rate: Schedule, b1: float = 0.9, b2: float = 0.95,
               weight_decay: float = 0.1) -> optax.GradientTransformationExtraArgs:
  """The reference optimiser as an optax transformation; updates are added to params.

  `update(grads, state, params, has_grad=None)`: has_grad is a static tree of Python bools
  like params (None: every tensor gets a gradient); a False tensor is skipped entirely.
  """

  def init(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return AdamAtan2State(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                          jax.tree.map(zeros, params),
                          _per_tensor(lambda _: jnp.zeros([], jnp.int32), params))

  def update(grads, state, params=None, *, has_grad: Optional[Any] = None):
    if params is None:
      raise ValueError("adam_atan2 needs params (decoupled weight decay)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    flags = all_tensors(params) if has_grad is None else has_grad

    def one(flag: bool, g, p, m, v, t):
      """(update, m, v, t) of one tensor."""
      if not flag:
        return jnp.zeros_like(p), m, v, t
      g = g.astype(jnp.float32)
      m = m + (1 - b1) * (g - m)
      v = b2 * v + (1 - b2) * jnp.square(g)
      t = t + 1
      tf = t.astype(jnp.float32)
      decayed = p * (1 - lr * weight_decay)
      new_p = decayed - lr / (1 - b1**tf) * jnp.arctan2(m, jnp.sqrt(v) / jnp.sqrt(1 - b2**tf))
      return (new_p - p).astype(p.dtype), m, v, t

    flat_flags, treedef = jax.tree.flatten(flags)
    leaves = [treedef.flatten_up_to(x) for x in (grads, params, state.mu, state.nu,
                                                  state.counts)]
    out = [one(bool(f), *xs) for f, *xs in zip(flat_flags, *leaves)]
    updates, mu, nu, counts = (treedef.unflatten(list(col)) for col in zip(*out))
    return updates, AdamAtan2State(state.count + 1, mu, nu, counts)

  return optax.GradientTransformationExtraArgs(init, update)


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int,
                  lr_min_ratio: float = 1.0) -> optax.Schedule:
  """The reference's schedule: linear warm-up to `lr`, then cosine to `lr * lr_min_ratio` at
  `total_steps`.

  With lr_min_ratio 1.0 (pretraining) the rate is constant after warm-up. The value at step
  s is the rate of the update that takes the count from s to s + 1 (the reference steps its
  scheduler before each update with step = s + 1). Past total_steps the cosine goes on, as in
  the reference (which trains until its data runs out): the rate rises again from its minimum
  (docs/training.md#schedule-length).
  """

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0
    warm = s / max(warmup_steps, 1)
    progress = (s - warmup_steps) / max(total_steps - warmup_steps, 1)
    cosine = lr_min_ratio + (1 - lr_min_ratio) * 0.5 * (1 + jnp.cos(math.pi * progress))
    return lr * jnp.where(s < warmup_steps, warm, cosine)

  return schedule


def ema_update(ema: Any, params: Any, decay: float, has_grad: Optional[Any] = None) -> Any:
  """ema + (1 - decay) * (params - ema), in float32, for the tensors of has_grad (a static
  tree of bools like params; None: all); the others keep their EMA, as in the reference."""
  flags = all_tensors(params) if has_grad is None else has_grad
  return jax.tree.map(lambda f, e, p: e + (1 - decay) * (p.astype(e.dtype) - e) if f else e,
                      flags, ema, params)
