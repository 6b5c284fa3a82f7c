"""Online-softmax tile math shared by every blockwise attention kernel (one head, one tile).

Pure jnp/lax on 2-D arrays so the same code runs in XLA, in Pallas Triton and in Pallas
Mosaic TPU kernels. Row statistics are [rows, 1] (the layout Mosaic wants). A tile's mask
comes from the per-row ranges; masked entries get probability exactly 0, so fully masked
rows of a tile change nothing and no -inf ever meets -inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite "-inf": NEG - NEG is 0, not NaN
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _dot(a, b, dims=(((1,), (0,)), ((), ()))):
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def tile_mask(start_Qx1: jax.Array, end_Qx1: jax.Array, first_key, n_keys: int) -> jax.Array:
  """[Q, T] bool: key first_key + t lies in row q's range [start, end)."""
  key_1xT = first_key + jax.lax.broadcasted_iota(jnp.int32, (1, n_keys), 1)
  return (key_1xT >= start_Qx1) & (key_1xT < end_Qx1)


def init_state(rows: int, head_dim: int):
  """(running max, running sum, unnormalised output) before any tile."""
  return (jnp.full((rows, 1), NEG, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
          jnp.zeros((rows, head_dim), jnp.float32))


def forward_tile(q_QxK, k_TxK, v_TxK, mask_QxT, state, scale: float):
  """One online-softmax step: fold keys/values k, v into the running state."""
  m_Qx1, l_Qx1, acc_QxK = state
  s_QxT = jnp.where(mask_QxT, _dot(q_QxK, k_TxK, _NT) * scale, NEG)
  m_new = jnp.maximum(m_Qx1, s_QxT.max(axis=-1, keepdims=True))
  p_QxT = jnp.where(mask_QxT, jnp.exp(s_QxT - m_new), 0.0)
  corr_Qx1 = jnp.exp(m_Qx1 - m_new)
  l_new = l_Qx1 * corr_Qx1 + p_QxT.sum(axis=-1, keepdims=True)
  acc_new = acc_QxK * corr_Qx1 + _dot(p_QxT.astype(v_TxK.dtype), v_TxK)
  return m_new, l_new, acc_new


def finish(state):
  """(output [Q, K] float32, logsumexp [Q, 1]) from the final state."""
  m_Qx1, l_Qx1, acc_QxK = state
  return acc_QxK / l_Qx1, m_Qx1 + jnp.log(l_Qx1)


def probs(q_QxK, k_TxK, mask_QxT, lse_Qx1, scale: float) -> jax.Array:
  """[Q, T] float32 softmax probabilities of a tile, rebuilt from the saved logsumexp."""
  s_QxT = _dot(q_QxK, k_TxK, _NT) * scale
  return jnp.where(mask_QxT, jnp.exp(s_QxT - lse_Qx1), 0.0)


def dscores(p_QxT, do_QxK, v_TxK, delta_Qx1) -> jax.Array:
  """[Q, T] gradient wrt the scaled scores; delta = rowsum(dO * O)."""
  return p_QxT * (_dot(do_QxK, v_TxK, _NT) - delta_Qx1)


def dq_tile(ds_QxT, k_TxK, scale: float) -> jax.Array:
  return _dot(ds_QxT.astype(k_TxK.dtype), k_TxK) * scale


def dk_tile(ds_QxT, q_QxK, scale: float) -> jax.Array:
  return _dot(ds_QxT.astype(q_QxK.dtype), q_QxK, _TN) * scale


def dv_tile(p_QxT, do_QxK) -> jax.Array:
  return _dot(p_QxT.astype(do_QxK.dtype), do_QxK, _TN)
