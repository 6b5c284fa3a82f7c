"""The jitted train step: sharded over meshes == single device; micro-batching == one batch."""

import functools

import jax
import numpy as np
import pytest

from hrm_jax import loss as loss_lib
from hrm_jax import optim
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel
from hrm_jax.train import state as state_lib
from hrm_jax.train.step import train_step
from helpers import random_rows, tiny_config

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
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
  # Parameters really are split (FSDP over `embed`), not replicated.
  kernel = shardings.params["core"]["H"]["layers"]["mlp"]["down_proj"]["kernel"]
  if mesh_shape[1] > 1:
    assert "fsdp" in str(kernel.spec)


@pytest.mark.parametrize("microbatches,loss_chunk", [(4, 0), (1, 4)])
def test_microbatches_and_loss_chunks_equal_one_batch(microbatches, loss_chunk):
  state, losses, _ = run_steps((1, 1, 1), microbatches=microbatches, loss_chunk=loss_chunk)
  ref_state, ref_losses, _ = single_device()
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)


def test_mesh_errors():
  with pytest.raises(ValueError, match="at most one may be -1"):
    sharding_lib.make_mesh((-1, -1, 1))
  with pytest.raises(ValueError, match="needs 27 devices"):
    sharding_lib.make_mesh((3, 3, 3))
  assert sharding_lib.make_mesh((2, -1, 1)).shape == {"data": 2, "fsdp": 4, "tensor": 1}
