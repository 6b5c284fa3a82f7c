"""The KV-cache back end of `generation`: PrefixLM prefill and one-token decode steps.

The whole prompt is always the bidirectional prefix (docs/reference.md#inference): prefill
builds the PrefixLM mask itself, so no caller can forget it. Prompts are left-padded; their
positions restart at 0 at the first real token and padding is never attended by real tokens.
For continuous batching the cache is a ring of fixed length per call: all rows write the
same position per step (one in-place update), and a row refilled mid-call holds its prompt
just before that position and sees the cyclic range from its first token on.

The cache has one slot per (pass, layer) call, `H_cycles * (L_cycles + 1) * layers_per_stack`
for HRM: each is its own pair of arrays, keys [B*H, K, L] and values [B*H, L, K] (batch and
heads merged into the attention dots' one batch dimension), so the decode loop carries them
as separate buffers and writes one position of each in place per step (no slicing of a
stacked cache, no reshape between the write and the dots that read it). The stacked layer
weights are split per layer once per call (`prepare`, `layers.unstack_layers`), and prefill
computes the head on the last position only.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrm_jax import attention
from hrm_jax.config import ModelConfig
from hrm_jax.layers import CACHE, CURSOR, unstack_layers
from hrm_jax.models import LanguageModel
from hrm_jax.models.lm import head
from hrm_jax.models.registry import spec_of

Cache = Any  # the 'cache' collection: per attention layer, tuples of per-pass key/value slots


def _check_arch(config: ModelConfig) -> None:
  if not spec_of(config).kv_cache:
    raise ValueError(f"KV-cache decoding does not support arch {config.arch!r} (its spec has "
                     "kv_cache=False: passes would share cache slots); generation recomputes "
                     "the row for it")


def decode_variables(variables: dict) -> dict:
  """`params` and `buffers` with the layer weights split per layer (the layout decoding
  reads); call it once outside a decode loop. Idempotent."""
  out = {k: variables[k] for k in ("params", "buffers") if k in variables}
  out["params"] = unstack_layers(nn.unbox(out["params"]))
  return out


def _apply(config: ModelConfig, variables: dict, cache: Cache, batch: dict,
           step: attention.CacheStep) -> tuple[jax.Array, Cache]:
  """The core on `batch` with the KV cache; final hidden states [B, S, D] and the new cache."""
  z_BxSxD, state = LanguageModel(config).apply(
      {**decode_variables(variables), CACHE: cache}, batch, cache=step, hidden_only=True,
      mutable=[CACHE, CURSOR])
  return z_BxSxD, state[CACHE]


def _logits(config: ModelConfig, variables: dict, z_BxD: jax.Array) -> jax.Array:
  return head(config).apply({"params": variables["params"]["lm_head"]},
                            z_BxD).astype(jnp.float32)


def prefill(config: ModelConfig, variables: dict, prompt_BxP: jax.Array, pad_B: jax.Array,
            cache_len: int) -> tuple[jax.Array, Cache]:
  """Run left-padded prompts as one bidirectional prefix; the logits [B, V] of the last
  position (the next token's) and a new cache of `cache_len` positions (prompt first).

  `pad_B` is the number of left padding tokens of each row. Attention reads only the
  prompt's own keys and the head runs on the last position only.
  """
  _check_arch(config)
  b, p = prompt_BxP.shape
  idx_P = jnp.arange(p)
  real_BxP = idx_P[None] >= pad_B[:, None]
  batch = {"inputs": prompt_BxP, "positions": jnp.maximum(idx_P[None] - pad_B[:, None], 0),
           "segment_ids": real_BxP.astype(jnp.int32), "prefix_mask": real_BxP}
  prefix_BxP = real_BxP & (config.attn_type != "causal")
  mask_BxPxP = attention.prefix_lm_mask(batch["segment_ids"], prefix_BxP)
  z_BxPxD, cache = _apply(config, variables, {}, batch,
                          attention.CacheStep(jnp.int32(0), mask_BxPxP, cache_len))
  return _logits(config, variables, z_BxPxD[:, -1]), cache


def cache_length(cache: Cache) -> int:
  """Positions per slot of a cache made by `prefill`."""
  return next(leaf.shape[-1] for path, leaf in jax.tree_util.tree_leaves_with_path(cache)
              if "cached_key" in jax.tree_util.keystr(path))


def decode_step(config: ModelConfig, variables: dict, cache: Cache, token_B: jax.Array,
                slot: jax.Array, start_B: jax.Array, positions_B: Optional[jax.Array] = None
                ) -> tuple[jax.Array, Cache]:
  """One causal token per row written at cache position `slot` (same for all rows); logits
  [B, V]. Each row sees the cyclic range start_B..slot of the cache (a ring: a row refilled
  mid-call starts anywhere); positions default to slot - start_B (no wrap)."""
  t = cache_length(cache)
  slots_T = jnp.arange(t)
  seen_B = (slot - start_B) % t
  mask_Bx1xT = ((slots_T[None] - start_B[:, None]) % t <= seen_B[:, None])[:, None]
  ones_Bx1 = jnp.ones((token_B.shape[0], 1), jnp.int32)
  positions_B = seen_B if positions_B is None else positions_B
  batch = {"inputs": token_B[:, None], "positions": positions_B[:, None],
           "segment_ids": ones_Bx1, "prefix_mask": ones_Bx1 == 0}
  z_Bx1xD, cache = _apply(config, variables, cache, batch,
                          attention.CacheStep(slot, mask_Bx1xT, t))
  return _logits(config, variables, z_Bx1xD[:, 0]), cache


def decode_tokens(config: ModelConfig, variables: dict, cache: Cache, tokens_BxS: jax.Array,
                  start_B: jax.Array, pos_B: jax.Array, write_BxS: Optional[jax.Array] = None
                  ) -> tuple[jax.Array, Cache]:
  """S causal tokens per row at positions pos_B.. (each row its own), cache positions
  (start_B + position) % T; logits [B, S, V]. Token j of a row sees its row's cache
  positions 0..pos_B + j, so anything a row wrote past its current end (rejected
  speculative tokens) is invisible: rolling back is moving pos_B back. write_BxS False:
  that token's keys/values are not stored (its query still runs on the cache)."""
  t = cache_length(cache)
  s = tokens_BxS.shape[1]
  positions_BxS = pos_B[:, None] + jnp.arange(s)
  slot_BxS = (start_B[:, None] + positions_BxS) % t
  if write_BxS is not None:
    slot_BxS = jnp.where(write_BxS, slot_BxS, t)
  seen_BxT = (jnp.arange(t)[None] - start_B[:, None]) % t
  mask_BxSxT = seen_BxT[:, None, :] <= positions_BxS[:, :, None]
  ones_BxS = jnp.ones_like(tokens_BxS)
  batch = {"inputs": tokens_BxS, "positions": positions_BxS, "segment_ids": ones_BxS,
           "prefix_mask": ones_BxS == 0}
  z_BxSxD, cache = _apply(config, variables, cache, batch,
                          attention.CacheStep(slot_BxS, mask_BxSxT, t))
  return _logits(config, variables, z_BxSxD), cache


class State(NamedTuple):
  """The KV back end of `generation`: one ring cache of fixed length per call."""
  cache: Cache
  clock: jax.Array  # int32: the cache position the next decode step writes
  start_B: jax.Array  # int32: cache position of each row's first prompt token
  pos_B: jax.Array  # int32: position (in its sequence) of each row's next input token


def prepare(variables: dict) -> dict:
  """The variables the back end reads, once per call (layer weights split per layer)."""
  return decode_variables(variables)


def init(config: ModelConfig, variables: dict, batch: int, length: int) -> State:
  """An empty ring cache of `length` positions for `batch` rows."""
  zeros = lambda: jnp.zeros(batch, jnp.int32)
  return State(_empty_cache(variables, config=config, batch=batch, length=length),
               jnp.int32(0), zeros(), zeros())


@functools.partial(jax.jit, static_argnames=("config", "batch", "length"))
def _empty_cache(variables: dict, *, config: ModelConfig, batch: int, length: int) -> Cache:
  """Zeros in the cache's tree and shapes (those `prefill` makes), traced once per shape:
  tracing the model for its cache shapes took most of a short `generate` call."""
  shapes = jax.eval_shape(lambda v: prefill(config, v, jnp.zeros((batch, 1), jnp.int32),
                                            jnp.zeros(batch, jnp.int32), length)[1], variables)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _scatter_rows(big: jax.Array, new: jax.Array, rows_R: jax.Array, slot_RxP: jax.Array,
                  key: bool) -> jax.Array:
  """Write new's positions into `big` at batch rows rows_R, cache positions slot_RxP (out of
  range: dropped). Keys [..., B*H, K, L] / new [..., R*H, K, P]; values [..., B*H, L, K]."""
  lead = big.ndim - 3
  h = new.shape[lead] // len(rows_R)
  rows_N = (rows_R[:, None] * h + jnp.arange(h)).reshape(-1, 1)
  slot_NxP = jnp.repeat(slot_RxP, h, axis=0)
  ix = (slice(None),) * lead
  if key:  # the row and position indices are apart: their dims come first
    index = ix + (rows_N, slice(None), slot_NxP)
    new = jnp.moveaxis(jnp.moveaxis(new, -1, 0), lead + 1, 0)
  else:
    index = ix + (rows_N, slot_NxP, slice(None))
  return big.at[index].set(new, mode="drop")


def refill(config: ModelConfig, variables: dict, state: State, rows_R: jax.Array,
           prompt_RxP: jax.Array, lens_R: jax.Array) -> tuple[jax.Array, State]:
  """Prefill left-padded prompts into rows rows_R (index >= B: ignored) of the ring, ending
  just before `clock`; the next-token logits [R, V] of each."""
  t = cache_length(state.cache)
  p = prompt_RxP.shape[1]
  pad_R = p - lens_R
  logits_RxV, small = prefill(config, variables, prompt_RxP, pad_R, p)
  idx_P = jnp.arange(p)
  slot_RxP = jnp.where(idx_P[None] >= pad_R[:, None], (state.clock - p + idx_P[None]) % t, t)
  cache = jax.tree_util.tree_map_with_path(
      lambda path, big, new: _scatter_rows(big, new, rows_R, slot_RxP,
                                           "cached_key" in jax.tree_util.keystr(path)),
      state.cache, small)
  start_B = state.start_B.at[rows_R].set((state.clock - lens_R) % t, mode="drop")
  return logits_RxV, State(cache, state.clock, start_B,
                           state.pos_B.at[rows_R].set(lens_R, mode="drop"))


def step(config: ModelConfig, variables: dict, state: State,
         token_B: jax.Array) -> tuple[jax.Array, State]:
  """Every row's next-token logits [B, V] after feeding token_B."""
  t = cache_length(state.cache)
  logits_BxV, cache = decode_step(config, variables, state.cache, token_B, state.clock,
                                  state.start_B, state.pos_B)
  return logits_BxV, State(cache, (state.clock + 1) % t, state.start_B, state.pos_B + 1)
