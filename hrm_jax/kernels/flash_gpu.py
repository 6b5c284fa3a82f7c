"""Blockwise PrefixLM attention as Pallas Triton kernels for GPUs (forward, dq, dk/dv).

The structure of jax.experimental.pallas.ops.gpu.attention (whose mask is only causal or
segment ids, not PrefixLM): one program per (query block, row, head) holds its query tile
and loops over only the key blocks its rows' ranges reach; the backward pass has a dq
kernel of the same shape and a dk/dv kernel per key block looping over the query blocks
that see it. Forward saves the output and the logsumexp. Runs on CPU with interpret=True.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from hrm_jax.kernels import ranges as ranges_lib
from hrm_jax.kernels import tiles


def _bounds(start_ref, end_ref, block: int):
  """Loop bounds [lo, hi) over blocks of `block` rows that a tile's ranges reach."""
  lo = jax.lax.div(jnp.min(start_ref[...]), block)
  hi = jax.lax.div(jnp.max(end_ref[...]) + block - 1, block)
  return lo, hi


def _forward_kernel(q_ref, k_ref, v_ref, ks_ref, ke_ref, o_ref, lse_ref, *, block: int):
  q = q_ref[...]
  ks, ke = ks_ref[...][:, None], ke_ref[...][:, None]
  scale = q.shape[-1] ** -0.5

  def step(j, state):
    rows = pl.ds(j * block, block)
    mask = tiles.tile_mask(ks, ke, j * block, block)
    return tiles.forward_tile(q, k_ref[rows, :], v_ref[rows, :], mask, state, scale)

  lo, hi = _bounds(ks_ref, ke_ref, block)
  out, lse = tiles.finish(jax.lax.fori_loop(lo, hi, step, tiles.init_state(*q.shape)))
  o_ref[...] = out.astype(o_ref.dtype)
  lse_ref[...] = lse[:, 0]


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ks_ref, ke_ref, dq_ref, *,
               block: int):
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
  ks, ke = ks_ref[...][:, None], ke_ref[...][:, None]
  scale = q.shape[-1] ** -0.5

  def step(j, dq):
    rows = pl.ds(j * block, block)
    k = k_ref[rows, :]
    p = tiles.probs(q, k, tiles.tile_mask(ks, ke, j * block, block), lse, scale)
    return dq + tiles.dq_tile(tiles.dscores(p, do, v_ref[rows, :], delta), k, scale)

  lo, hi = _bounds(ks_ref, ke_ref, block)
  dq = jax.lax.fori_loop(lo, hi, step, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ks_ref, ke_ref, qs_ref,
                qe_ref, dk_ref, dv_ref, *, block: int):
  k, v = k_ref[...], v_ref[...]
  first_key = pl.program_id(0) * block
  scale = k.shape[-1] ** -0.5

  def step(i, dkv):
    rows = pl.ds(i * block, block)
    q, do = q_ref[rows, :], do_ref[rows, :]
    mask = tiles.tile_mask(ks_ref[rows][:, None], ke_ref[rows][:, None], first_key, block)
    p = tiles.probs(q, k, mask, lse_ref[rows][:, None], scale)
    ds = tiles.dscores(p, do, v, delta_ref[rows][:, None])
    return dkv[0] + tiles.dk_tile(ds, q, scale), dkv[1] + tiles.dv_tile(p, do)

  lo, hi = _bounds(qs_ref, qe_ref, block)
  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(lo, hi, step, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _check(q_BxSxHxK: jax.Array, block: int) -> None:
  k = q_BxSxHxK.shape[-1]
  for name, n in (("head_dim", k), ("attention_chunk", block)):
    if n < 16 or n & (n - 1):
      raise ValueError(f"attention_impl='pallas_gpu' needs {name} a power of two >= 16 "
                       f"(Triton tiles), got {n}")


def _specs(s: int, k: int, block: int):
  """BlockSpecs on grid (block index, row, head): a tile, a whole row, and [B, H, S] and
  [B, S] vectors by tile or whole."""
  tile = pl.BlockSpec((None, block, None, k), lambda i, r, hd: (r, i, hd, 0))
  row = pl.BlockSpec((None, s, None, k), lambda i, r, hd: (r, 0, hd, 0))
  stat_tile = pl.BlockSpec((None, None, block), lambda i, r, hd: (r, hd, i))
  stat_row = pl.BlockSpec((None, None, s), lambda i, r, hd: (r, hd, 0))
  range_tile = pl.BlockSpec((None, block), lambda i, r, hd: (r, i))
  range_row = pl.BlockSpec((None, s), lambda i, r, hd: (r, 0))
  return tile, row, stat_tile, stat_row, range_tile, range_row


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret: bool, name: str):
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=interpret, name=name,
                        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def flash_attention(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                    mask_ranges: ranges_lib.Ranges, block: int,
                    interpret: bool = False) -> jax.Array:
  """PrefixLM attention [B, S, H, K]; any S (padded to the block internally)."""
  return _forward(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, mask_ranges, block, interpret)[0]


def _forward(q, k, v, mask_ranges, block, interpret):
  _check(q, block)
  b, s, h, d = q.shape
  r, padded = ranges_lib.pad_rows(mask_ranges, block)
  tile, row, stat_tile, _, range_tile, _ = _specs(padded, d, block)
  qp, kp, vp = (ranges_lib.pad_seq(x, padded) for x in (q, k, v))
  out, lse_BxHxS = _call(
      functools.partial(_forward_kernel, block=block), (padded // block, b, h),
      [tile, row, row, range_tile, range_tile], [tile, stat_tile],
      [jax.ShapeDtypeStruct(qp.shape, q.dtype),
       jax.ShapeDtypeStruct((b, h, padded), jnp.float32)],
      interpret, "prefix_lm_flash_forward")(qp, kp, vp, r.k_start, r.k_end)
  return out[:, :s], (q, k, v, mask_ranges, out, lse_BxHxS)


def _flash_fwd(q, k, v, mask_ranges, block, interpret):
  return _forward(q, k, v, mask_ranges, block, interpret)


def _flash_bwd(block, interpret, residuals, do_BxSxHxK):
  q, k, v, mask_ranges, out, lse_BxHxS = residuals
  b, s, h, d = q.shape
  r, padded = ranges_lib.pad_rows(mask_ranges, block)
  qp, kp, vp, dop = (ranges_lib.pad_seq(x, padded)
                     for x in (q, k, v, do_BxSxHxK.astype(q.dtype)))
  delta_BxHxS = jnp.einsum("bshk,bshk->bhs", dop.astype(jnp.float32),
                           out.astype(jnp.float32))
  tile, row, stat_tile, stat_row, range_tile, range_row = _specs(padded, d, block)
  grid = (padded // block, b, h)
  dq = _call(functools.partial(_dq_kernel, block=block), grid,
             [tile, row, row, tile, stat_tile, stat_tile, range_tile, range_tile], tile,
             jax.ShapeDtypeStruct(qp.shape, q.dtype), interpret, "prefix_lm_flash_dq")(
                 qp, kp, vp, dop, lse_BxHxS, delta_BxHxS, r.k_start, r.k_end)
  dk, dv = _call(functools.partial(_dkv_kernel, block=block), grid,
                 [row, tile, tile, row, stat_row, stat_row, range_row, range_row,
                  range_tile, range_tile], [tile, tile],
                 [jax.ShapeDtypeStruct(kp.shape, k.dtype),
                  jax.ShapeDtypeStruct(vp.shape, v.dtype)], interpret, "prefix_lm_flash_dkv")(
                      qp, kp, vp, dop, lse_BxHxS, delta_BxHxS, r.k_start, r.k_end,
                      r.q_start, r.q_end)
  return dq[:, :s], dk[:, :s], dv[:, :s], None


flash_attention.defvjp(_flash_fwd, _flash_bwd)
