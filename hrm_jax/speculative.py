"""Self-speculative decoding over the KV cache: the same weights at fewer H/L cycles draft k
tokens, the full depth checks them in one pass over k + 1 positions.

HRM's depth is a run-time knob, so the draft model costs no extra weights. Each round:
the draft (config `draft`, its own cache slots: its passes compute other states than the
full model's) proposes d_1..d_k one token at a time; the full model runs [last, d_1..d_k]
at once and gives k + 1 next-token distributions p_0..p_k. Greedy keeps the drafts up to
the first one that differs from the full model's argmax and adds that argmax (so every
round emits 1..k+1 tokens, exactly the full model's greedy tokens). Sampling uses the
standard rule (Leviathan et al. 2023; Chen et al. 2023): accept d_j with probability
min(1, p(d_j) / q(d_j)), at the first rejection draw from max(p - q, 0) renormalised, after
k acceptances draw from p_k; the tokens are then distributed as the full model's (both p
and q are the nucleus distributions `sampling.sample` draws from).

Both caches hold each row at its own position (`decode.decode_tokens`: row r's token at
position i lives at cache position (start_r + i) % T), and a token sees only its row's
positions up to its own. Rolling back rejected tokens in both caches is therefore moving
the row's position back: what they wrote past it is invisible and gets overwritten. When
all k drafts are accepted the draft cache lacks d_k (the draft never ran it); the next
round's first draft step feeds [d_k, last] and stores d_k's keys/values (`behind_B`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from hrm_jax import decode
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.models.registry import spec_of
from hrm_jax.sampling import nucleus_logits, token_keys

# Purposes of the keys drawn per (prompt, token index): the draft's sample, the acceptance
# test, the replacement token; the engine's plain sampling uses the unfolded key.
DRAFT, ACCEPT, REPLACE = 1, 2, 3


def draft_config(config: ModelConfig, cycles: tuple[int, int], where: str = "generate"
                 ) -> ModelConfig:
  """The draft model: `config` at (H_cycles, L_cycles) = cycles."""
  family = spec_of(config).family
  if family != "hrm":
    raise ValueError(f"{where}: draft_cycles needs an HRM (H and L cycles, KV cache); arch "
                     f"{config.arch!r} is family {family!r}")
  if len(cycles) != 2 or min(cycles) < 1:
    raise ValueError(f"{where}: draft_cycles={tuple(cycles)} must be two ints >= 1 (H, L)")
  return config.replace(H_cycles=int(cycles[0]), L_cycles=int(cycles[1]))


def parse_cycles(values: Optional[Sequence[str]], draft_len: int, flag: str = "--draft_cycles"
                 ) -> Optional[tuple[int, int]]:
  """A command line's draft_cycles list ("1", "1") as (H, L), or None when unset; ValueError
  naming the flag unless two ints >= 1 and draft_len >= 1."""
  if values is None:
    return None
  try:
    cycles = tuple(int(c) for c in values)
  except ValueError:
    cycles = ()
  if len(cycles) != 2 or min(cycles) < 1:
    raise ValueError(f"{flag}={','.join(values)}: expected H,L (two ints >= 1), e.g. 1,1")
  if draft_len < 1:
    raise ValueError(f"--draft_len={draft_len} must be >= 1")
  return cycles[0], cycles[1]


class State(NamedTuple):
  """Both caches; their pos_B (the position of each row's last token) stay equal."""
  full: decode.State
  draft: decode.State
  prev_B: jax.Array  # int32: the token at position pos_B - 1
  behind_B: jax.Array  # bool: the draft cache lacks position pos_B - 1


class Proposal(NamedTuple):
  """One round: the row's next tokens after verification, the first count_B of them valid."""
  tokens_BxS: jax.Array  # int32, S = k + 1
  count_B: jax.Array  # int32 in 1..k+1: accepted drafts + the full model's own token
  accepted_B: jax.Array  # int32 in 0..k: drafts accepted


@dataclasses.dataclass
class Stats:
  """Counts of a speculative generation, accumulated over its calls (one per decode chunk)."""
  draft_len: int = 0
  rounds: int = 0  # verification passes (batch-wide)
  row_rounds: int = 0  # verifications of running rows
  accepted: int = 0  # draft tokens accepted
  tokens: int = 0  # tokens emitted by verifications (after eos and budget trimming)

  @property
  def acceptance_rate(self) -> float:
    """Accepted / proposed draft tokens."""
    return self.accepted / max(self.row_rounds * self.draft_len, 1)

  @property
  def tokens_per_verification(self) -> float:
    return self.tokens / max(self.row_rounds, 1)

  def summary(self) -> str:
    return (f"speculative: {self.rounds} verifications, acceptance {self.acceptance_rate:.1%} "
            f"of {self.draft_len} drafted, {self.tokens_per_verification:.2f} tokens per row "
            "and verification")


def init(config: ModelConfig, draft: ModelConfig, execution: Execution, batch: int,
         length: int) -> State:
  """Empty caches of `length` positions; length must hold prompt + budget + k per row."""
  zeros = jnp.zeros(batch, jnp.int32)
  return State(decode.init(config, execution, batch, length),
               decode.init(draft, execution, batch, length), zeros, zeros == 1)


def refill(config: ModelConfig, draft: ModelConfig, execution: Execution, variables: dict,
           state: State, rows_R: jax.Array, prompt_RxP: jax.Array, lens_R: jax.Array
           ) -> tuple[jax.Array, State]:
  """Prefill prompts into rows rows_R of both caches; the full model's next-token logits."""
  logits_RxV, full = decode.refill(config, execution, variables, state.full, rows_R,
                                   prompt_RxP, lens_R)
  _, small = decode.refill(draft, execution, variables, state.draft, rows_R, prompt_RxP,
                           lens_R)
  return logits_RxV, State(full, small, state.prev_B,
                           state.behind_B.at[rows_R].set(False, mode="drop"))


def _choose(logits_BxV: jax.Array, keys_B: jax.Array, temperature, top_p, greedy: bool
            ) -> tuple[jax.Array, Optional[jax.Array]]:
  """The token and (sampling) the nucleus probabilities it was drawn from."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32), None
  nucleus_BxV = nucleus_logits(logits_BxV, temperature, top_p)
  token_B = jax.vmap(jax.random.categorical)(keys_B, nucleus_BxV).astype(jnp.int32)
  return token_B, jax.nn.softmax(nucleus_BxV, axis=-1)


def propose(config: ModelConfig, draft: ModelConfig, execution: Execution, variables: dict,
            state: State, last_B: jax.Array, index_B: jax.Array, count_B: jax.Array,
            rng: jax.Array, temperature: jax.Array, top_p: jax.Array, k: int, greedy: bool
            ) -> tuple[Proposal, State]:
  """Draft k tokens after last_B (at position full.pos_B; token index count_B of prompt
  index_B), verify them in one full-depth pass; both caches written up to pos_B + k."""
  full, small = state.full, state.draft
  pos_B, start_B = full.pos_B, full.start_B
  keys = lambda j, purpose: jax.vmap(jax.random.fold_in, (0, None))(
      token_keys(rng, index_B, count_B + j), purpose)

  # Draft step 0 feeds [prev, last]: prev is stored only where the draft is behind.
  two_Bx2 = jnp.stack([state.prev_B, last_B], axis=1)
  write_Bx2 = jnp.stack([state.behind_B, jnp.ones_like(state.behind_B)], axis=1)
  logits_Bx2xV, cache = decode.decode_tokens(draft, execution, variables, small.cache, two_Bx2,
                                             start_B, pos_B - 1, write_Bx2)
  d_B, q_BxV = _choose(logits_Bx2xV[:, 1], keys(0, DRAFT), temperature, top_p, greedy)
  b, v = logits_Bx2xV.shape[0], logits_Bx2xV.shape[-1]
  drafts_BxK = jnp.zeros((b, k), jnp.int32).at[:, 0].set(d_B)
  q_BxKxV = None if greedy else jnp.zeros((b, k + 1, v), jnp.float32).at[:, 0].set(q_BxV)

  def draft_step(j, carry):
    cache, drafts_BxK, q_BxKxV = carry
    token_Bx1 = jax.lax.dynamic_slice_in_dim(drafts_BxK, j - 1, 1, axis=1)
    logits_Bx1xV, cache = decode.decode_tokens(draft, execution, variables, cache, token_Bx1,
                                               start_B, pos_B + j)
    d_B, q_BxV = _choose(logits_Bx1xV[:, 0], keys(j, DRAFT), temperature, top_p, greedy)
    drafts_BxK = drafts_BxK.at[:, j].set(d_B)
    if q_BxKxV is not None:
      q_BxKxV = q_BxKxV.at[:, j].set(q_BxV)
    return cache, drafts_BxK, q_BxKxV

  cache, drafts_BxK, q_BxKxV = jax.lax.fori_loop(1, k, draft_step,
                                                 (cache, drafts_BxK, q_BxKxV))

  inputs_BxS = jnp.concatenate([last_B[:, None], drafts_BxK], axis=1)
  logits_BxSxV, full_cache = decode.decode_tokens(config, execution, variables, full.cache,
                                                  inputs_BxS, start_B, pos_B)
  state = State(full._replace(cache=full_cache), small._replace(cache=cache), state.prev_B,
                state.behind_B)
  if greedy:
    target_BxS = jnp.argmax(logits_BxSxV, axis=-1).astype(jnp.int32)
    match_BxK = drafts_BxK == target_BxS[:, :k]
    accepted_B = jnp.sum(jnp.cumprod(match_BxK, axis=1), axis=1).astype(jnp.int32)
    return Proposal(target_BxS, accepted_B + 1, accepted_B), state

  s_idx = jnp.arange(k + 1)
  p_BxSxV = jax.nn.softmax(
      jax.vmap(nucleus_logits, (1, None, None), 1)(logits_BxSxV, temperature, top_p), axis=-1)
  take = lambda x_BxSxV, t_BxK: jnp.take_along_axis(x_BxSxV[:, :k], t_BxK[..., None],
                                                    axis=-1)[..., 0]
  p_d_BxK, q_d_BxK = take(p_BxSxV, drafts_BxK), take(q_BxKxV, drafts_BxK)
  u_BxK = jnp.stack([jax.vmap(jax.random.uniform)(keys(j, ACCEPT)) for j in range(k)], axis=1)
  accept_BxK = u_BxK * q_d_BxK < p_d_BxK
  accepted_B = jnp.sum(jnp.cumprod(accept_BxK, axis=1), axis=1).astype(jnp.int32)
  # The replacement: max(p - q, 0) at the first rejection (q is 0 at index k: p_k itself).
  pick = lambda x_BxSxV: jnp.take_along_axis(x_BxSxV, accepted_B[:, None, None], axis=1)[:, 0]
  residual_BxV = jnp.maximum(pick(p_BxSxV) - pick(q_BxKxV), 0.0)
  residual_BxV = jnp.where(jnp.sum(residual_BxV, -1, keepdims=True) > 0, residual_BxV,
                           pick(p_BxSxV))
  replace_keys = jax.vmap(jax.random.fold_in, (0, None))(
      token_keys(rng, index_B, count_B + accepted_B), REPLACE)
  last_token_B = jax.vmap(jax.random.categorical)(replace_keys,
                                                  jnp.log(residual_BxV)).astype(jnp.int32)
  drafts_BxS = jnp.concatenate([drafts_BxK, jnp.zeros_like(last_B)[:, None]], axis=1)
  tokens_BxS = jnp.where(s_idx[None] < accepted_B[:, None], drafts_BxS,
                         last_token_B[:, None])
  return Proposal(tokens_BxS, accepted_B + 1, accepted_B), state


class Kept(NamedTuple):
  """What a round leaves each row: its first keep_B tokens (up to eos and its budget)."""
  tokens_BxS: jax.Array  # int32, S = k + 1
  keep_B: jax.Array  # int32 in 0..k+1 (0: a row that was done)
  last_B: jax.Array  # int32: the row's last kept token (its old one when none was kept)
  hit_eos_B: jax.Array  # bool: the kept tokens end at eos
  accepted_B: jax.Array  # int32 in 0..k: drafts accepted


def round_(config: ModelConfig, draft: ModelConfig, execution: Execution, variables: dict,
           state: State, last_B: jax.Array, index_B: jax.Array, count_B: jax.Array,
           room_B: jax.Array, done_B: jax.Array, s: Any, k: int, greedy: bool
           ) -> tuple[Kept, State]:
  """One round of the engine (`generation._speculate`): `propose`, keep each running row's
  tokens through eos and at most room_B of them, and roll both caches back to what was kept
  (`advance`). `s`: the engine's Sampling (rng, temperature, top_p, eos_id)."""
  prop, state = propose(config, draft, execution, variables, state, last_B, index_B, count_B,
                        s.rng, s.temperature, s.top_p, k, greedy)
  j_S = jnp.arange(k + 1)
  eos_BxS = (prop.tokens_BxS == s.eos_id) & (j_S[None] < prop.count_B[:, None])
  through_eos_B = jnp.where(jnp.any(eos_BxS, axis=1), jnp.argmax(eos_BxS, axis=1) + 1,
                            prop.count_B)
  keep_B = jnp.where(done_B, 0, jnp.minimum(through_eos_B, room_B))
  hit_eos_B = jnp.any(eos_BxS & (j_S[None] < keep_B[:, None]), axis=1)
  new_last_B = jnp.where(keep_B > 0, jnp.take_along_axis(
      prop.tokens_BxS, jnp.maximum(keep_B - 1, 0)[:, None], 1)[:, 0], last_B)
  state = advance(state, prop.tokens_BxS, keep_B, last_B)
  return Kept(prop.tokens_BxS, keep_B, new_last_B, hit_eos_B, prop.accepted_B), state


def advance(state: State, tokens_BxS: jax.Array, emitted_B: jax.Array, last_B: jax.Array
            ) -> State:
  """Keep emitted_B (0..k+1) of the tokens in each row: both caches roll back to them."""
  k = tokens_BxS.shape[1] - 1
  before_B = jnp.take_along_axis(tokens_BxS, jnp.maximum(emitted_B - 2, 0)[:, None], 1)[:, 0]
  prev_B = jnp.where(emitted_B >= 2, before_B, jnp.where(emitted_B == 1, last_B, state.prev_B))
  behind_B = jnp.where(emitted_B > 0, emitted_B == k + 1, state.behind_B)
  pos_B = state.full.pos_B + emitted_B
  return State(state.full._replace(pos_B=pos_B), state.draft._replace(pos_B=pos_B), prev_B,
               behind_B)
