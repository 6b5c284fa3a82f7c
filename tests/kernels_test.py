"""Blockwise PrefixLM attention kernels against the dense reference: the per-query ranges,
outputs and gradients of the XLA, Pallas Triton and Pallas TPU kernels (interpreted on CPU),
tile skipping, and the O(S) memory of the XLA kernel."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax import attention
from hrm_jax.kernels import flash_gpu, flash_tpu, flash_xla
from hrm_jax.kernels import ranges as ranges_lib
from helpers import _np_mask, pack_rows, random_rows

KERNELS = {
    "chunked": flash_xla.flash_attention,
    "pallas_gpu": functools.partial(flash_gpu.flash_attention, interpret=True),
    "pallas_tpu": functools.partial(flash_tpu.flash_attention, interpret=True),
}


def _ranges(batch):
  return ranges_lib.prefix_lm_ranges(jnp.asarray(batch["segment_ids"]),
                                     jnp.asarray(batch["prefix_mask"]))


@pytest.mark.parametrize("seed", range(6))
def test_ranges_reproduce_the_mask(seed):
  # Random packings: several examples per row, empty prompts, 1-token responses, padding.
  batch = random_rows(np.random.default_rng(seed), 4, 40, 20, max_examples=5)
  got = np.asarray(ranges_lib.ranges_mask(_ranges(batch)))
  np.testing.assert_array_equal(got, _np_mask(batch["segment_ids"], batch["prefix_mask"]))


def test_query_ranges_are_the_transposed_key_ranges():
  batch = random_rows(np.random.default_rng(7), 4, 40, 20, max_examples=5)
  r = _ranges(batch)
  mask_BxQxT = _np_mask(batch["segment_ids"], batch["prefix_mask"])
  idx = np.arange(40)
  seen_by_BxTxQ = ((idx[None, None] >= np.asarray(r.q_start)[..., None])
                   & (idx[None, None] < np.asarray(r.q_end)[..., None]))
  np.testing.assert_array_equal(seen_by_BxTxQ, mask_BxQxT.transpose(0, 2, 1))


def test_ranges_hand_case():
  # prompt [a b] + response [c d]; response-only [e]; two padding tokens.
  r = _ranges(pack_rows([[([1, 2], [3, 4]), ([], [5])]], 7))
  np.testing.assert_array_equal(np.asarray(r.k_start)[0], [0, 0, 0, 0, 4, 5, 5])
  np.testing.assert_array_equal(np.asarray(r.k_end)[0], [2, 2, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(np.asarray(r.q_start)[0], [0, 0, 2, 3, 4, 5, 6])
  np.testing.assert_array_equal(np.asarray(r.q_end)[0], [4, 4, 4, 4, 5, 7, 7])


def test_fully_masked_tiles_are_outside_the_loop_bounds():
  # Four 16-token examples (prompt 8) per row, blocks of 16: only diagonal tiles are visited.
  batch = pack_rows([[(list(range(1, 9)), list(range(1, 9)))] * 4], 64)
  r = _ranges(batch)
  lo, hi = ranges_lib.block_bounds(r.k_start, r.k_end, 16, 16)
  np.testing.assert_array_equal(np.asarray(lo)[0], [0, 1, 2, 3])
  np.testing.assert_array_equal(np.asarray(hi)[0], [1, 2, 3, 4])
  qlo, qhi = ranges_lib.block_bounds(r.q_start, r.q_end, 16, 16)
  np.testing.assert_array_equal(np.asarray(qhi - qlo)[0], [1, 1, 1, 1])


# (kernel, seq, block, head_dim): seq not a multiple of the block is padded internally.
CASES = [
    ("chunked", 45, 8, 8), ("chunked", 40, 64, 8),
    ("pallas_gpu", 40, 16, 16), ("pallas_tpu", 37, 8, 8),
]


@pytest.mark.parametrize("impl,seq,block,head_dim", CASES)
def test_kernel_matches_dense_outputs_and_gradients(impl, seq, block, head_dim):
  rng = np.random.default_rng(seq + block)
  # Row 0 random; row 1 pins the edge cases: a 1-token response, an empty prompt, a
  # prompt-only example, then a padding tail.
  fixed = pack_rows([[([1, 2, 3], [4]), ([], [5]), ([6], []), ([], [7, 8, 9])]], seq)
  batch = {k: np.concatenate([v, fixed[k]])
           for k, v in random_rows(rng, 1, seq, 20, max_examples=4).items()}
  q, k, v, w = (jnp.asarray(rng.standard_normal((2, seq, 2, head_dim)), jnp.float32)
                for _ in range(4))
  mask = jnp.asarray(_np_mask(batch["segment_ids"], batch["prefix_mask"]))
  r = _ranges(batch)
  kernel = functools.partial(KERNELS[impl], mask_ranges=r, block=block)

  def loss(fn, q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out * w), out

  grad = lambda fn: jax.jit(jax.grad(functools.partial(loss, fn), (0, 1, 2), has_aux=True))
  gd, od = grad(lambda q, k, v: attention.dense_attention(q, k, v, mask))(q, k, v)
  gk, ok = grad(lambda q, k, v: kernel(q, k, v))(q, k, v)
  # float32 throughout: outputs to 1e-5, gradients to 1e-4 (the dense softmax vs the online
  # one reorder float32 sums).
  np.testing.assert_allclose(np.asarray(ok), np.asarray(od), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(gk, gd, rtol=1e-4, atol=1e-4)


def test_kernel_block_constraints_are_clear_errors():
  x = jnp.zeros((1, 32, 1, 8))
  r = _ranges(pack_rows([[([1], [2])]], 32))
  with pytest.raises(ValueError, match="pallas_gpu' needs head_dim a power of two >= 16"):
    flash_gpu.flash_attention(x, x, x, r, 16, True)
  with pytest.raises(ValueError, match="pallas_tpu' needs attention_chunk a multiple of 8"):
    flash_tpu.flash_attention(x, x, x, r, 12, True)


@pytest.mark.parametrize("platform,kernel,head_dim,block", [
    ("cuda", flash_gpu, 64, 64), ("tpu", flash_tpu, 128, 128)])
def test_pallas_kernels_lower_for_their_hardware(platform, kernel, head_dim, block):
  # No GPU/TPU here: cross-platform export runs the Pallas Triton / Mosaic lowering of the
  # forward, dq and dk/dv kernels (bfloat16, real tile sizes), not their execution.
  def grads(q, k, v, seg, prefix):
    r = ranges_lib.prefix_lm_ranges(seg, prefix)
    loss = lambda q, k, v: jnp.sum(kernel.flash_attention(q, k, v, r, block).astype(
        jnp.float32))
    return jax.grad(loss, (0, 1, 2))(q, k, v)

  x = jax.ShapeDtypeStruct((2, 512, 2, head_dim), jnp.bfloat16)
  row = lambda dtype: jax.ShapeDtypeStruct((2, 512), dtype)
  checks = [jax.export.DisabledSafetyCheck.custom_call(n)
            for n in ("__gpu$xla.gpu.triton", "tpu_custom_call")]
  exported = jax.export.export(jax.jit(grads), platforms=[platform], disabled_checks=checks)(
      x, x, x, row(jnp.int32), row(jnp.bool_))
  names = re.findall(r'name = "(prefix_lm_flash_\w+)"', exported.mlir_module())
  assert sorted(names) == ["prefix_lm_flash_dkv", "prefix_lm_flash_dq",
                           "prefix_lm_flash_forward"]


def _temp_bytes(impl: str, seq: int) -> int:
  """Compiled temp memory of forward + backward through `attention.attend`."""
  rng = np.random.default_rng(0)
  batch = random_rows(rng, 1, seq, 20, max_examples=4)
  info = attention.make_mask_info(jnp.asarray(batch["segment_ids"]),
                                  jnp.asarray(batch["prefix_mask"]), impl)
  x = jax.ShapeDtypeStruct((1, seq, 2, 16), jnp.float32)
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, info, impl, chunk=128))
  compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, x, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_linearly_dense_quadratically():
  chunked = _temp_bytes("chunked", 1024) / _temp_bytes("chunked", 256)
  dense = _temp_bytes("dense", 1024) / _temp_bytes("dense", 256)
  assert chunked < 6, chunked  # 4x the row: at most ~4x the memory (O(S)); 1.7x measured
  assert dense > 10, dense  # 4x the row: ~16x the memory (O(S^2)); 15.7x measured
