"""The jitted train step: sharded over meshes == single device; micro-batching == one batch."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hrm_jax import loss as loss_lib
from hrm_jax import optim
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel
from hrm_jax.train import state as state_lib
from hrm_jax.train.bp_schedule import bp_steps_at
from hrm_jax.train.step import _microbatch_sums, jit_train_step, train_step
from helpers import (NumpyAdamAtan2, group_of, named, random_rows, reference_has_grad,
                     tiny_config)

ROWS, SEQ = 8, 16


def make_batch(seed):
  cfg = tiny_config()
  b = random_rows(np.random.default_rng(seed), ROWS, SEQ, cfg.vocab_size)
  labels = np.where(~b["prefix_mask"] & (b["segment_ids"] > 0), np.roll(b["inputs"], -1, 1),
                    loss_lib.IGNORE_LABEL)
  return {**b, "labels": labels.astype(np.int32)}


def run_steps(mesh_shape, microbatches=1, steps=(2, 3), loss_chunk=0):
  cfg = tiny_config(vocab_size=64)
  model = LanguageModel(cfg)
  tx = optim.adam_atan2(optim.warmup_cosine(1e-2, 1, 10), 0.9, 0.95, 0.1)
  n = int(np.prod(mesh_shape))
  mesh = sharding_lib.make_mesh(mesh_shape, jax.devices()[:n])
  shardings = state_lib.state_shardings(model, tx, mesh)
  state = state_lib.init_state(model, tx, jax.random.PRNGKey(0), shardings)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  losses = []
  for i, bp in enumerate(steps):
    step = functools.partial(train_step, model=model, tx=tx, bp_steps=bp,
                             microbatches=microbatches, ema_decay=0.9, skip_nonfinite=False,
                             loss_chunk=loss_chunk)
    fn = jax.jit(sharding_lib.traced_in_mesh(step, mesh),
                 in_shardings=(shardings, batch_sharding), donate_argnums=0)
    batch = {k: jax.device_put(v, batch_sharding) for k, v in make_batch(i).items()}
    state, metrics = fn(state, batch)
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), losses, shardings


@functools.lru_cache(maxsize=None)
def single_device():
  return run_steps((1, 1, 1))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(mesh_shape):
  state, losses, shardings = run_steps(mesh_shape)
  ref_state, ref_losses, _ = single_device()
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # Adam-atan2 normalises every gradient entry, so reduction-order noise in near-zero
  # gradients moves a parameter by up to ~1e-3 of the lr (1e-2): atol 5e-5.
  chex.assert_trees_all_close(state, ref_state, rtol=1e-4, atol=5e-5)
  # Parameters really are split (FSDP over `embed`), not replicated.
  kernel = shardings.params["core"]["H"]["layers"]["mlp"]["down_proj"]["kernel"]
  if mesh_shape[1] > 1:
    assert "fsdp" in str(kernel.spec)


@pytest.mark.parametrize("microbatches,loss_chunk", [(4, 0), (1, 4)])
def test_microbatches_and_loss_chunks_equal_one_batch(microbatches, loss_chunk):
  state, losses, _ = run_steps((1, 1, 1), microbatches=microbatches, loss_chunk=loss_chunk)
  ref_state, ref_losses, _ = single_device()
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  chex.assert_trees_all_close(state, ref_state, rtol=1e-4, atol=5e-5)


def test_mesh_errors():
  with pytest.raises(ValueError, match="at most one may be -1"):
    sharding_lib.make_mesh((-1, -1, 1))
  with pytest.raises(ValueError, match="needs 27 devices"):
    sharding_lib.make_mesh((3, 3, 3))
  assert sharding_lib.make_mesh((2, -1, 1)).shape == {"data": 2, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_twelve_steps_follow_the_reference_optimizer(arch):
  """The real jitted step, bp_steps warming up from 2, against the reference optimiser's
  per-tensor semantics in NumPy (float64), fed the gradients of the same loss at its own
  parameters and told which tensors have `grad is None` by the reference's recursion
  (helpers.reference_has_grad). hrm's embedding is frozen for the bp_steps-2 steps, then
  counts from 1; trm's never moves. Tolerances: loss 2e-5; each parameter and EMA tensor
  within 1e-4 of how far training moved it (max |final - initial|)."""
  cfg = tiny_config(arch, vocab_size=64)
  model = LanguageModel(cfg)
  total, steps = 60, 12
  schedule = optim.warmup_cosine(1e-2, 2, total, 0.1)
  tx = optim.adam_atan2(schedule, 0.9, 0.95, 0.1)
  train_cfg = ml_collections.ConfigDict(dict(microbatches=1, ema_decay=0.8,
                                             skip_nonfinite=False, loss_chunk=0))
  mesh = sharding_lib.make_mesh((1, 1, 1), jax.devices()[:1])
  shardings = state_lib.state_shardings(model, tx, mesh)
  state = state_lib.init_state(model, tx, jax.random.PRNGKey(0), shardings)
  init = named(state.params)
  ref = NumpyAdamAtan2(init, 0.9, 0.95, 0.1, ema_decay=0.8)

  def loss(params, batch, bp):
    total = jnp.sum(batch["labels"] != loss_lib.IGNORE_LABEL).astype(jnp.float32)
    return _microbatch_sums(model, 0, params, state.buffers, batch, bp, total)[0]

  loss_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=2)
  fns, bps = {}, []
  for step in range(steps):
    bp = bp_steps_at(step + 1, total, cfg)
    bps.append(bp)
    batch = make_batch(step)
    ref_params = jax.tree.unflatten(jax.tree.structure(state.params),
                                    [np.float32(ref.p[k]) for k in init])
    ref_loss, grads = loss_and_grad(ref_params, batch, bp)
    reached = reference_has_grad(cfg, bp)
    ref.step({k: g if reached[group_of(k)] else None for k, g in named(grads).items()},
             float(schedule(step)))
    if bp not in fns:
      fns[bp] = jit_train_step(model, tx, train_cfg, shardings, mesh, bp)
    state, metrics = fns[bp](state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_loss), atol=2e-5,
                               err_msg=f"loss of step {step + 1}")
  if arch == "hrm":
    assert bps[0] == 2 and bps[-1] == 5 and bps.count(2) == 3
  params, ema = named(state.params), named(state.ema)
  for k in init:
    moved = np.abs(ref.p[k] - init[k]).max()
    for got, want, what in ((params[k], ref.p[k], "param"), (ema[k], ref.ema[k], "ema")):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * moved, err_msg=f"{what} {k}")
  counts = named(state.opt_state.counts)
  assert counts == {k: ref.t[k] for k in init}
  frozen = 3 if arch == "hrm" else steps
  assert counts["embed_tokens"] == steps - frozen
  if arch == "trm":
    np.testing.assert_array_equal(params["embed_tokens"], init["embed_tokens"])
    np.testing.assert_array_equal(ema["embed_tokens"], init["embed_tokens"])
