"""Generation with a KV cache: PrefixLM prefill, then a compiled one-token decode loop.

The whole prompt is always the bidirectional prefix (REFERENCE sections 2 and 6): prefill
builds the PrefixLM mask itself, so no caller can forget it. Rows are left-padded to a
common prompt length; positions restart at 0 at each row's first real token and padding is
never attended by real tokens. Prompt lengths and generation lengths are rounded up to
powers of two or 1.5x powers of two, so a handful of shapes cover every request (no compile
per prompt length).

The cache has one slot per (pass, layer) call, `H_cycles * (L_cycles + 1) * layers_per_stack`
for HRM: each is its own pair of arrays, keys [B, H, K, L] and values [B, H, L, K], so the
decode loop carries them as separate buffers and writes one position of each in place per
step (no slicing of a stacked cache). The stacked layer weights are split per layer once,
before the loop (`layers.unstack_layers`), and prefill computes the head on the last
position only.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import attention
from hrm_jax.config import ModelConfig
from hrm_jax.layers import CACHE, CURSOR, unstack_layers
from hrm_jax.models import LanguageModel
from hrm_jax.models.lm import head

Cache = Any  # the 'cache' collection: per attention layer, tuples of per-pass key/value slots
MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
  """The smallest power of two or 1.5x a power of two >= max(n, minimum): padded lengths
  with two shapes per octave, which bounds recompilation and wastes at most a third
  (pure powers of two padded a 43-token prompt to 64: 50% more prefill work)."""
  p2 = max(minimum, 1 << (max(n, 1) - 1).bit_length())
  return p2 * 3 // 4 if p2 * 3 // 4 >= max(n, minimum) and p2 > minimum else p2


def _check_arch(config: ModelConfig) -> None:
  if config.family == "trm":
    raise ValueError(f"KV-cache decoding does not support arch {config.arch!r}: its single "
                     "stack plays both roles, so H and L passes would share cache slots.")


def check_request(config: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  names: Optional[Sequence[str]] = None, where: str = "generate") -> None:
  """Raise ValueError unless every prompt is non-empty, in the vocabulary, and it plus
  max_new_tokens fits the model's context (`config.max_seq_len`; positions past it were
  never trained). `names` label the prompts in errors (default "prompt <i>")."""
  names = names or [f"prompt {i}" for i in range(len(prompts))]
  if not prompts:
    raise ValueError(f"{where}: need at least one prompt")
  if max_new_tokens < 1:
    raise ValueError(f"{where}: max_new_tokens={max_new_tokens} must be >= 1")
  for name, prompt in zip(names, prompts):
    n, limit = len(prompt), config.max_seq_len
    if n == 0:
      raise ValueError(f"{where}: {name} is empty; every prompt needs at least one token")
    if n > limit:
      raise ValueError(f"{where}: {name} has {n} tokens, longer than the model's "
                       f"max_seq_len={limit}")
    if n + max_new_tokens > limit:
      raise ValueError(f"{where}: {name} has {n} tokens and max_new_tokens={max_new_tokens}: "
                       f"{n + max_new_tokens} > the model's max_seq_len={limit} "
                       f"(at most {limit - n} new tokens fit)")
    bad = sorted({t for t in prompt if not 0 <= t < config.vocab_size})
    if bad:
      raise ValueError(f"{where}: {name} has token ids {bad[:10]} outside the vocabulary "
                       f"[0, {config.vocab_size})")


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
  mask_BxPxP = attention.prefix_lm_mask(batch["segment_ids"], real_BxP)
  z_BxPxD, cache = _apply(config, variables, {}, batch,
                          attention.CacheStep(jnp.int32(0), mask_BxPxP, cache_len))
  return _logits(config, variables, z_BxPxD[:, -1]), cache


def cache_length(cache: Cache) -> int:
  """Positions per slot of a cache made by `prefill`."""
  return next(leaf.shape[-1] for path, leaf in jax.tree_util.tree_leaves_with_path(cache)
              if "cached_key" in jax.tree_util.keystr(path))


def decode_step(config: ModelConfig, variables: dict, cache: Cache, token_B: jax.Array,
                slot: jax.Array, pad_B: jax.Array) -> tuple[jax.Array, Cache]:
  """One causal token per row at cache position `slot` (same for all rows); logits [B, V]."""
  t = cache_length(cache)
  slots_T = jnp.arange(t)
  mask_Bx1xT = ((slots_T[None] >= pad_B[:, None]) & (slots_T[None] <= slot))[:, None]
  ones_Bx1 = jnp.ones((token_B.shape[0], 1), jnp.int32)
  batch = {"inputs": token_B[:, None], "positions": (slot - pad_B)[:, None],
           "segment_ids": ones_Bx1, "prefix_mask": ones_Bx1 == 0}
  z_Bx1xD, cache = _apply(config, variables, cache, batch,
                          attention.CacheStep(slot, mask_Bx1xT, t))
  return _logits(config, variables, z_Bx1xD[:, 0]), cache


def sample(logits_BxV: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
           greedy: bool) -> jax.Array:
  """Greedy argmax, or nucleus sampling at `temperature` keeping the top-`top_p` mass."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  keep_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p  # always keeps the top token
  cutoff_B = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1)
  logits_BxV = jnp.where(logits_BxV >= cutoff_B[:, None], logits_BxV, -jnp.inf)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_len", "greedy"))
def _generate(variables: dict, prompt_BxP: jax.Array, pad_B: jax.Array, max_new: jax.Array,
              temperature: jax.Array, top_p: jax.Array, eos_id: jax.Array, rng: jax.Array, *,
              config: ModelConfig, max_len: int, greedy: bool) -> jax.Array:
  """Tokens [B, max_len]; entries past eos or past max_new are 0. Compiled end to end."""
  b, p = prompt_BxP.shape
  pick = lambda logits, step: sample(logits, jax.random.fold_in(rng, step), temperature,
                                     top_p, greedy)
  variables = decode_variables(variables)  # layer weights split once, outside the loop
  logits_BxV, cache = prefill(config, variables, prompt_BxP, pad_B, p + max_len)
  first_B = pick(logits_BxV, 0)
  tokens_BxN = jnp.zeros((b, max_len), jnp.int32).at[:, 0].set(first_B)

  def cond(state):
    step, _, _, done_B = state
    return (step < max_new) & ~jnp.all(done_B)

  def body(state):
    step, cache, tokens_BxN, done_B = state
    logits_BxV, cache = decode_step(config, variables, cache, tokens_BxN[:, step - 1],
                                    p + step - 1, pad_B)
    next_B = jnp.where(done_B, 0, pick(logits_BxV, step))
    return step + 1, cache, tokens_BxN.at[:, step].set(next_B), done_B | (next_B == eos_id)

  state = (jnp.int32(1), cache, tokens_BxN, first_B == eos_id)
  return jax.lax.while_loop(cond, body, state)[2]


def generate(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             eos_id: Optional[int] = None, rng: Optional[jax.Array] = None) -> list[list[int]]:
  """The new tokens of each prompt (up to and including eos_id, at most max_new_tokens).

  temperature 0 is greedy; otherwise nucleus sampling with the explicit PRNG key `rng`.
  Test-time depth: pass `config.replace(H_cycles=..., L_cycles=...)` (an experiment knob;
  the parameters do not depend on the cycle counts). The trm archs, whose one stack cannot
  keep a cache per pass, decode greedily with `recompute_decode.generate_uncached`.
  """
  check_request(config, prompts, max_new_tokens)
  if temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(f"generate: need temperature >= 0 and 0 < top_p <= 1 "
                     f"(got temperature={temperature}, top_p={top_p})")
  greedy = temperature == 0
  if not greedy and rng is None:
    raise ValueError("generate: sampling (temperature > 0) needs an explicit PRNG key `rng`")
  if config.family == "trm":  # one stack plays H and L: no per-pass KV cache, recompute
    if not greedy:
      raise ValueError(f"generate: arch {config.arch!r} decodes greedily only (temperature=0); "
                       "it has no KV cache and recomputes the sequence each step")
    from hrm_jax.recompute_decode import generate_uncached  # it imports this module
    return generate_uncached(config, variables, prompts, max_new_tokens, eos_id)
  lens = np.array([len(p) for p in prompts])
  p_len = bucket(int(lens.max()))
  prompt_BxP = np.zeros((len(prompts), p_len), np.int32)
  for row, prompt in enumerate(prompts):
    prompt_BxP[row, p_len - len(prompt):] = prompt
  model_vars = {k: variables[k] for k in ("params", "buffers") if k in variables}
  tokens_BxN = np.asarray(_generate(
      nn.unbox(model_vars), prompt_BxP, (p_len - lens).astype(np.int32),
      jnp.int32(max_new_tokens), jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
      jnp.int32(-1 if eos_id is None else eos_id),
      jax.random.PRNGKey(0) if rng is None else rng,
      config=config, max_len=bucket(max_new_tokens), greedy=greedy))
  out = []
  for row in tokens_BxN[:, :max_new_tokens].tolist():
    if eos_id is not None and eos_id in row:
      row = row[:row.index(eos_id) + 1]
    out.append(row)
  return out
