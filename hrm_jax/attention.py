"""PrefixLM attention over packed rows (REFERENCE section 2): the mask and its kernels.

A row packs several examples. Query q may see key k iff both belong to the same example
(same segment id) and either k <= q (causal) or both are prompt tokens (bidirectional
prefix). Padding (segment 0) forms its own causal block, so it never reaches a real token
and every query row has at least one visible key (no NaN from an empty softmax).

`attention_impl` picks the kernel; faster kernels plug in beside `dense`.
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

  Each attention layer keeps its keys/values in the 'cache' collection (one slot of its
  stack's cache); the tokens of this call are written at positions index.. and attend to
  all T positions by mask.
  """

  index: jax.Array  # scalar int32: cache slot of the first token of this call
  mask_BxSxT: jax.Array  # bool: query x cache slot -> visible


def prefix_lm_mask(segment_ids_BxS: jax.Array, prefix_mask_BxS: jax.Array) -> jax.Array:
  """Boolean visibility [B, S(query), S(key)] of PrefixLM attention over packed rows."""
  chex.assert_rank([segment_ids_BxS, prefix_mask_BxS], 2)
  seq = segment_ids_BxS.shape[1]
  idx = jnp.arange(seq)
  causal_SxS = idx[None, :] <= idx[:, None]
  same_BxSxS = segment_ids_BxS[:, :, None] == segment_ids_BxS[:, None, :]
  prefix = prefix_mask_BxS.astype(bool)
  both_prefix_BxSxS = prefix[:, :, None] & prefix[:, None, :]
  return same_BxSxS & (causal_SxS[None] | both_prefix_BxSxS)


def make_mask_info(segment_ids_BxS: jax.Array, prefix_mask_BxS: jax.Array,
                   impl: str) -> MaskInfo:
  """Prepare the mask once per forward; every layer and recurrent pass reuses it."""
  dense = prefix_lm_mask(segment_ids_BxS, prefix_mask_BxS) if impl == "dense" else None
  return MaskInfo(segment_ids_BxS, prefix_mask_BxS.astype(bool), dense)


def dense_attention(q_BxSxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array,
                    mask_BxSxT: jax.Array) -> jax.Array:
  """O(S*T) reference attention: scores and softmax in float32, output in q's dtype."""
  scale = q_BxSxHxK.shape[-1] ** -0.5
  scores = jnp.einsum("bshk,bthk->bhst", q_BxSxHxK, k_BxTxHxK,
                      preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask_BxSxT[:, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxTxHxK.dtype)
  return jnp.einsum("bhst,bthk->bshk", probs, v_BxTxHxK)


def cached_attention(q_BxSxHxK: jax.Array, k_BxHxKxT: jax.Array, v_BxHxTxK: jax.Array,
                     mask_BxSxT: jax.Array) -> jax.Array:
  """`dense_attention` over a KV cache stored in the layouts its dots read directly."""
  scale = q_BxSxHxK.shape[-1] ** -0.5
  scores = jnp.einsum("bshk,bhkt->bhst", q_BxSxHxK, k_BxHxKxT,
                      preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask_BxSxT[:, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxHxTxK.dtype)
  return jnp.einsum("bhst,bhtk->bshk", probs, v_BxHxTxK)


def attend(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
           mask: MaskInfo, impl: str) -> jax.Array:
  """Dispatch to the kernel named by `ModelConfig.attention_impl`."""
  chex.assert_equal_shape([q_BxSxHxK, k_BxSxHxK, v_BxSxHxK])
  if impl == "dense":
    if mask.dense is None:
      raise ValueError("attention_impl='dense' needs MaskInfo.dense (use make_mask_info)")
    return dense_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, mask.dense)
  raise ValueError(f"attention_impl={impl!r} is unknown; expected 'dense'")
