"""Adam-atan2, the schedule and the EMA against NumPy transcriptions of the reference."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrm_jax import optim
from helpers import NumpyAdamAtan2


def reference_adam_atan2(p, grads, lrs, b1, b2, wd):
  """Straight transcription of the reference optimiser's step() in float64."""
  p = p.astype(np.float64).copy()
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  out = []
  for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
    p *= 1 - lr * wd
    m += (1 - b1) * (g - m)
    v = b2 * v + (1 - b2) * g * g
    step_size = lr / (1 - b1**t)
    denom = np.sqrt(v) / math.sqrt(1 - b2**t)
    p -= step_size * np.arctan2(m, denom)
    out.append(p.copy())
  return out


def reference_lr(step, lr, warmup, total, min_ratio):
  """The reference's update_lr at its (1-based) step."""
  if step < warmup:
    return lr * min(1.0, step / warmup)
  progress = (step - warmup) / (total - warmup)
  return lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


def test_adam_atan2_matches_reference_step_by_step():
  rng = np.random.default_rng(0)
  p0 = rng.standard_normal((5, 3)).astype(np.float32)
  grads = [rng.standard_normal((5, 3)).astype(np.float32) * 10 ** rng.uniform(-3, 2)
           for _ in range(12)]
  schedule = optim.warmup_cosine(0.01, 4, 12, 0.1)
  lrs = [float(schedule(s)) for s in range(12)]
  expected = reference_adam_atan2(p0, grads, lrs, 0.9, 0.95, 0.1)
  tx = optim.adam_atan2(schedule, 0.9, 0.95, 0.1)
  params = {"w": jnp.asarray(p0)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g, want in zip(grads, expected):
    updates, state = update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params["w"]), want, rtol=2e-6, atol=2e-6)
  assert int(state.count) == 12


def test_adam_atan2_is_invariant_to_gradient_scale():
  p = {"w": jnp.ones((4,))}
  g = {"w": jnp.asarray([0.1, -2.0, 3.0, 0.0])}
  tx = optim.adam_atan2(1e-2)
  u1, _ = tx.update(g, tx.init(p), p)
  u2, _ = tx.update(jax.tree.map(lambda x: x * 1e4, g), tx.init(p), p)
  np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u2["w"]), rtol=1e-6)


def test_schedule_matches_reference():
  """Past total_steps too: the reference trains until its data runs out and its cosine goes
  on (rising again) there."""
  for lr, warmup, total, ratio in [(2.2e-4, 20, 100, 1.0), (3e-5, 0, 50, 0.1),
                                   (1e-3, 10, 60, 0.0)]:
    schedule = optim.warmup_cosine(lr, warmup, total, ratio)
    for step in range(total + 20):
      np.testing.assert_allclose(float(schedule(step)),
                                 reference_lr(step + 1, lr, warmup, total, ratio), rtol=1e-5,
                                 err_msg=f"step {step}")


def test_ema_update():
  ema = {"w": jnp.zeros(3)}
  params = {"w": jnp.ones(3)}
  out = optim.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(np.asarray(out["w"]), 0.1)


def test_tensors_without_gradient_are_left_alone_and_count_their_own_steps():
  """has_grad False: no decay, no moment, count or EMA change; a tensor that gets its first
  gradient at step 3 is bias-corrected with t = 1 there (the reference's per-tensor count)."""
  rng = np.random.default_rng(1)
  p0 = {"a": rng.standard_normal((4, 2)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32)}
  schedule = optim.warmup_cosine(0.01, 2, 8, 0.1)
  tx = optim.adam_atan2(schedule, 0.9, 0.95, 0.1)
  ref = NumpyAdamAtan2(p0, 0.9, 0.95, 0.1, ema_decay=0.8)
  params = jax.tree.map(jnp.asarray, p0)
  state, ema = tx.init(params), params
  update = {b: jax.jit(functools.partial(tx.update, has_grad={"a": True, "b": b}))
            for b in (False, True)}
  for step in range(6):
    has_grad = {"a": True, "b": step >= 2}
    g = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p0.items()}
    ref.step({k: g[k] if has_grad[k] else None for k in g}, float(schedule(step)))
    updates, state = update[has_grad["b"]](g, state, params)
    params = optax.apply_updates(params, updates)
    ema = optim.ema_update(ema, params, 0.8, has_grad)
    for k in p0:
      np.testing.assert_allclose(np.asarray(params[k]), ref.p[k], rtol=2e-6, atol=2e-6)
      np.testing.assert_allclose(np.asarray(ema[k]), ref.ema[k], rtol=2e-6, atol=2e-6)
    if step < 2:
      np.testing.assert_array_equal(np.asarray(params["b"]), p0["b"])
  assert int(state.count) == 6
  assert {k: int(v) for k, v in state.counts.items()} == {"a": 6, "b": 4}
