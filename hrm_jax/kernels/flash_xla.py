"""Blockwise (flash) PrefixLM attention in plain JAX: the portable, O(S)-memory kernel.

Forward: for each query block, an online softmax over only the key blocks its rows reach
(a while loop bounded by the block's key range, so fully masked tiles cost nothing).
It saves the output and the logsumexp, not the probabilities; the backward pass rebuilds
each tile's probabilities from them (a dq pass over query blocks, a dk/dv pass over key
blocks bounded by the queries that see them). Memory is O(S * block) per head both ways.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hrm_jax.kernels import ranges as ranges_lib
from hrm_jax.kernels import tiles


def _blocks(x_SxK: jax.Array, i, block: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x_SxK, i * block, block)


def _forward_head(q_SxK, k_SxK, v_SxK, ks_Sx1, ke_Sx1, lo_N, hi_N, block: int):
  """One row and head: (output [S, K] float32, logsumexp [S, 1])."""
  scale = q_SxK.shape[-1] ** -0.5

  def q_block(i):
    q, ks, ke = (_blocks(x, i, block) for x in (q_SxK, ks_Sx1, ke_Sx1))

    def step(j, state):
      mask = tiles.tile_mask(ks, ke, j * block, block)
      return tiles.forward_tile(q, _blocks(k_SxK, j, block), _blocks(v_SxK, j, block), mask,
                                state, scale)

    return tiles.finish(jax.lax.fori_loop(lo_N[i], hi_N[i], step,
                                          tiles.init_state(block, q.shape[-1])))

  out_NxQxK, lse_NxQx1 = jax.lax.map(q_block, jnp.arange(lo_N.shape[0]))
  return out_NxQxK.reshape(q_SxK.shape), lse_NxQx1.reshape(-1, 1)


def _backward_head(q_SxK, k_SxK, v_SxK, do_SxK, lse_Sx1, delta_Sx1, ks_Sx1, ke_Sx1,
                   lo_N, hi_N, qlo_N, qhi_N, block: int):
  """One row and head: (dq, dk, dv), each [S, K] float32."""
  scale = q_SxK.shape[-1] ** -0.5

  def q_block(i):
    q, do, lse, delta, ks, ke = (_blocks(x, i, block)
                                 for x in (q_SxK, do_SxK, lse_Sx1, delta_Sx1, ks_Sx1, ke_Sx1))

    def step(j, dq):
      k, v = _blocks(k_SxK, j, block), _blocks(v_SxK, j, block)
      p = tiles.probs(q, k, tiles.tile_mask(ks, ke, j * block, block), lse, scale)
      return dq + tiles.dq_tile(tiles.dscores(p, do, v, delta), k, scale)

    return jax.lax.fori_loop(lo_N[i], hi_N[i], step, jnp.zeros(q.shape, jnp.float32))

  def k_block(j):
    k, v = _blocks(k_SxK, j, block), _blocks(v_SxK, j, block)

    def step(i, dkv):
      q, do, lse, delta, ks, ke = (_blocks(x, i, block) for x in
                                   (q_SxK, do_SxK, lse_Sx1, delta_Sx1, ks_Sx1, ke_Sx1))
      p = tiles.probs(q, k, tiles.tile_mask(ks, ke, j * block, block), lse, scale)
      ds = tiles.dscores(p, do, v, delta)
      return dkv[0] + tiles.dk_tile(ds, q, scale), dkv[1] + tiles.dv_tile(p, do)

    zeros = jnp.zeros(k.shape, jnp.float32)
    return jax.lax.fori_loop(qlo_N[j], qhi_N[j], step, (zeros, zeros))

  n = lo_N.shape[0]
  dq = jax.lax.map(q_block, jnp.arange(n)).reshape(q_SxK.shape)
  dk, dv = (x.reshape(k_SxK.shape) for x in jax.lax.map(k_block, jnp.arange(n)))
  return dq, dk, dv


# vmap a per-(row, head) function over heads (axis 1 of [S, H, K]) and rows.
def _per_row_and_head(fn, head_args: int, row_args: int):
  over_heads = jax.vmap(fn, in_axes=(1,) * head_args + (None,) * row_args, out_axes=1)
  return jax.vmap(over_heads)


def _prepare(mask_ranges: ranges_lib.Ranges, block: int):
  """Padded per-query ranges [B, S, 1] and the block reach of query and key blocks."""
  r, padded = ranges_lib.pad_rows(mask_ranges, block)
  lo, hi = ranges_lib.block_bounds(r.k_start, r.k_end, block, block)
  qlo, qhi = ranges_lib.block_bounds(r.q_start, r.q_end, block, block)
  return r.k_start[..., None], r.k_end[..., None], lo, hi, qlo, qhi, padded


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def flash_attention(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                    mask_ranges: ranges_lib.Ranges, block: int) -> jax.Array:
  """PrefixLM attention [B, S, H, K] with query and key blocks of `block` rows; any S
  (the row is padded to a multiple of the block internally)."""
  return _forward(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, mask_ranges, block)[0]


def _forward(q, k, v, mask_ranges, block):
  s = q.shape[1]
  ks, ke, lo, hi, _, _, padded = _prepare(mask_ranges, block)
  fwd = _per_row_and_head(functools.partial(_forward_head, block=block), 3, 4)
  out, lse_BxSxHx1 = fwd(*(ranges_lib.pad_seq(x, padded) for x in (q, k, v)), ks, ke, lo, hi)
  out = out[:, :s].astype(q.dtype)
  return out, (q, k, v, mask_ranges, out, lse_BxSxHx1)


def _flash_fwd(q, k, v, mask_ranges, block):
  return _forward(q, k, v, mask_ranges, block)


def _flash_bwd(block, residuals, do_BxSxHxK):
  q, k, v, mask_ranges, out, lse_BxSxHx1 = residuals
  s = q.shape[1]
  ks, ke, lo, hi, qlo, qhi, padded = _prepare(mask_ranges, block)
  delta_BxSxH = jnp.sum(do_BxSxHxK.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  pad = functools.partial(ranges_lib.pad_seq, padded=padded)
  bwd = _per_row_and_head(functools.partial(_backward_head, block=block), 6, 6)
  dq, dk, dv = bwd(pad(q), pad(k), pad(v), pad(do_BxSxHxK.astype(q.dtype)), lse_BxSxHx1,
                   pad(delta_BxSxH[..., None]), ks, ke, lo, hi, qlo, qhi)
  return (dq[:, :s].astype(q.dtype), dk[:, :s].astype(k.dtype), dv[:, :s].astype(v.dtype),
          None)


flash_attention.defvjp(_flash_fwd, _flash_bwd)
