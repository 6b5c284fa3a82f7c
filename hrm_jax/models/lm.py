"""LanguageModel: scaled embedding -> recurrent core (`config.arch`'s, from the registry) ->
untied head."""

from __future__ import annotations

from typing import Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from hrm_jax import kv_cache, truncation
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.layers import Linear, dense, make_seq_info, trunc_normal
from hrm_jax.models.registry import spec_of

BATCH_KEYS = ("inputs", "positions", "segment_ids", "prefix_mask")


def check_batch(batch: dict[str, jax.Array]) -> None:
  """Clear errors for a malformed model batch (keys, ranks, shapes)."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise KeyError(f"batch is missing {missing}; a model batch needs {BATCH_KEYS} "
                   f"(got {sorted(batch)})")
  chex.assert_rank([batch[k] for k in BATCH_KEYS], 2)
  chex.assert_equal_shape([batch[k] for k in BATCH_KEYS])
  for k in ("inputs", "positions", "segment_ids"):
    if not jnp.issubdtype(batch[k].dtype, jnp.integer):
      raise TypeError(f"batch[{k!r}] must be an integer array, got {batch[k].dtype}")


class LanguageModel(nn.Module):
  """HRM-Text and its baselines: what `config` computes, run as `execution` says.

  `apply(variables, batch, bp_steps=None) -> logits [B, S, V]` in float32. `batch` holds
  [B, S] arrays `inputs`, `positions`, `segment_ids` (0 = padding) and bool `prefix_mask`.
  `bp_steps` (a static int) truncates backprop to the last passes; None = full gradient.
  `hidden_only` returns the final state z_H [B, S, D] instead, for losses that apply the head
  chunk by chunk (`head`) so [B, S, V] logits never exist at once.

  KV-cache decoding (`hrm_jax.decode`): `cache` (a `kv_cache.Cache`) and its `step`; the
  call then returns (output, updated cache), and the variables are in the per-layer view
  (`layers.per_layer`).
  """

  config: ModelConfig
  execution: Execution = Execution()

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], bp_steps: Optional[int] = None,
               hidden_only: bool = False, cache: Optional[kv_cache.Cache] = None,
               step: Optional[kv_cache.CacheStep] = None):
    c, ex = self.config, self.execution
    check_batch(batch)
    truncation.check_bp_steps(bp_steps)
    if (cache is None) != (step is None):
      raise ValueError("KV-cache decoding needs both `cache` and its `step`")
    in_std = c.init_stds()["in"]
    embed_VxD = self.param(
        "embed_tokens", nn.with_logical_partitioning(trunc_normal(in_std), ("vocab", "embed")),
        (c.vocab_size, c.hidden_size), jnp.dtype(ex.param_dtype))
    x_BxSxD = (jnp.take(embed_VxD, batch["inputs"], axis=0) * c.embedding_scale).astype(ex.dtype)
    seq = make_seq_info(c, ex, batch, step)
    z_BxSxD, cache = spec_of(c).core(c, ex, name="core")(x_BxSxD, seq, bp_steps, cache)
    if hidden_only and not self.is_initializing():
      out = z_BxSxD
    else:
      out = head(c, ex, name="lm_head")(z_BxSxD).astype(jnp.float32)
    return out if step is None else (out, cache)


def head(config: ModelConfig, execution: Execution, name: Optional[str] = None) -> Linear:
  """The untied output projection D -> V (init std in_std, as the reference)."""
  return dense(execution, (config.vocab_size,), ("embed", "vocab"), config.init_stds()["in"],
               name=name)
