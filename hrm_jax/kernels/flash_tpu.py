"""Blockwise PrefixLM attention as Pallas Mosaic TPU kernels (forward, dq, dk/dv).

The TPU pipeline shape of jax.experimental.pallas.ops.tpu.flash_attention: grid
(row, head, block, reduction block) with the reduction last and running statistics in VMEM
scratch. Each block's reach [lo, hi) along the reduction axis is scalar-prefetched into
SMEM: the index map clamps the reduction block into it, so the pipeline re-uses the last
fetched tile instead of copying a fully masked one, and `pl.when` skips its compute.
Splash attention's masks are per head, not per row (dynamic ones are dense [H, S, S]), so
PrefixLM over rows with their own prompt lengths gets its own kernel here.
Runs on CPU with interpret=True.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from hrm_jax.kernels import ranges as ranges_lib
from hrm_jax.kernels import tiles


def _live(lo_ref, hi_ref, i, j):
  """Whether reduction block j lies in the reach of block i of this row."""
  b = pl.program_id(0)
  return (j >= lo_ref[b, i]) & (j < hi_ref[b, i])


def _forward_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, ks_ref, ke_ref, o_ref, lse_ref,
                    m_scr, l_scr, acc_scr, *, block: int):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_scr[...], l_scr[...], acc_scr[...] = tiles.init_state(*acc_scr.shape)

  @pl.when(_live(lo_ref, hi_ref, i, j))
  def _step():
    q = q_ref[...]
    mask = tiles.tile_mask(ks_ref[...], ke_ref[...], j * block, block)
    state = tiles.forward_tile(q, k_ref[...], v_ref[...], mask,
                               (m_scr[...], l_scr[...], acc_scr[...]), q.shape[-1] ** -0.5)
    m_scr[...], l_scr[...], acc_scr[...] = state

  @pl.when(j == pl.num_programs(3) - 1)
  def _write():
    out, lse = tiles.finish((m_scr[...], l_scr[...], acc_scr[...]))
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse


def _dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ks_ref,
               ke_ref, dq_ref, dq_scr, *, block: int):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

  @pl.when(_live(lo_ref, hi_ref, i, j))
  def _step():
    q, k = q_ref[...], k_ref[...]
    scale = q.shape[-1] ** -0.5
    p = tiles.probs(q, k, tiles.tile_mask(ks_ref[...], ke_ref[...], j * block, block),
                    lse_ref[...], scale)
    ds = tiles.dscores(p, do_ref[...], v_ref[...], delta_ref[...])
    dq_scr[...] += tiles.dq_tile(ds, k, scale)

  @pl.when(j == pl.num_programs(3) - 1)
  def _write():
    dq_ref[...] = dq_scr[...].astype(dq_ref.dtype)


def _dkv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ks_ref,
                ke_ref, dk_ref, dv_ref, dk_scr, dv_scr, *, block: int):
  j, i = pl.program_id(2), pl.program_id(3)  # key block, query block (the reduction)

  @pl.when(i == 0)
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  @pl.when(_live(lo_ref, hi_ref, j, i))
  def _step():
    q, do = q_ref[...], do_ref[...]
    scale = q.shape[-1] ** -0.5
    p = tiles.probs(q, k_ref[...], tiles.tile_mask(ks_ref[...], ke_ref[...], j * block, block),
                    lse_ref[...], scale)
    ds = tiles.dscores(p, do, v_ref[...], delta_ref[...])
    dk_scr[...] += tiles.dk_tile(ds, q, scale)
    dv_scr[...] += tiles.dv_tile(p, do)

  @pl.when(i == pl.num_programs(3) - 1)
  def _write():
    dk_ref[...] = dk_scr[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _check(block: int) -> None:
  if block % 8:
    raise ValueError(f"attention_impl='pallas_tpu' needs attention_chunk a multiple of 8 "
                     f"(TPU sublanes), got {block}")


class _Specs:
  """BlockSpecs on grid (row, head, block i, reduction block j) with prefetched (lo, hi):
  `own` tiles follow axis 2, `reduced` tiles follow axis 3 clamped into [lo, hi)."""

  def __init__(self, d: int, block: int):
    clamp = lambda b, i, j, lo, hi: jnp.minimum(jnp.maximum(j, lo[b, i]), hi[b, i] - 1)
    self.own = pl.BlockSpec((None, None, block, d), lambda b, h, i, j, lo, hi: (b, h, i, 0))
    self.reduced = pl.BlockSpec(
        (None, None, block, d), lambda b, h, i, j, lo, hi: (b, h, clamp(b, i, j, lo, hi), 0))
    self.own_stat = pl.BlockSpec((None, None, block, 1),
                                 lambda b, h, i, j, lo, hi: (b, h, i, 0))
    self.reduced_stat = pl.BlockSpec(
        (None, None, block, 1), lambda b, h, i, j, lo, hi: (b, h, clamp(b, i, j, lo, hi), 0))
    self.own_range = pl.BlockSpec((None, block, 1), lambda b, h, i, j, lo, hi: (b, i, 0))
    self.reduced_range = pl.BlockSpec(
        (None, block, 1), lambda b, h, i, j, lo, hi: (b, clamp(b, i, j, lo, hi), 0))


def _call(kernel, grid, in_specs, out_specs, scratch, out_shape, interpret: bool, name: str):
  spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2, grid=grid, in_specs=in_specs,
                                      out_specs=out_specs, scratch_shapes=scratch)
  params = pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))
  return pl.pallas_call(kernel, grid_spec=spec, out_shape=out_shape, compiler_params=params,
                        interpret=interpret, name=name)


def _layout(x_BxSxHxK: jax.Array, padded: int) -> jax.Array:
  """[B, S, H, K] -> [B, H, S_padded, K]: TPU tiles need (seq, head_dim) as the last dims."""
  return ranges_lib.pad_seq(x_BxSxHxK, padded).transpose(0, 2, 1, 3)


def _unlayout(x_BxHxSxK: jax.Array, s: int) -> jax.Array:
  return x_BxHxSxK.transpose(0, 2, 1, 3)[:, :s]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def flash_attention(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                    mask_ranges: ranges_lib.Ranges, block: int,
                    interpret: bool = False) -> jax.Array:
  """PrefixLM attention [B, S, H, K]; any S (padded to the block internally)."""
  return _forward(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, mask_ranges, block, interpret)[0]


def _forward(q, k, v, mask_ranges, block, interpret):
  _check(block)
  b, s, h, d = q.shape
  r, padded = ranges_lib.pad_rows(mask_ranges, block)
  lo, hi = ranges_lib.block_bounds(r.k_start, r.k_end, block, block)
  n = padded // block
  sp = _Specs(d, block)
  out, lse_BxHxSx1 = _call(
      functools.partial(_forward_kernel, block=block), (b, h, n, n),
      [sp.own, sp.reduced, sp.reduced, sp.own_range, sp.own_range], [sp.own, sp.own_stat],
      [pltpu.VMEM((block, 1), jnp.float32), pltpu.VMEM((block, 1), jnp.float32),
       pltpu.VMEM((block, d), jnp.float32)],
      [jax.ShapeDtypeStruct((b, h, padded, d), q.dtype),
       jax.ShapeDtypeStruct((b, h, padded, 1), jnp.float32)],
      interpret, "prefix_lm_flash_forward")(
          lo, hi, _layout(q, padded), _layout(k, padded), _layout(v, padded),
          r.k_start[..., None], r.k_end[..., None])
  return _unlayout(out, s), (q, k, v, mask_ranges, out, lse_BxHxSx1)


def _flash_fwd(q, k, v, mask_ranges, block, interpret):
  return _forward(q, k, v, mask_ranges, block, interpret)


def _flash_bwd(block, interpret, residuals, do_BxSxHxK):
  q, k, v, mask_ranges, out_BxHxSxK, lse_BxHxSx1 = residuals
  b, s, h, d = q.shape
  r, padded = ranges_lib.pad_rows(mask_ranges, block)
  n = padded // block
  qt, kt, vt, dot = (_layout(x, padded) for x in (q, k, v, do_BxSxHxK.astype(q.dtype)))
  delta_BxHxSx1 = jnp.sum(dot.astype(jnp.float32) * out_BxHxSxK.astype(jnp.float32),
                          axis=-1, keepdims=True)
  ks, ke = r.k_start[..., None], r.k_end[..., None]
  sp = _Specs(d, block)
  lo, hi = ranges_lib.block_bounds(r.k_start, r.k_end, block, block)
  dq = _call(functools.partial(_dq_kernel, block=block), (b, h, n, n),
             [sp.own, sp.reduced, sp.reduced, sp.own, sp.own_stat, sp.own_stat, sp.own_range,
              sp.own_range], sp.own, [pltpu.VMEM((block, d), jnp.float32)],
             jax.ShapeDtypeStruct(qt.shape, q.dtype), interpret, "prefix_lm_flash_dq")(
                 lo, hi, qt, kt, vt, dot, lse_BxHxSx1, delta_BxHxSx1, ks, ke)
  qlo, qhi = ranges_lib.block_bounds(r.q_start, r.q_end, block, block)
  dk, dv = _call(functools.partial(_dkv_kernel, block=block), (b, h, n, n),
                 [sp.reduced, sp.own, sp.own, sp.reduced, sp.reduced_stat, sp.reduced_stat,
                  sp.reduced_range, sp.reduced_range], [sp.own, sp.own],
                 [pltpu.VMEM((block, d), jnp.float32), pltpu.VMEM((block, d), jnp.float32)],
                 [jax.ShapeDtypeStruct(kt.shape, k.dtype),
                  jax.ShapeDtypeStruct(vt.shape, v.dtype)], interpret, "prefix_lm_flash_dkv")(
                      qlo, qhi, qt, kt, vt, dot, lse_BxHxSx1, delta_BxHxSx1, ks, ke)
  return _unlayout(dq, s), _unlayout(dk, s), _unlayout(dv, s), None


flash_attention.defvjp(_flash_fwd, _flash_bwd)
