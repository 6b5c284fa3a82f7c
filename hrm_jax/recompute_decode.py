"""The cache-free back end of `generation`: every step recomputes each whole row.

For architectures the KV cache cannot serve (`trm`: its single stack plays both the H and the
L role, so passes would share cache slots) and as an independent check of the cached path.
Each row is laid out from position 0 (right-padded to the call's fixed length): the prompt is
the bidirectional prefix (PrefixLM), generated tokens follow causally, and everything after a
row's current end is padding (segment 0), which real tokens never attend to. So every step
computes exactly the training-time forward of prompt + tokens so far, at a cost per token of
a full forward over [rows, length].
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.models import LanguageModel


class State(NamedTuple):
  tokens_BxT: jax.Array  # int32: each row's prompt and tokens so far, from position 0
  lens_B: jax.Array  # int32: prompt length (the bidirectional prefix) of each row
  end_B: jax.Array  # int32: tokens known in each row


def prepare(variables: dict) -> dict:
  """The variables the back end reads: params and buffers, unboxed."""
  return nn.unbox({k: variables[k] for k in ("params", "buffers") if k in variables})


def init(config: ModelConfig, execution: Execution, batch: int, length: int) -> State:
  """Empty rows of `length` tokens."""
  del config, execution
  return State(jnp.zeros((batch, length), jnp.int32), jnp.ones(batch, jnp.int32),
               jnp.ones(batch, jnp.int32))  # distinct buffers: the engine donates them


def _next_logits(config: ModelConfig, execution: Execution, variables: dict,
                 tokens_BxT: jax.Array, lens_B: jax.Array, end_B: jax.Array) -> jax.Array:
  """Logits [B, V] of the token after each row's first end_B tokens."""
  idx_T = jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32)
  batch = {"inputs": tokens_BxT,
           "positions": jnp.broadcast_to(idx_T, tokens_BxT.shape),
           "segment_ids": (idx_T[None] < end_B[:, None]).astype(jnp.int32),
           "prefix_mask": idx_T[None] < lens_B[:, None]}
  logits_BxTxV = LanguageModel(config, execution).apply(variables, batch)
  return jnp.take_along_axis(logits_BxTxV, (end_B - 1)[:, None, None], axis=1)[:, 0].astype(
      jnp.float32)


def refill(config: ModelConfig, execution: Execution, variables: dict, state: State,
           rows_R: jax.Array, prompt_RxP: jax.Array, lens_R: jax.Array
           ) -> tuple[jax.Array, State]:
  """Put left-padded prompts into rows rows_R (index >= B: ignored), moved to position 0;
  the next-token logits [R, V] of each."""
  r, p = prompt_RxP.shape
  t = state.tokens_BxT.shape[1]
  idx_P = jnp.arange(p)
  src_RxP = jnp.minimum(idx_P[None] + (p - lens_R)[:, None], p - 1)
  moved_RxP = jnp.where(idx_P[None] < lens_R[:, None],
                        jnp.take_along_axis(prompt_RxP, src_RxP, axis=1), 0)
  rows_RxT = jnp.zeros((r, t), jnp.int32).at[:, :p].set(moved_RxP)
  logits_RxV = _next_logits(config, execution, variables, rows_RxT, lens_R, lens_R)
  return logits_RxV, State(state.tokens_BxT.at[rows_R].set(rows_RxT, mode="drop"),
                           state.lens_B.at[rows_R].set(lens_R, mode="drop"),
                           state.end_B.at[rows_R].set(lens_R, mode="drop"))


def step(config: ModelConfig, execution: Execution, variables: dict, state: State,
         token_B: jax.Array) -> tuple[jax.Array, State]:
  """Every row's next-token logits [B, V] after appending token_B."""
  b, t = state.tokens_BxT.shape
  tokens_BxT = state.tokens_BxT.at[jnp.arange(b), state.end_B].set(token_B, mode="drop")
  end_B = jnp.minimum(state.end_B + 1, t)
  return (_next_logits(config, execution, variables, tokens_BxT, state.lens_B, end_B),
          State(tokens_BxT, state.lens_B, end_B))
