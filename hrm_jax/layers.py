"""Transformer layers of the reference: parameterless RMSNorm, RoPE, gated MHA, SwiGLU.

Parameters are declared with logical axis names (vocab, embed, heads, head_dim, mlp,
layers) so that training shards them by rules without touching this file.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from hrm_jax import attention, kv_cache
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution, remat_policy

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


class SeqInfo(NamedTuple):
  """Per-row sequence data shared by every layer and every recurrent pass."""

  cos: jax.Array  # [B, S, K] float32
  sin: jax.Array  # [B, S, K] float32
  mask: attention.MaskInfo
  step: Optional[kv_cache.CacheStep] = None  # set when decoding with a KV cache


def bidirectional(config: ModelConfig, prefix_mask_BxS: jax.Array) -> jax.Array:
  """[B, S] bool: the tokens that attend as one bidirectional prefix (the prompt), none for
  attn_type "causal": the one place that rule is written."""
  prefix_BxS = prefix_mask_BxS.astype(bool)
  return jnp.zeros_like(prefix_BxS) if config.attn_type == "causal" else prefix_BxS


def make_seq_info(config: ModelConfig, execution: Execution, batch: dict[str, jax.Array],
                  step: Optional[kv_cache.CacheStep] = None) -> SeqInfo:
  """RoPE tables and the mask of `batch` (decoding: the mask is the cache step's)."""
  cos, sin = rope_tables(batch["positions"], config.head_dim, config.rope_theta)
  prefix_BxS = bidirectional(config, batch["prefix_mask"])
  if step is not None:
    return SeqInfo(cos, sin, attention.MaskInfo(batch["segment_ids"], prefix_BxS), step)
  mask = attention.make_mask_info(batch["segment_ids"], prefix_BxS, execution.attention_impl)
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


def dense(execution: Execution, *args, **kwargs) -> Linear:
  """A `Linear` in the execution's dtypes."""
  return Linear(*args, dtype=execution.dtype, param_dtype=execution.param_dtype, **kwargs)


class Attention(nn.Module):
  """Gated multi-head attention with the reference's fused gate/q/k/v projection.

  Decoding passes this layer's cache slot `kv` (`hrm_jax.kv_cache`) and gets it back
  updated; otherwise the second output is None."""

  config: ModelConfig
  execution: Execution

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo, kv: Optional[kv_cache.LayerKV] = None
               ) -> tuple[jax.Array, Optional[kv_cache.LayerKV]]:
    c, ex = self.config, self.execution
    stds = c.init_stds()
    gqkv_BxSx4xHxK = dense(ex, (4, c.num_heads, c.head_dim), ("embed", None, "heads", "head_dim"),
                           stds["in"], name="gqkv_proj")(x_BxSxD)
    gqkv_BxSx4xHxK = checkpoint_name(gqkv_BxSx4xHxK, "gqkv_proj")
    # Split, not indexed: the gradient of a split is one concatenation, that of four index
    # slices four zero-padded full-size arrays summed (benchmarks/train_step.py --profile).
    gate, q, k, v = (a[:, :, 0] for a in jnp.split(gqkv_BxSx4xHxK, 4, axis=2))
    if c.pos_emb_type == "rope":
      q = apply_rope(q, seq.cos, seq.sin)
      k = apply_rope(k, seq.cos, seq.sin)
    if kv is None:
      out_BxSxHxK = attention.attend(q, k, v, seq.mask, ex.attention_impl, ex.attention_chunk)
    else:
      out_BxSxHxK, kv = kv_cache.attend(q, k, v, kv, seq.step)
    out_BxSxHxK = checkpoint_name(jax.nn.sigmoid(gate) * out_BxSxHxK, "attn_out")
    return dense(ex, (c.hidden_size,), ("heads", "head_dim", "embed"), stds["attn_out"], n_in=2,
                 name="o_proj")(out_BxSxHxK), kv


class SwiGLU(nn.Module):
  """down(silu(gate) * up) with the fused gate_up projection (gate first)."""

  config: ModelConfig
  execution: Execution

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
    c, ex = self.config, self.execution
    stds = c.init_stds()
    gate_up_BxSx2xM = dense(ex, (2, c.intermediate_size), ("embed", None, "mlp"), stds["in"],
                            name="gate_up_proj")(x_BxSxD)
    gate_up_BxSx2xM = checkpoint_name(gate_up_BxSx2xM, "gate_up_proj")
    gate_BxSxM, up_BxSxM = (a[..., 0, :] for a in jnp.split(gate_up_BxSx2xM, 2, axis=-2))
    h_BxSxM = jax.nn.silu(gate_BxSxM) * up_BxSxM
    return dense(ex, (c.hidden_size,), ("mlp", "embed"), stds["ff_out"],
                 name="down_proj")(h_BxSxM)


class Block(nn.Module):
  """Pre-norm block: x + attn(rms(x)), then + mlp(rms(x)); post-norm (norm_type="post"):
  rms(x + attn(x)), then rms(x + mlp(x)). Shaped as a scan body: (x, cache slot or None)."""

  config: ModelConfig
  execution: Execution

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo, kv: Optional[kv_cache.LayerKV] = None
               ) -> tuple[jax.Array, Optional[kv_cache.LayerKV]]:
    eps = self.config.norm_eps
    attn = Attention(self.config, self.execution, name="attn")
    mlp = SwiGLU(self.config, self.execution, name="mlp")
    if self.config.norm_type == "post":
      a_BxSxD, kv = attn(x_BxSxD, seq, kv)
      x_BxSxD = rms_norm(x_BxSxD + a_BxSxD, eps)
      return rms_norm(x_BxSxD + mlp(x_BxSxD), eps), kv
    a_BxSxD, kv = attn(rms_norm(x_BxSxD, eps), seq, kv)
    x_BxSxD = x_BxSxD + a_BxSxD
    x_BxSxD = x_BxSxD + mlp(rms_norm(x_BxSxD, eps))
    return x_BxSxD, kv


def final_norm(config: ModelConfig, x_BxSxD: jax.Array) -> jax.Array:
  """The norm after a stack's last block: pre-norm stacks only (post-norm blocks end in one)."""
  return rms_norm(x_BxSxD, config.norm_eps) if config.norm_type == "pre" else x_BxSxD


class Stack(nn.Module):
  """`layers_per_stack` blocks with stacked parameters (nn.scan), then the final norm
  (pre-norm); returns (x, the pass's updated cache slots or None).

  Rematerialisation (training only) wraps each block (`remat_scope="layer"`), or each block
  and the whole stack of blocks (`"pass"`: the backward keeps one input per pass of the
  recursion plus the block inputs of the one pass being differentiated).

  Decoding (`kvs`: one slot per layer) runs the blocks as a Python loop over the
  per-layer view of the same weights (`per_layer`), each block with its own slot."""

  config: ModelConfig
  execution: Execution

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               kvs: Optional[kv_cache.PassKV] = None
               ) -> tuple[jax.Array, Optional[kv_cache.PassKV]]:
    c, ex = self.config, self.execution
    chex.assert_rank(x_BxSxD, 3)
    x_BxSxD = x_BxSxD.astype(ex.dtype)
    if kvs is not None:
      chex.assert_equal(len(kvs), c.layers_per_stack)
      new = []
      for i, kv in enumerate(kvs):
        x_BxSxD, kv = Block(c, ex, name=f"layers_{i}")(x_BxSxD, seq, kv)
        new.append(kv)
      return final_norm(c, x_BxSxD), tuple(new)
    remat = ex.remat_policy != "none"
    block = Block
    if remat:
      block = nn.remat(Block, policy=remat_policy(ex.remat_policy), prevent_cse=False)
    layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(nn.broadcast,), length=c.layers_per_stack,
        unroll=c.layers_per_stack if ex.unrolled(c.hidden_size) else 1,
        metadata_params={nn.PARTITION_NAME: "layers"})(c, ex, name="layers")
    apply = lambda mdl, x, seq: mdl(x, seq)[0]
    if remat and ex.remat_scope == "pass":
      apply = nn.remat(apply, policy=remat_policy(ex.remat_policy), prevent_cse=False)
    x_BxSxD = apply(layers, x_BxSxD, seq)
    return final_norm(c, x_BxSxD), None


def per_layer(params: dict) -> dict:
  """Parameters with every Stack's scanned `layers` [N, ...] split into `layers_0` ..
  `layers_{N-1}`: the view of the same weights `Stack` reads when decoding.

  Taken once before a decode loop: XLA copies a slice of a loop-invariant array in every
  trip of a while loop (it does not hoist it; tests/generate_test.py reads the compiled
  loop), so slicing the stacked weights per step would copy them all. Already split trees
  pass through unchanged.
  """
  out = {}
  for name, sub in params.items():
    if name == "layers" and isinstance(sub, Mapping):
      n = jax.tree.leaves(sub)[0].shape[0]
      out.update({f"layers_{i}": jax.tree.map(lambda x: x[i], sub) for i in range(n)})
    else:
      out[name] = per_layer(sub) if isinstance(sub, Mapping) else sub
  return out
