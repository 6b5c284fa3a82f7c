"""The KV-cache back end of `generation`: PrefixLM prefill and one-token decode steps.

The whole prompt is always the bidirectional prefix (docs/reference.md#inference): prefill
builds the PrefixLM mask itself, so no caller can forget it. Prompts are left-padded; their
positions restart at 0 at the first real token and padding is never attended by real tokens.
For continuous batching the cache is a ring of fixed length per call: all rows write the
same position per step (one in-place update), and a row refilled mid-call holds its prompt
just before that position and sees the cyclic range from its first token on.

The cache (`hrm_jax.kv_cache.Cache`) is data: `init_cache` builds it from the config's
shapes, one slot per (stack, pass, layer), `H_cycles * (L_cycles + 1) * layers_per_stack` for
HRM; every call here passes it into `LanguageModel.apply` and gets the updated one back. The
stacked layer weights are viewed per layer once per call (`prepare`, `layers.per_layer`),
and prefill computes the head on the last position only.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrm_jax import attention, kv_cache
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.kv_cache import Cache, CacheStep, LayerKV
from hrm_jax.layers import bidirectional, per_layer
from hrm_jax.models import LanguageModel
from hrm_jax.models.lm import head
from hrm_jax.models.registry import spec_of


def _check_arch(config: ModelConfig) -> None:
  if not spec_of(config).kv_cache:
    raise ValueError(f"KV-cache decoding does not support arch {config.arch!r} (its spec has "
                     "kv_cache=False: passes would share cache slots); generation recomputes "
                     "the row for it")


def init_cache(config: ModelConfig, execution: Execution, batch: int, length: int) -> Cache:
  """Zeros for every (stack, pass) of the arch (`ArchSpec.passes`) and each layer of that
  stack, `length` positions, in the execution's cache dtype; nothing is traced."""
  _check_arch(config)
  slots = {(name, p): config.stack_config(name).layers_per_stack
           for name, (passes, _) in spec_of(config).passes(config, None).items()
           for p in range(passes)}
  return kv_cache.empty(slots, batch * config.num_heads, config.head_dim, length,
                        execution.cache_dtype)


def prepare(variables: dict) -> dict:
  """`params` and `buffers` with the layer weights viewed per layer (what decoding reads);
  call it once outside a decode loop. Idempotent."""
  out = {k: variables[k] for k in ("params", "buffers") if k in variables}
  out["params"] = per_layer(nn.unbox(out["params"]))
  return out


def _apply(config: ModelConfig, execution: Execution, variables: dict, cache: Cache,
           batch: dict, step: CacheStep) -> tuple[jax.Array, Cache]:
  """The core on `batch` with the KV cache; final hidden states [B, S, D] and the new cache."""
  return LanguageModel(config, execution).apply(prepare(variables), batch, hidden_only=True,
                                                cache=cache, step=step)


def _logits(config: ModelConfig, execution: Execution, variables: dict,
            z_BxD: jax.Array) -> jax.Array:
  return head(config, execution).apply({"params": variables["params"]["lm_head"]},
                                       z_BxD).astype(jnp.float32)


def prefill(config: ModelConfig, execution: Execution, variables: dict, prompt_BxP: jax.Array,
            pad_B: jax.Array, cache_len: int) -> tuple[jax.Array, Cache]:
  """Run left-padded prompts as one bidirectional prefix; the logits [B, V] of the last
  position (the next token's) and a new cache of `cache_len` positions (prompt first).

  `pad_B` is the number of left padding tokens of each row. Attention reads only the
  prompt's own keys and the head runs on the last position only.
  """
  b, p = prompt_BxP.shape
  idx_P = jnp.arange(p)
  real_BxP = idx_P[None] >= pad_B[:, None]
  batch = {"inputs": prompt_BxP, "positions": jnp.maximum(idx_P[None] - pad_B[:, None], 0),
           "segment_ids": real_BxP.astype(jnp.int32), "prefix_mask": real_BxP}
  mask_BxPxP = attention.prefix_lm_mask(batch["segment_ids"], bidirectional(config, real_BxP))
  z_BxPxD, cache = _apply(config, execution, variables,
                          init_cache(config, execution, b, cache_len), batch,
                          CacheStep(jnp.int32(0), mask_BxPxP, cache_len, prefill=True))
  return _logits(config, execution, variables, z_BxPxD[:, -1]), cache


def cache_length(cache: Cache) -> int:
  """Positions per slot of `cache`."""
  return next(iter(cache.values()))[0].k_NxKxT.shape[-1]


def decode_step(config: ModelConfig, execution: Execution, variables: dict, cache: Cache,
                token_B: jax.Array, slot: jax.Array, start_B: jax.Array,
                positions_B: Optional[jax.Array] = None) -> tuple[jax.Array, Cache]:
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
  z_Bx1xD, cache = _apply(config, execution, variables, cache, batch,
                          CacheStep(slot, mask_Bx1xT, t))
  return _logits(config, execution, variables, z_Bx1xD[:, 0]), cache


def decode_tokens(config: ModelConfig, execution: Execution, variables: dict, cache: Cache,
                  tokens_BxS: jax.Array, start_B: jax.Array, pos_B: jax.Array,
                  write_BxS: Optional[jax.Array] = None) -> tuple[jax.Array, Cache]:
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
  z_BxSxD, cache = _apply(config, execution, variables, cache, batch,
                          CacheStep(slot_BxS, mask_BxSxT, t))
  return _logits(config, execution, variables, z_BxSxD), cache


class State(NamedTuple):
  """The KV back end of `generation`: one ring cache of fixed length per call."""
  cache: Cache
  clock: jax.Array  # int32: the cache position the next decode step writes
  start_B: jax.Array  # int32: cache position of each row's first prompt token
  pos_B: jax.Array  # int32: position (in its sequence) of each row's next input token


def init(config: ModelConfig, execution: Execution, batch: int, length: int) -> State:
  """An empty ring cache of `length` positions for `batch` rows."""
  zeros = lambda: jnp.zeros(batch, jnp.int32)
  return State(init_cache(config, execution, batch, length), jnp.int32(0), zeros(), zeros())


def _scatter_rows(big: LayerKV, new: LayerKV, rows_R: jax.Array, slot_RxP: jax.Array
                  ) -> LayerKV:
  """Write new's positions into `big` at batch rows rows_R, cache positions slot_RxP (out of
  range: dropped). Keys [B*H, K, T] / new [R*H, K, P]; values [B*H, T, K]."""
  h = new.k_NxKxT.shape[0] // len(rows_R)
  rows_N = (rows_R[:, None] * h + jnp.arange(h)).reshape(-1, 1)
  slot_NxP = jnp.repeat(slot_RxP, h, axis=0)
  # the row and position indices of the keys are apart: their dims come first
  k = big.k_NxKxT.at[rows_N, :, slot_NxP].set(jnp.moveaxis(new.k_NxKxT, -1, 1), mode="drop")
  v = big.v_NxTxK.at[rows_N, slot_NxP, :].set(new.v_NxTxK, mode="drop")
  return LayerKV(k, v)


def refill(config: ModelConfig, execution: Execution, variables: dict, state: State,
           rows_R: jax.Array, prompt_RxP: jax.Array, lens_R: jax.Array
           ) -> tuple[jax.Array, State]:
  """Prefill left-padded prompts into rows rows_R (index >= B: ignored) of the ring, ending
  just before `clock`; the next-token logits [R, V] of each."""
  t = cache_length(state.cache)
  p = prompt_RxP.shape[1]
  pad_R = p - lens_R
  logits_RxV, small = prefill(config, execution, variables, prompt_RxP, pad_R, p)
  idx_P = jnp.arange(p)
  slot_RxP = jnp.where(idx_P[None] >= pad_R[:, None], (state.clock - p + idx_P[None]) % t, t)
  cache = jax.tree.map(lambda big, new: _scatter_rows(big, new, rows_R, slot_RxP),
                       state.cache, small, is_leaf=lambda x: isinstance(x, LayerKV))
  start_B = state.start_B.at[rows_R].set((state.clock - lens_R) % t, mode="drop")
  return logits_RxV, State(cache, state.clock, start_B,
                           state.pos_B.at[rows_R].set(lens_R, mode="drop"))


def step(config: ModelConfig, execution: Execution, variables: dict, state: State,
         token_B: jax.Array) -> tuple[jax.Array, State]:
  """Every row's next-token logits [B, V] after feeding token_B."""
  t = cache_length(state.cache)
  logits_BxV, cache = decode_step(config, execution, variables, state.cache, token_B,
                                  state.clock, state.start_B, state.pos_B)
  return logits_BxV, State(cache, (state.clock + 1) % t, state.start_B, state.pos_B + 1)
