"""Greedy generation without a KV cache: the whole (fixed-length) row is recomputed per token.

For architectures the cache cannot serve (`trm`: its single stack plays both the H and the
L role, so passes would share cache slots) and as an independent check of the cached path.
Each row is laid out from position 0 (right-padded): the prompt is the bidirectional prefix
(PrefixLM), generated tokens follow causally, and everything after a row's current end is
padding (segment 0), which real tokens never attend to. So every step computes exactly the
training-time forward of prompt + tokens so far. Lengths are rounded up to powers of two as
in `decode.generate` (rows are grouped by prompt bucket), and each group's loop is one compiled
`lax.while_loop`: cost per token is a full forward over [rows, prompt bucket + new bucket].
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.config import ModelConfig
from hrm_jax.decode import bucket, check_request
from hrm_jax.models import LanguageModel


@functools.partial(jax.jit, static_argnames=("config", "max_len"))
def _generate(variables: dict, tokens_BxT: jax.Array, lens_B: jax.Array, max_new: jax.Array,
              eos_id: jax.Array, *, config: ModelConfig, max_len: int) -> jax.Array:
  """New tokens [B, max_len] (0 past eos or past max_new). Row r's prompt is
  tokens_BxT[r, :lens_B[r]]."""
  b, t = tokens_BxT.shape
  idx_T = jnp.arange(t, dtype=jnp.int32)
  positions_BxT = jnp.broadcast_to(idx_T, (b, t))
  prefix_BxT = idx_T[None] < lens_B[:, None]
  model = LanguageModel(config)

  def next_token(tokens_BxT, step):
    end_B = lens_B + step  # tokens known so far in each row
    batch = {"inputs": tokens_BxT, "positions": positions_BxT,
             "segment_ids": (idx_T[None] < end_B[:, None]).astype(jnp.int32),
             "prefix_mask": prefix_BxT}
    logits_BxTxV = model.apply(variables, batch)
    last_BxV = jnp.take_along_axis(logits_BxTxV, (end_B - 1)[:, None, None], axis=1)[:, 0]
    return jnp.argmax(last_BxV, axis=-1).astype(jnp.int32)

  def cond(state):
    step, _, _, done_B = state
    return (step < max_new) & ~jnp.all(done_B)

  def body(state):
    step, tokens_BxT, out_BxN, done_B = state
    next_B = jnp.where(done_B, 0, next_token(tokens_BxT, step))
    tokens_BxT = tokens_BxT.at[jnp.arange(b), lens_B + step].set(next_B)
    return step + 1, tokens_BxT, out_BxN.at[:, step].set(next_B), done_B | (next_B == eos_id)

  state = (jnp.int32(0), tokens_BxT, jnp.zeros((b, max_len), jnp.int32), jnp.zeros(b, bool))
  return jax.lax.while_loop(cond, body, state)[2]


def generate_uncached(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]],
                      max_new_tokens: int, eos_id: Optional[int] = None) -> list[list[int]]:
  """Greedy new tokens of each prompt (up to and including eos_id, at most max_new_tokens).

  Same contract as `decode.generate` at temperature 0, for every arch (trm included).
  """
  check_request(config, prompts, max_new_tokens, where="generate_uncached")
  max_len = bucket(max_new_tokens)
  model_vars = nn.unbox({k: variables[k] for k in ("params", "buffers") if k in variables})
  # Rows are grouped by prompt bucket: every step recomputes the whole row, so a short prompt
  # should not pay for the longest one.
  groups: dict[int, list[int]] = {}
  for row, prompt in enumerate(prompts):
    groups.setdefault(bucket(len(prompt)), []).append(row)
  out: list[list[int]] = [[] for _ in prompts]
  for p_len, rows in sorted(groups.items()):
    lens = np.array([len(prompts[r]) for r in rows], np.int32)
    tokens_BxT = np.zeros((len(rows), p_len + max_len), np.int32)
    for i, r in enumerate(rows):
      tokens_BxT[i, :lens[i]] = prompts[r]
    out_BxN = np.asarray(_generate(
        model_vars, tokens_BxT, lens, jnp.int32(max_new_tokens),
        jnp.int32(-1 if eos_id is None else eos_id), config=config, max_len=max_len))
    for r, tokens in zip(rows, out_BxN[:, :max_new_tokens].tolist()):
      if eos_id is not None and eos_id in tokens:
        tokens = tokens[:tokens.index(eos_id) + 1]
      out[r] = tokens
  return out
