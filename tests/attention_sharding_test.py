"""Attention kernels under a device mesh: the Pallas kernels (interpreted on CPU) run inside
shard_map on each device's rows and heads, equal dense attention sharded the same way, and
the compiled step gathers no q/k/v along the batch; `chunked` is partitioned by XLA alone."""

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import hrm_jax
from hrm_jax import attention
from hrm_jax import sharding as sharding_lib
from helpers import random_rows, tiny_config

# Triton tiles need a power-of-two chunk >= 16; the TPU kernel takes multiples of 8.
CHUNKS = {"dense": 8, "chunked": 8, "pallas_gpu": 16, "pallas_tpu": 8}
B, S, H, K = 8, 16, 2, 16  # rows, seq, heads, head_dim
MODEL_SEQ = 24  # no parameter dimension has this length: it marks activations in the HLO


def _all_gathers(hlo: str) -> list[tuple[int, ...]]:
  """Result shapes of the all-gathers in compiled HLO text."""
  shapes = re.findall(r"= \w+\[([\d,]*)\][^ ]* all-gather\(", hlo)
  return [tuple(int(d) for d in s.split(",") if d) for s in shapes]


def _attend_grads(impl: str, mesh_shape, in_mesh: bool = True):
  """Jitted, sharded forward + backward of `attention.attend`; outputs, grads, compiled HLO."""
  mesh = sharding_lib.make_mesh(mesh_shape)
  rng = np.random.default_rng(0)
  batch = random_rows(rng, B, S, 20, max_examples=3)
  q, k, v, w = (jnp.asarray(rng.standard_normal((B, S, H, K)), jnp.float32) for _ in range(4))

  def loss(q, k, v, seg, prefix):
    out = attention.attend(q, k, v, attention.make_mask_info(seg, prefix, impl), impl,
                           CHUNKS[impl])
    return jnp.sum(out * w), out

  fn = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)
  qkv = NamedSharding(mesh, P(sharding_lib.BATCH_AXES, None, "tensor", None))
  rows = sharding_lib.batch_sharding(mesh)
  step = jax.jit(sharding_lib.traced_in_mesh(fn, mesh) if in_mesh else fn,
                 in_shardings=(qkv, qkv, qkv, rows, rows))
  args = (q, k, v, jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["prefix_mask"]))
  compiled = step.lower(*args).compile()
  (_, out), grads = compiled(*args)
  return out, grads, compiled.as_text()


@functools.lru_cache(maxsize=None)
def _dense(mesh_shape):
  return _attend_grads("dense", mesh_shape)


@pytest.mark.parametrize("impl,mesh_shape", [
    ("pallas_tpu", (2, 2, 2)), ("pallas_gpu", (1, 4, 2)), ("chunked", (2, 2, 2))])
def test_sharded_kernels_equal_dense_and_gather_no_qkv(impl, mesh_shape):
  out, grads, hlo = _attend_grads(impl, mesh_shape)
  ref_out, ref_grads, _ = _dense(mesh_shape)
  # float32: outputs to 1e-5, gradients to 1e-4 (online vs dense softmax reorder sums).
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-4)
  # Rows stay on their devices: no all-gather at all in attention forward + backward.
  assert _all_gathers(hlo) == [], _all_gathers(hlo)
  # The kernels' outputs keep the rows-over-(data, fsdp), heads-over-tensor layout.
  assert out.sharding.spec == P(sharding_lib.BATCH_AXES, None, "tensor", None)


def test_pallas_without_the_mesh_in_context_gathers_the_batch():
  # The control for the check above: a bare pallas_call makes XLA gather whole rows.
  _, _, hlo = _attend_grads("pallas_tpu", (2, 2, 2), in_mesh=False)
  assert any(shape[0] == B for shape in _all_gathers(hlo))


def test_attention_specs_replicate_what_the_mesh_does_not_divide():
  mesh = sharding_lib.make_mesh((2, 2, 2))
  qkv, row = sharding_lib.attention_specs(mesh, (8, 16, 2, 16))
  assert (qkv, row) == (P(("data", "fsdp"), None, "tensor", None), P(("data", "fsdp"), None))
  # 2 rows over 4 batch devices, 3 heads over 2 tensor devices: both replicated.
  qkv, row = sharding_lib.attention_specs(mesh.abstract_mesh, (2, 16, 3, 16))
  assert (qkv, row) == (P(None, None, None, None), P(None, None))
  other = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(4, 2), ("x", "y"))
  with pytest.raises(ValueError, match="expect \\('data', 'fsdp', 'tensor'\\)"):
    sharding_lib.attention_specs(other, (8, 16, 2, 16))


def _model_grads(impl: str, mesh):
  """Sharded (FSDP params, rows over data x fsdp) forward + backward of a tiny model: one
  Transformer layer keeps the interpreted Pallas kernels' compile short."""
  cfg = tiny_config("transformer", n_layers=1, vocab_size=64)
  model = hrm_jax.LanguageModel(cfg, hrm_jax.Execution(attention_impl=impl,
                                                       attention_chunk=CHUNKS[impl]))
  batch = {k: jnp.asarray(v) for k, v in
           random_rows(np.random.default_rng(1), B, MODEL_SEQ, cfg.vocab_size).items()}
  init = lambda r: model.init(r, batch)
  shardings = sharding_lib.param_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
  variables = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(
      jax.random.PRNGKey(0))
  w = jnp.asarray(np.random.default_rng(2).standard_normal((B, MODEL_SEQ, cfg.vocab_size)),
                  jnp.float32)

  def loss(params, batch):
    logits = model.apply({**variables, "params": params}, batch)
    return jnp.sum(logits * w), logits

  step = jax.jit(sharding_lib.traced_in_mesh(jax.value_and_grad(loss, has_aux=True), mesh),
                 in_shardings=(shardings["params"], sharding_lib.batch_sharding(mesh)))
  compiled = step.lower(variables["params"], batch).compile()
  (_, logits), grads = compiled(variables["params"], batch)
  return logits, grads, compiled.as_text(), cfg


def test_sharded_model_with_pallas_equals_dense():
  mesh = sharding_lib.make_mesh((2, 2, 2))
  logits, grads, hlo, cfg = _model_grads("pallas_tpu", mesh)
  ref_logits, ref_grads, _, _ = _model_grads("dense", mesh)
  # float32: logits to 1e-5, parameter gradients to 1e-4.
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-4), grads, ref_grads)
  # FSDP gathers parameters and tensor parallelism gathers hidden features, but no
  # [rows, seq, heads, head_dim] activation (any layout) is gathered beyond a device's rows.
  rows_per_device = B // (mesh.shape["data"] * mesh.shape["fsdp"])
  gathered = [s for s in _all_gathers(hlo)
              if len(s) >= 4 and MODEL_SEQ in s and cfg.head_dim in s and s[0] > rows_per_device]
  assert gathered == [], gathered
