"""PrefixLM attention over packed rows (REFERENCE section 2): the mask and its kernels.

A row packs several examples. Query q may see key k iff both belong to the same example
(same segment id) and either k <= q (causal) or both are prompt tokens (bidirectional
prefix). Padding (segment 0) forms its own causal block, so it never reaches a real token
and every query row has at least one visible key (no NaN from an empty softmax).

`attention_impl` picks the kernel: `dense` materialises the [S, S] mask (short rows),
`chunked` scans over query blocks with O(S * chunk) memory (long packed rows).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp


class MaskInfo(NamedTuple):
  """What any kernel needs to rebuild the mask; `dense` is the materialised mask or None."""

  segment_ids: jax.Array  # [B, S] int32, 0 = padding
  prefix_mask: jax.Array  # [B, S] bool, True on prompt tokens
  dense: Optional[jax.Array] = None  # [B, S, S] bool: query x key -> visible


class CacheStep(NamedTuple):
  """Decoding with a KV cache: where this call's tokens go and what each may see.

  Each attention call keeps its keys/values in its own slot of the 'cache' collection
  (`length` positions); the tokens of this call are written at positions index.. and
  attend by mask: at prefill (the call that creates the slot, index 0) to this call's own
  keys, T = S; afterwards to all T = length positions.
  """

  index: jax.Array  # scalar int32: cache position of the first token of this call
  mask_BxSxT: jax.Array  # bool: query x key position -> visible
  length: int  # static: cache positions per slot (prompt + generated)


def visible(seg_BxQ, prefix_BxQ, idx_Q, seg_BxT, prefix_BxT, idx_T) -> jax.Array:
  """[B, Q, T] bool: the PrefixLM rule for queries at row indices idx_Q, keys at idx_T."""
  causal_QxT = idx_T[None, :] <= idx_Q[:, None]
  same_BxQxT = seg_BxQ[:, :, None] == seg_BxT[:, None, :]
  both_prefix_BxQxT = prefix_BxQ[:, :, None] & prefix_BxT[:, None, :]
  return same_BxQxT & (causal_QxT[None] | both_prefix_BxQxT)


def prefix_lm_mask(segment_ids_BxS: jax.Array, prefix_mask_BxS: jax.Array) -> jax.Array:
  """Boolean visibility [B, S(query), S(key)] of PrefixLM attention over packed rows."""
  chex.assert_rank([segment_ids_BxS, prefix_mask_BxS], 2)
  idx = jnp.arange(segment_ids_BxS.shape[1])
  prefix = prefix_mask_BxS.astype(bool)
  return visible(segment_ids_BxS, prefix, idx, segment_ids_BxS, prefix, idx)


def make_mask_info(segment_ids_BxS: jax.Array, prefix_mask_BxS: jax.Array,
                   impl: str) -> MaskInfo:
  """Prepare the mask once per forward; every layer and recurrent pass reuses it."""
  dense = prefix_lm_mask(segment_ids_BxS, prefix_mask_BxS) if impl == "dense" else None
  return MaskInfo(segment_ids_BxS, prefix_mask_BxS.astype(bool), dense)


def _softmax_attention(q_BxSxHxK: jax.Array, k: jax.Array, v: jax.Array, mask_BxSxT: jax.Array,
                       k_spec: str, v_spec: str) -> jax.Array:
  """Scores and softmax in float32, output in v's dtype; k and v in the layouts named by
  their einsum specs (t = key position)."""
  scale = q_BxSxHxK.shape[-1] ** -0.5
  scores = jnp.einsum(f"bshk,{k_spec}->bhst", q_BxSxHxK, k,
                      preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask_BxSxT[:, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum(f"bhst,{v_spec}->bshk", probs, v)


def dense_attention(q_BxSxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array,
                    mask_BxSxT: jax.Array) -> jax.Array:
  """O(S*T) reference attention: scores and softmax in float32, output in q's dtype."""
  return _softmax_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxSxT, "bthk", "bthk")


def chunked_attention(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                      mask: MaskInfo, chunk: int) -> jax.Array:
  """O(S * chunk) memory attention: a scan over query blocks, each rematerialised in the
  backward pass, with its [chunk, S] mask built from segment ids and the prefix mask.

  Same numerics as `dense_attention`; the portable fallback for long packed rows.
  """
  b, s, h, k = q_BxSxHxK.shape
  chunk = min(chunk, s)
  if s % chunk:
    raise ValueError(f"attention_chunk={chunk} must divide the row length {s}")
  n = s // chunk
  q_NxBxCxHxK = q_BxSxHxK.reshape(b, n, chunk, h, k).swapaxes(0, 1)
  idx_NxC = jnp.arange(s).reshape(n, chunk)
  idx_S = jnp.arange(s)

  @jax.checkpoint
  def block(q_BxCxHxK, idx_C):
    mask_BxCxS = visible(mask.segment_ids[:, idx_C], mask.prefix_mask[:, idx_C], idx_C,
                         mask.segment_ids, mask.prefix_mask, idx_S)
    return dense_attention(q_BxCxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxCxS)

  out_NxBxCxHxK = jax.lax.map(lambda xs: block(*xs), (q_NxBxCxHxK, idx_NxC))
  return out_NxBxCxHxK.swapaxes(0, 1).reshape(b, s, h, k)


def cached_attention(q_BxSxHxK: jax.Array, k_BxHxKxT: jax.Array, v_BxHxTxK: jax.Array,
                     mask_BxSxT: jax.Array) -> jax.Array:
  """`dense_attention` over a KV cache stored in the layouts its dots read directly."""
  return _softmax_attention(q_BxSxHxK, k_BxHxKxT, v_BxHxTxK, mask_BxSxT, "bhkt", "bhtk")


def attend(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
           mask: MaskInfo, impl: str, chunk: int = 512) -> jax.Array:
  """Dispatch to the kernel named by `ModelConfig.attention_impl`."""
  chex.assert_equal_shape([q_BxSxHxK, k_BxSxHxK, v_BxSxHxK])
  if impl == "dense":
    if mask.dense is None:
      raise ValueError("attention_impl='dense' needs MaskInfo.dense (use make_mask_info)")
    return dense_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, mask.dense)
  if impl == "chunked":
    return chunked_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, mask, chunk)
  raise ValueError(f"attention_impl={impl!r} is unknown; expected 'dense' or 'chunked'")
