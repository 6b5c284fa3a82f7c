"""PrefixLM visibility as one contiguous key range per query (and query range per key).

In a packed row each example is one contiguous run of a segment id with its prompt first.
Query q then sees exactly the keys [start of its example, max(q + 1, end of its prompt)),
and key t is seen by the queries [t, end of its example) (a response key) or the whole
example (a prompt key). A padding run (segment 0, no prompt) is causal within itself.
These ranges reproduce `attention.visible` for such rows with O(S) work, so blockwise
kernels build each tile's mask from two integers per row and skip tiles outside them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Ranges(NamedTuple):
  """Half-open index ranges along the row, all [B, S] int32."""

  k_start: jax.Array  # first key query s may see
  k_end: jax.Array  # one past the last key query s may see
  q_start: jax.Array  # first query that sees key t
  q_end: jax.Array  # one past the last query that sees key t


def prefix_lm_ranges(segment_ids_BxS: jax.Array, prefix_mask_BxS: jax.Array) -> Ranges:
  """Per-query key ranges and per-key query ranges of PrefixLM attention over packed rows."""
  b, s = segment_ids_BxS.shape
  idx_S = jnp.arange(s, dtype=jnp.int32)
  seg = segment_ids_BxS.astype(jnp.int32)
  prefix = prefix_mask_BxS.astype(bool)
  change_BxS1 = seg[:, 1:] != seg[:, :-1]
  first_BxS = jnp.concatenate([jnp.ones((b, 1), bool), change_BxS1], axis=1)
  last_BxS = jnp.concatenate([change_BxS1, jnp.ones((b, 1), bool)], axis=1)
  run_start = jax.lax.cummax(jnp.where(first_BxS, idx_S, 0), axis=1)
  run_end = jax.lax.cummin(jnp.where(last_BxS, idx_S + 1, s), axis=1, reverse=True)
  # End of the run's prompt: the largest (t + 1) over its prompt tokens, spread to the run.
  run_id_BxS = jnp.cumsum(first_BxS, axis=1) - 1
  prompt_end_BxR = jax.vmap(lambda x, r: jax.ops.segment_max(x, r, num_segments=s))(
      jnp.where(prefix, idx_S + 1, 0), run_id_BxS)
  prompt_end = jnp.take_along_axis(prompt_end_BxR, run_id_BxS, axis=1)
  k_end = jnp.maximum(idx_S + 1, prompt_end)
  q_start = jnp.where(prefix, run_start, idx_S)
  return Ranges(run_start, k_end.astype(jnp.int32), q_start.astype(jnp.int32), run_end)


def ranges_mask(ranges: Ranges) -> jax.Array:
  """[B, S, S] bool: the visibility the ranges describe (for tests and small rows)."""
  idx_S = jnp.arange(ranges.k_start.shape[1])
  return ((idx_S[None, None, :] >= ranges.k_start[:, :, None])
          & (idx_S[None, None, :] < ranges.k_end[:, :, None]))


def pad_rows(ranges: Ranges, block: int) -> tuple[Ranges, int]:
  """Pads the row to a multiple of `block`; each padded position sees only itself."""
  s = ranges.k_start.shape[1]
  padded = -(-s // block) * block
  if padded == s:
    return ranges, s
  extra_P = jnp.arange(s, padded, dtype=jnp.int32)
  grow = lambda x, fill: jnp.concatenate(
      [x, jnp.broadcast_to(fill, (x.shape[0], padded - s))], axis=1)
  return Ranges(grow(ranges.k_start, extra_P), grow(ranges.k_end, extra_P + 1),
                grow(ranges.q_start, extra_P), grow(ranges.q_end, extra_P + 1)), padded


def pad_seq(x_BxSx: jax.Array, padded: int) -> jax.Array:
  """Zero-pads axis 1 to `padded`."""
  widths = [(0, 0)] * x_BxSx.ndim
  widths[1] = (0, padded - x_BxSx.shape[1])
  return jnp.pad(x_BxSx, widths)


def block_bounds(start_BxS: jax.Array, end_BxS: jax.Array, block: int,
                 other_block: int) -> tuple[jax.Array, jax.Array]:
  """[B, N] int32 (lo, hi): the blocks of size `other_block` that the rows of each block of
  size `block` reach, half open; every block reaches at least one (its own diagonal)."""
  b, s = start_BxS.shape
  lo = start_BxS.reshape(b, s // block, block).min(-1) // other_block
  hi = -(-end_BxS.reshape(b, s // block, block).max(-1) // other_block)
  return lo.astype(jnp.int32), hi.astype(jnp.int32)
