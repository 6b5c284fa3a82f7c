"""Adam-atan2, the schedule and the EMA against NumPy transcriptions of the reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrm_jax import optim


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
  for lr, warmup, total, ratio in [(2.2e-4, 20, 100, 1.0), (3e-5, 0, 50, 0.1),
                                   (1e-3, 10, 60, 0.0)]:
    schedule = optim.warmup_cosine(lr, warmup, total, ratio)
    for step in range(total):
      np.testing.assert_allclose(float(schedule(step)),
                                 reference_lr(step + 1, lr, warmup, total, ratio), rtol=1e-5,
                                 err_msg=f"step {step}")


def test_ema_update():
  ema = {"w": jnp.zeros(3)}
  params = {"w": jnp.ones(3)}
  out = optim.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(np.asarray(out["w"]), 0.1)
