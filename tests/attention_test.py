import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax import attention
from helpers import _np_mask, pack_rows, random_rows


@pytest.mark.parametrize("seed", range(5))
def test_mask_matches_per_query_key_ranges(seed):
  batch = random_rows(np.random.default_rng(seed), 3, 24, 50)
  got = attention.prefix_lm_mask(jnp.asarray(batch["segment_ids"]),
                                 jnp.asarray(batch["prefix_mask"]))
  np.testing.assert_array_equal(np.asarray(got),
                                _np_mask(batch["segment_ids"], batch["prefix_mask"]))


def test_mask_hand_case():
  # One row: example 1 = prompt [a b] + response [c d]; example 2 = response-only [e]; pad.
  b = pack_rows([[([1, 2], [3, 4]), ([], [5])]], 6)
  m = np.asarray(attention.prefix_lm_mask(jnp.asarray(b["segment_ids"]),
                                          jnp.asarray(b["prefix_mask"])))[0].astype(int)
  expected = np.array([
      [1, 1, 0, 0, 0, 0],  # a sees the whole prompt
      [1, 1, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],  # c: causal
      [1, 1, 1, 1, 0, 0],
      [0, 0, 0, 0, 1, 0],  # e: own example only
      [0, 0, 0, 0, 0, 1],  # padding: only itself
  ])
  np.testing.assert_array_equal(m, expected)


def test_dense_attention_matches_numpy_softmax():
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, 10, 3, 8)).astype(np.float32) for _ in range(3))
  batch = random_rows(rng, 2, 10, 20)
  mask = _np_mask(batch["segment_ids"], batch["prefix_mask"])
  out = attention.dense_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                  jnp.asarray(mask))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  s = np.where(mask[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out), np.einsum("bhqk,bkhd->bqhd", p, v),
                             rtol=1e-5, atol=1e-5)


def test_unknown_impl_is_an_error():
  x = jnp.zeros((1, 2, 1, 2))
  info = attention.make_mask_info(jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), bool), "dense")
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    attention.attend(x, x, x, info, "flash")


@pytest.mark.parametrize("seed", range(3))
def test_chunked_attention_matches_dense_outputs_and_gradients(seed):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 32, 2, 8)), jnp.float32) for _ in range(3))
  batch = random_rows(rng, 2, 32, 20, max_examples=4)
  seg, pre = jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["prefix_mask"])
  dense_info = attention.make_mask_info(seg, pre, "dense")
  chunk_info = attention.make_mask_info(seg, pre, "chunked")
  assert chunk_info.dense is None  # no [S, S] mask is built for the chunked kernel
  assert chunk_info.ranges is not None
  w = jnp.asarray(rng.standard_normal((2, 32, 2, 8)), jnp.float32)

  def loss(impl, info, q, k, v):
    return jnp.sum(attention.attend(q, k, v, info, impl, chunk=8) * w)

  dense = jax.value_and_grad(functools.partial(loss, "dense", dense_info), argnums=(0, 1, 2))
  chunked = jax.value_and_grad(functools.partial(loss, "chunked", chunk_info),
                               argnums=(0, 1, 2))
  (ld, gd), (lc, gc) = dense(q, k, v), chunked(q, k, v)
  np.testing.assert_allclose(float(lc), float(ld), rtol=1e-5)
  chex.assert_trees_all_close(gc, gd, rtol=1e-4, atol=1e-5)


def test_auto_resolves_per_backend_and_row_length():
  assert jax.default_backend() == "cpu"
  short, long = attention.AUTO_DENSE_MAX_SEQ, attention.AUTO_DENSE_MAX_SEQ + 1
  assert attention.resolve_impl("auto", short) == "dense"
  assert attention.resolve_impl("auto", long) == "chunked"
  assert attention.resolve_impl("pallas_tpu", short) == "pallas_tpu"
  info = attention.make_mask_info(jnp.ones((1, long), jnp.int32), jnp.ones((1, long), bool),
                                  "auto")
  assert info.dense is None and info.ranges is not None
