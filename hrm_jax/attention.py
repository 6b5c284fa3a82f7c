"""PrefixLM attention over packed rows (docs/reference.md#attention-mask): the mask and its kernels.

A row packs several examples. Query q may see key k iff both belong to the same example
(same segment id) and either k <= q (causal) or both are prompt tokens (bidirectional
prefix). Padding (segment 0) forms its own causal block, so it never reaches a real token
and every query row has at least one visible key (no NaN from an empty softmax).

`attention_impl` picks the kernel (all compute the same function):
  dense       materialises the [S, S] mask and scores: fastest for short rows, O(S^2) memory.
  chunked     blockwise online-softmax attention in plain JAX (kernels/flash_xla.py), any
              backend, O(S * chunk) memory forward and backward, fully masked tiles skipped.
  pallas_gpu  the same algorithm as Pallas Triton kernels (kernels/flash_gpu.py).
  pallas_tpu  the same algorithm as Pallas Mosaic TPU kernels (kernels/flash_tpu.py).
  auto        pallas_tpu on TPU, pallas_gpu on GPU (when head_dim suits Triton, else
              chunked); on CPU dense up to AUTO_DENSE_MAX_SEQ tokens per row, chunked beyond.
The blockwise kernels see the mask as one key range per query (kernels/ranges.py), which
holds for rows packed as contiguous examples with the prompt first (hrm_jax.data does so).
A `pallas_call` has no SPMD partitioning rule, so under a device mesh (found in JAX's context,
see sharding.traced_in_mesh) the Pallas kernels run inside `jax.shard_map`: each device
attends its own rows and heads, as MaxText wraps its kernels. `chunked` is plain JAX that XLA
partitions by itself.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from hrm_jax import sharding as sharding_lib
from hrm_jax.execution import ATTENTION_IMPLS
from hrm_jax.kernels import flash_gpu, flash_tpu, flash_xla
from hrm_jax.kernels import ranges as ranges_lib

# `auto` on CPU: rows up to this length use dense (benchmarks/attention.py measures it).
AUTO_DENSE_MAX_SEQ = 512


class MaskInfo(NamedTuple):
  """What any kernel needs to rebuild the mask; `dense` is the materialised mask or None."""

  segment_ids: jax.Array  # [B, S] int32, 0 = padding
  prefix_mask: jax.Array  # [B, S] bool, True on prompt tokens
  dense: Optional[jax.Array] = None  # [B, S, S] bool: query x key -> visible
  ranges: Optional[ranges_lib.Ranges] = None  # per-query key ranges of blockwise kernels


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


def resolve_impl(impl: str, seq_len: int, head_dim: Optional[int] = None) -> str:
  """The concrete kernel of `attention_impl` for this backend and row length."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} is unknown; expected one of {ATTENTION_IMPLS}")
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "tpu":
    return "pallas_tpu"
  if backend == "gpu":
    triton_ok = head_dim is None or (head_dim >= 16 and not head_dim & (head_dim - 1))
    return "pallas_gpu" if triton_ok else "chunked"
  return "dense" if seq_len <= AUTO_DENSE_MAX_SEQ else "chunked"


def make_mask_info(segment_ids_BxS: jax.Array, prefix_mask_BxS: jax.Array,
                   impl: str) -> MaskInfo:
  """Prepare the mask once per forward; every layer and recurrent pass reuses it: the dense
  [S, S] mask for `dense`, per-query key ranges for the blockwise kernels."""
  prefix = prefix_mask_BxS.astype(bool)
  if resolve_impl(impl, segment_ids_BxS.shape[1]) == "dense":
    return MaskInfo(segment_ids_BxS, prefix, prefix_lm_mask(segment_ids_BxS, prefix))
  return MaskInfo(segment_ids_BxS, prefix,
                  ranges=ranges_lib.prefix_lm_ranges(segment_ids_BxS, prefix))


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                       specs: str) -> jax.Array:
  """Scores and softmax in float32, output in v's dtype; `specs` names the layouts as
  "q,k,v->scores" (t = key position), `mask` broadcasts against the scores."""
  q_spec, k_spec, v_spec, s_spec = specs.replace("->", ",").split(",")
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum(f"{q_spec},{k_spec}->{s_spec}", q, k,
                      preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum(f"{s_spec},{v_spec}->{q_spec}", probs, v)


def dense_attention(q_BxSxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array,
                    mask_BxSxT: jax.Array) -> jax.Array:
  """O(S*T) reference attention: scores and softmax in float32, output in q's dtype."""
  return _softmax_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask_BxSxT[:, None],
                            "bshk,bthk,bthk->bhst")


def cached_attention(q_NxSxK: jax.Array, k_NxKxT: jax.Array, v_NxTxK: jax.Array,
                     mask_NxSxT: jax.Array) -> jax.Array:
  """`dense_attention` over a KV cache of N = batch x heads rows, in the layouts its dots
  read directly (one batch dimension: no reshape between the cache write and the dots);
  output [N, S, K]."""
  return _softmax_attention(q_NxSxK, k_NxKxT, v_NxTxK, mask_NxSxT, "nsk,nkt,ntk->nst")


def _block(impl: str, chunk: int, seq_len: int) -> int:
  """Tile rows of a blockwise kernel: `attention_chunk`, no longer than the (rounded) row;
  at most 128 for Triton, whose larger tiles spill registers."""
  if impl == "pallas_gpu":
    return min(chunk, 128, max(16, 1 << (seq_len - 1).bit_length()))
  return min(chunk, -(-seq_len // 8) * 8)


def attend(q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
           mask: MaskInfo, impl: str, chunk: int = 512) -> jax.Array:
  """Dispatch to the kernel named by `Execution.attention_impl` (see the module doc)."""
  chex.assert_equal_shape([q_BxSxHxK, k_BxSxHxK, v_BxSxHxK])
  s, head_dim = q_BxSxHxK.shape[1], q_BxSxHxK.shape[-1]
  impl = resolve_impl(impl, s, head_dim)
  if impl == "dense":
    if mask.dense is None:
      raise ValueError("attention_impl='dense' needs MaskInfo.dense (use make_mask_info)")
    return dense_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, mask.dense)
  ranges = mask.ranges
  if ranges is None:
    ranges = ranges_lib.prefix_lm_ranges(mask.segment_ids, mask.prefix_mask)
  block = _block(impl, chunk, s)
  if impl == "chunked":
    return flash_xla.flash_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, ranges, block)
  backend, native = jax.default_backend(), impl[len("pallas_"):]
  if backend not in ("cpu", native):
    raise ValueError(f"attention_impl={impl!r} runs on {native} (or interpreted on cpu), "
                     f"not on {backend}; use 'auto' or 'chunked'")
  kernel = flash_gpu if native == "gpu" else flash_tpu
  interpret = backend == "cpu"  # Pallas kernels run interpreted on CPU: slow, for tests
  kernel_fn = functools.partial(kernel.flash_attention, block=block, interpret=interpret)
  return _per_device(kernel_fn, q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, ranges)


def _per_device(kernel_fn: Callable, q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array,
                v_BxSxHxK: jax.Array, ranges: ranges_lib.Ranges) -> jax.Array:
  """Run a kernel XLA cannot partition on each device's rows and heads of the mesh in
  context (rows and heads are independent in attention); directly when there is none."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel_fn(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, ranges)
  qkv, row = sharding_lib.attention_specs(mesh, q_BxSxHxK.shape)
  # check_vma=False: pallas_call outputs carry no per-axis variance (MaxText does the same).
  return jax.shard_map(kernel_fn, mesh=mesh,
                       in_specs=(qkv, qkv, qkv, ranges_lib.Ranges(row, row, row, row)),
                       out_specs=qkv, check_vma=False)(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, ranges)
