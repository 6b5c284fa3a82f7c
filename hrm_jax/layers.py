"""Transformer layers of the reference: parameterless RMSNorm, RoPE, gated MHA, SwiGLU.

Parameters are declared with logical axis names (vocab, embed, heads, head_dim, mlp,
layers) so that training shards them by rules without touching this file.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from hrm_jax import attention
from hrm_jax.config import ModelConfig

# std of a standard normal truncated to [-3, 3]; dividing by it keeps the requested std.
_TRUNC3_STD = math.sqrt(
    1.0 - 6.0 * math.exp(-4.5) / math.sqrt(2 * math.pi) / math.erf(3 / math.sqrt(2)))


def trunc_normal(std: float):
  """Normal init cut at 3 std, rescaled to exactly `std` (the reference's init)."""

  def init(key, shape, dtype=jnp.float32):
    x = jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32)
    return (x * (std / _TRUNC3_STD)).astype(dtype)

  return init


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
  """RMSNorm without a learnable weight, computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return y.astype(x.dtype)


def rope_tables(positions_BxS: jax.Array, head_dim: int,
                theta: float) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, S, K] in float32 for rotate-half RoPE."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions_BxS.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_BxSxHxK: jax.Array, cos_BxSxK: jax.Array, sin_BxSxK: jax.Array) -> jax.Array:
  """Rotate-half RoPE in float32; the result is cast back to x's dtype."""
  x = x_BxSxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  out = x * cos_BxSxK[:, :, None] + rotated * sin_BxSxK[:, :, None]
  return out.astype(x_BxSxHxK.dtype)


# Collections of KV-cache decoding, carried through every layer and pass loop.
CACHE, CURSOR = "cache", "cursor"


class SeqInfo(NamedTuple):
  """Per-row sequence data shared by every layer and every recurrent pass."""

  cos: jax.Array  # [B, S, K] float32
  sin: jax.Array  # [B, S, K] float32
  mask: attention.MaskInfo
  cache: Optional[attention.CacheStep] = None  # set when decoding with a KV cache


def make_seq_info(config: ModelConfig, batch: dict[str, jax.Array],
                  cache: Optional[attention.CacheStep] = None) -> SeqInfo:
  """RoPE tables and the mask of `batch`; attn_type "causal" drops the prompt's prefix."""
  cos, sin = rope_tables(batch["positions"], config.head_dim, config.rope_theta)
  prefix_BxS = batch["prefix_mask"].astype(bool)
  if config.attn_type == "causal":
    prefix_BxS = jnp.zeros_like(prefix_BxS)
  if cache is not None:  # the cache mask replaces the in-batch one
    return SeqInfo(cos, sin, attention.MaskInfo(batch["segment_ids"], prefix_BxS), cache)
  mask = attention.make_mask_info(batch["segment_ids"], prefix_BxS, config.attention_impl)
  return SeqInfo(cos, sin, mask)


class Linear(nn.Module):
  """Bias-free projection contracting the last `n_in` dims of x with kernel [*in, *out]."""

  out_shape: Sequence[int]
  axes: Sequence[str | None]  # logical names of the kernel's dims, in then out
  std: float
  n_in: int = 1
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[x.ndim - self.n_in:]
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(trunc_normal(self.std), tuple(self.axes)),
        tuple(in_shape) + tuple(self.out_shape), jnp.dtype(self.param_dtype))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ())))


class Attention(nn.Module):
  """Gated multi-head attention with the reference's fused gate/q/k/v projection."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo) -> jax.Array:
    c = self.config
    stds = c.init_stds()
    dense = functools.partial(Linear, dtype=c.dtype, param_dtype=c.param_dtype)
    gqkv_BxSx4xHxK = dense((4, c.num_heads, c.head_dim), ("embed", None, "heads", "head_dim"),
                           stds["in"], name="gqkv_proj")(x_BxSxD)
    gqkv_BxSx4xHxK = checkpoint_name(gqkv_BxSx4xHxK, "gqkv_proj")
    gate, q, k, v = (gqkv_BxSx4xHxK[:, :, i] for i in range(4))
    if c.pos_emb_type == "rope":
      q = apply_rope(q, seq.cos, seq.sin)
      k = apply_rope(k, seq.cos, seq.sin)
    if seq.cache is None:
      out_BxSxHxK = attention.attend(q, k, v, seq.mask, c.attention_impl,
                                     c.attention_chunk)
    else:
      out_BxSxHxK = self.cached(q, k, v, seq.cache)
    out_BxSxHxK = checkpoint_name(jax.nn.sigmoid(gate) * out_BxSxHxK, "attn_out")
    return dense((c.hidden_size,), ("heads", "head_dim", "embed"), stds["attn_out"], n_in=2,
                 name="o_proj")(out_BxSxHxK)

  def cached(self, q_BxSxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
             step: attention.CacheStep) -> jax.Array:
    """Store this call's keys/values at cache positions step.index.. of this call's own slot
    and attend over the slot by step.mask_BxSxT.

    Each (pass, layer) call owns one slot: a separate array pair in the 'cache' collection,
    keys [N, K, L] and values [N, L, K] with N = B*H (L = step.length; the layouts the
    attention dots read with no transpose or reshape: with a separate batch dimension,
    XLA:CPU duplicated the write into the dots' operand and copied every slot each step at
    batch 1). The 'cursor' (a Python int: decoding runs the pass loops in Python) numbers
    this module's calls, the same in prefill and decode. The decode loop carries the slots
    as separate buffers, so each step writes one position of each in place and reads it
    with no slicing or copying. The first call (prefill) creates the
    slot; its cache then holds only this call's keys, so it attends to them directly.
    """
    b, s, h, k = k_BxSxHxK.shape
    n = b * h
    cursor = self.variable(CURSOR, "calls", lambda: 0)
    slot = cursor.value
    cursor.value = slot + 1
    keys = self.variable(CACHE, "cached_key", tuple)
    values = self.variable(CACHE, "cached_value", tuple)
    new = slot == len(keys.value)
    dtype = self.config.dtype
    k_NxKxL = (jnp.zeros((n, k, step.length), dtype) if new else keys.value[slot])
    v_NxLxK = (jnp.zeros((n, step.length, k), dtype) if new else values.value[slot])
    k_NxKxS = k_BxSxHxK.transpose(0, 2, 3, 1).reshape(n, k, s).astype(dtype)
    v_NxSxK = v_BxSxHxK.transpose(0, 2, 1, 3).reshape(n, s, k).astype(dtype)
    if jnp.ndim(step.index) == 0:  # every row writes positions index..index+S-1
      k_NxKxL = jax.lax.dynamic_update_slice(k_NxKxL, k_NxKxS, (0, 0, step.index))
      v_NxLxK = jax.lax.dynamic_update_slice(v_NxLxK, v_NxSxK, (0, step.index, 0))
    else:  # index_BxS: each token's own position (>= length: not written)
      index_NxS = jnp.repeat(step.index, h, axis=0)
      rows_Nx1 = jnp.arange(n)[:, None]
      k_NxKxL = k_NxKxL.at[rows_Nx1, :, index_NxS].set(jnp.swapaxes(k_NxKxS, 1, 2),
                                                       mode="drop")
      v_NxLxK = v_NxLxK.at[rows_Nx1, index_NxS, :].set(v_NxSxK, mode="drop")
    keys.value = keys.value[:slot] + (k_NxKxL,) + keys.value[slot + 1:]
    values.value = values.value[:slot] + (v_NxLxK,) + values.value[slot + 1:]
    t = step.mask_BxSxT.shape[-1]
    if new:
      if t != s:
        raise ValueError(f"KV-cache prefill: the mask must cover this call's {s} keys "
                         f"(index 0), got {t} key positions")
      return attention.dense_attention(q_BxSxHxK, k_BxSxHxK, v_BxSxHxK, step.mask_BxSxT)
    if t != step.length:
      raise ValueError(f"KV-cache decoding: the mask must cover all {step.length} cache "
                       f"positions, got {t}")
    q_NxSxK = q_BxSxHxK.transpose(0, 2, 1, 3).reshape(n, s, k)
    out_NxSxK = attention.cached_attention(q_NxSxK, k_NxKxL, v_NxLxK,
                                           jnp.repeat(step.mask_BxSxT, h, axis=0))
    return out_NxSxK.reshape(b, h, s, k).transpose(0, 2, 1, 3)


class SwiGLU(nn.Module):
  """down(silu(gate) * up) with the fused gate_up projection (gate first)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
    c = self.config
    stds = c.init_stds()
    dense = functools.partial(Linear, dtype=c.dtype, param_dtype=c.param_dtype)
    gate_up_BxSx2xM = dense((2, c.intermediate_size), ("embed", None, "mlp"), stds["in"],
                            name="gate_up_proj")(x_BxSxD)
    gate_up_BxSx2xM = checkpoint_name(gate_up_BxSx2xM, "gate_up_proj")
    h_BxSxM = jax.nn.silu(gate_up_BxSx2xM[..., 0, :]) * gate_up_BxSx2xM[..., 1, :]
    return dense((c.hidden_size,), ("mlp", "embed"), stds["ff_out"],
                 name="down_proj")(h_BxSxM)


class Block(nn.Module):
  """Pre-norm block: x + attn(rms(x)), then + mlp(rms(x)); post-norm (norm_type="post"):
  rms(x + attn(x)), then rms(x + mlp(x)). Shaped as a scan body."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo) -> tuple[jax.Array, None]:
    eps = self.config.norm_eps
    attn, mlp = Attention(self.config, name="attn"), SwiGLU(self.config, name="mlp")
    if self.config.norm_type == "post":
      x_BxSxD = rms_norm(x_BxSxD + attn(x_BxSxD, seq), eps)
      return rms_norm(x_BxSxD + mlp(x_BxSxD), eps), None
    x_BxSxD = x_BxSxD + attn(rms_norm(x_BxSxD, eps), seq)
    x_BxSxD = x_BxSxD + mlp(rms_norm(x_BxSxD, eps))
    return x_BxSxD, None


def final_norm(config: ModelConfig, x_BxSxD: jax.Array) -> jax.Array:
  """The norm after a stack's last block: pre-norm stacks only (post-norm blocks end in one)."""
  return rms_norm(x_BxSxD, config.norm_eps) if config.norm_type == "pre" else x_BxSxD


# Largest hidden size whose scans are unrolled on CPU by default: there a pass's matmuls are
# small enough that a scan's per-iteration slicing of the stacked weights costs more than
# the compile time unrolling adds (benchmarks/train_step.py --unroll).
CPU_UNROLL_MAX_HIDDEN = 512


def unroll_scans(config: ModelConfig) -> bool:
  """config.unroll_scans, or when None: unrolled for small models compiled for CPU."""
  if config.unroll_scans is not None:
    return config.unroll_scans
  return jax.default_backend() == "cpu" and config.hidden_size <= CPU_UNROLL_MAX_HIDDEN


def remat_policy(name: str):
  """Checkpoint policy for a scanned layer; None means no rematerialisation."""
  if name == "none":
    return None
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "proj":  # the checkpoint_name'd projection outputs of Attention and SwiGLU
    return jax.checkpoint_policies.save_only_these_names("gqkv_proj", "attn_out",
                                                         "gate_up_proj")
  if name == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  raise ValueError(f"remat_policy={name!r} is unknown; expected none, full, proj or dots")


class Stack(nn.Module):
  """`layers_per_stack` blocks with stacked parameters (nn.scan), then the final norm
  (pre-norm).

  Rematerialisation (training only) wraps each block (`remat_scope="layer"`), or each block
  and the whole stack of blocks (`"pass"`: the backward keeps one input per pass of the
  recursion plus the block inputs of the one pass being differentiated)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo) -> jax.Array:
    c = self.config
    chex.assert_rank(x_BxSxD, 3)
    x_BxSxD = x_BxSxD.astype(c.dtype)
    if seq.cache is not None:  # decoding: per-layer parameters, see `unstack_layers`
      for i in range(c.layers_per_stack):
        x_BxSxD, _ = Block(c, name=f"layers_{i}")(x_BxSxD, seq)
      return final_norm(c, x_BxSxD)
    remat = c.remat_policy != "none"
    block = Block
    if remat:
      block = nn.remat(Block, policy=remat_policy(c.remat_policy), prevent_cse=False)
    layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(nn.broadcast,), length=c.layers_per_stack,
        unroll=c.layers_per_stack if unroll_scans(c) else 1,
        metadata_params={nn.PARTITION_NAME: "layers"})(c, name="layers")
    apply = lambda mdl, x, seq: mdl(x, seq)[0]
    if remat and c.remat_scope == "pass":
      apply = nn.remat(apply, policy=remat_policy(c.remat_policy), prevent_cse=False)
    x_BxSxD = apply(layers, x_BxSxD, seq)
    return final_norm(c, x_BxSxD)


def unstack_layers(params: dict) -> dict:
  """Parameters with every Stack's scanned `layers` [N, ...] split into `layers_0` ..
  `layers_{N-1}`: the layout `Stack` reads when decoding.

  Done once before a decode loop: slicing stacked weights inside the loop copies them on
  every step (XLA does not hoist slices out of a while loop). Already split trees pass
  through unchanged.
  """
  out = {}
  for name, sub in params.items():
    if name == "layers" and isinstance(sub, Mapping):
      n = jax.tree.leaves(sub)[0].shape[0]
      out.update({f"layers_{i}": jax.tree.map(lambda x: x[i], sub) for i in range(n)})
    else:
      out[name] = unstack_layers(sub) if isinstance(sub, Mapping) else sub
  return out
