"""The KV cache as data: one pair of arrays per (stack, pass, layer), passed into the model and
returned updated (as the flax gemma sampler's cache; no mutable collection).

A slot's keys are [N, K, T] and its values [N, T, K] with N = B*H (batch and heads merged
into the attention dots' one batch dimension, T = cache positions): the layouts the dots read
with no transpose or reshape. With a separate batch dimension, XLA:CPU duplicated the write
into the dots' operand and copied every slot each step at batch 1. Every slot is its own
array, so a decode loop carries them as separate buffers and each step writes one position
of each in place (no slicing of a stacked cache).

Addresses are explicit: `Cache[(stack, pass)]` holds the slots of one pass of a stack
(module name "H", "L" or "stack"; passes numbered by the recursion's loop indices, see
`hrm_jax.models.passes.one_pass`), one `LayerKV` per layer of that stack. `hrm_jax.decode.
init_cache` builds it from the config's shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from hrm_jax import attention


class LayerKV(NamedTuple):
  """One attention layer's cache slot in one pass."""

  k_NxKxT: jax.Array
  v_NxTxK: jax.Array


PassKV = tuple[LayerKV, ...]  # one per layer of the stack
Cache = dict[tuple[str, int], PassKV]  # (stack module name, pass index) -> its slots


class CacheStep(NamedTuple):
  """Decoding with a KV cache: where this call's tokens go and what each may see.

  The tokens of this call are written at cache positions index.. and attend by mask: at
  prefill to this call's own keys (T = S; the slots start empty), afterwards to all
  T = length cache positions.
  """

  # int32: scalar, the cache position of this call's first token (the rest follow), or
  # [B, S], each token's own position (>= length: not written; speculative decoding).
  index: jax.Array
  mask_BxSxT: jax.Array  # bool: query x key position -> visible
  length: int  # static: cache positions per slot (prompt + generated)
  prefill: bool = False  # static: the prompt's call, which attends to its own keys only


def empty(slots: dict[tuple[str, int], int], rows: int, head_dim: int, length: int,
          dtype: str) -> Cache:
  """Zeros for `slots` ((stack, pass) -> layers of that stack), N = rows (= batch x heads)."""
  return {key: tuple(LayerKV(jnp.zeros((rows, head_dim, length), dtype),
                             jnp.zeros((rows, length, head_dim), dtype))
                     for _ in range(layers))
          for key, layers in slots.items()}


def attend(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array, kv: LayerKV,
           step: CacheStep) -> tuple[jax.Array, LayerKV]:
  """Store this call's keys/values in `kv` at positions step.index.., attend by
  step.mask_BxSxT; the output [B, S, H, K] and the updated slot."""
  b, s, h, k = k_BxSxHxK.shape
  n = b * h
  chex.assert_equal_shape([q_BxSxHxK, k_BxSxHxK, v_BxSxHxK])
  chex.assert_shape(kv.k_NxKxT, (n, k, step.length))
  chex.assert_shape(kv.v_NxTxK, (n, step.length, k))
  dtype = kv.k_NxKxT.dtype
  k_NxKxS = k_BxSxHxK.transpose(0, 2, 3, 1).reshape(n, k, s).astype(dtype)
  v_NxSxK = v_BxSxHxK.transpose(0, 2, 1, 3).reshape(n, s, k).astype(dtype)
  if jnp.ndim(step.index) == 0:  # every row writes positions index..index+S-1
    k_NxKxT = jax.lax.dynamic_update_slice(kv.k_NxKxT, k_NxKxS, (0, 0, step.index))
    v_NxTxK = jax.lax.dynamic_update_slice(kv.v_NxTxK, v_NxSxK, (0, step.index, 0))
  else:  # index_BxS: each token's own position (>= length: not written)
    index_NxS = jnp.repeat(step.index, h, axis=0)
    rows_Nx1 = jnp.arange(n)[:, None]
    k_NxKxT = kv.k_NxKxT.at[rows_Nx1, :, index_NxS].set(jnp.swapaxes(k_NxKxS, 1, 2),
                                                        mode="drop")
    v_NxTxK = kv.v_NxTxK.at[rows_Nx1, index_NxS, :].set(v_NxSxK, mode="drop")
  kv = LayerKV(k_NxKxT, v_NxTxK)
  t = step.mask_BxSxT.shape[-1]
  if step.prefill:
    if t != s:
      raise ValueError(f"KV-cache prefill: the mask must cover this call's {s} keys "
                       f"(index 0), got {t} key positions")
    return attention.dense_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, step.mask_BxSxT), kv
  if t != step.length:
    raise ValueError(f"KV-cache decoding: the mask must cover all {step.length} cache "
                     f"positions, got {t}")
  q_NxSxK = q_BxSxHxK.transpose(0, 2, 1, 3).reshape(n, s, k)
  compute = q_BxSxHxK.dtype  # a cache stored narrower (Execution.kv_cache_dtype) is read
  out_NxSxK = attention.cached_attention(  # widened: the attention math is the model's own
      q_NxSxK, k_NxKxT.astype(compute), v_NxTxK.astype(compute),
      jnp.repeat(step.mask_BxSxT, h, axis=0))
  return out_NxSxK.reshape(b, h, s, k).transpose(0, 2, 1, 3), kv
