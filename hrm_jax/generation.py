"""The generation engine: one front door, continuous batching over a fixed set of rows.

`generate` / `stream` keep `batch_size` rows busy: when a row emits eos or reaches its own
budget its answer is recorded (streamed) and the row is refilled with the next prompt, so
throughput tracks the mean answer length, not the longest. Prompts are admitted largest
budget first (ties in prompt order; lm-eval likewise starts its longest requests first): the
budgets are known up front, and a long answer started last would run nearly alone at the end
(benchmarks/decode.py --continuous: 269 decode steps in prompt order, 231 largest first, 229
with every row always busy). Decoding runs as compiled chunks
(`_decode`: a `lax.while_loop` until some running row finishes); between chunks the freed rows
are prefilled (`_refill`) into their own slots while the other rows keep their state.

Two back ends share the loop, chosen by the arch's spec in `backend_for`: `decode` (KV
cache, a ring of fixed length per call, so a refilled row starts anywhere) and
`recompute_decode` (cache-free, each step recomputes every row: `trm`, whose one stack cannot
keep a cache per pass). Each provides prepare / init / refill / step; neither imports the
other, and the request checks, sampling and eos trimming live here once.

With `draft_cycles` the decode chunks are speculative rounds instead (`_speculate`, module
`speculative`): the same weights at fewer cycles draft tokens, the full depth verifies them.

Compiled shapes stay few: one batch B, out length N = bucket(largest budget) and cache length
bucket(longest prompt) + N per call; refills have R = a power of two rows and prompt lengths
rounded by `bucket`. Sampling draws each token with the key fold_in(fold_in(rng, prompt
index), token index), so a fixed key gives the same tokens at any batch_size.
"""

from __future__ import annotations

import functools
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import decode, recompute_decode, speculative
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.models.registry import spec_of
from hrm_jax.sampling import sample, token_keys

BACKENDS = {"kv": decode, "recompute": recompute_decode}
MIN_BUCKET = 16
Budgets = Union[int, Sequence[int]]


def backend_for(config: ModelConfig) -> str:
  """The back end that serves the arch: the KV cache where its spec allows one."""
  return "kv" if spec_of(config).kv_cache else "recompute"


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
  """The smallest power of two or 1.5x a power of two >= max(n, minimum): padded lengths
  with two shapes per octave, which bounds recompilation and wastes at most a third
  (pure powers of two padded a 43-token prompt to 64: 50% more prefill work)."""
  p2 = max(minimum, 1 << (max(n, 1) - 1).bit_length())
  return p2 * 3 // 4 if p2 * 3 // 4 >= max(n, minimum) and p2 > minimum else p2


def check_request(config: ModelConfig, prompts: Sequence[Sequence[int]],
                  max_new_tokens: Budgets, names: Optional[Sequence[str]] = None,
                  where: str = "generate") -> list[int]:
  """Each prompt's budget; ValueError unless every prompt is non-empty, in the vocabulary,
  and it plus its budget fits the model's context (`config.max_seq_len`; positions past it
  were never trained). `names` label the prompts in errors (default "prompt <i>")."""
  names = names or [f"prompt {i}" for i in range(len(prompts))]
  if not prompts:
    raise ValueError(f"{where}: need at least one prompt")
  if isinstance(max_new_tokens, (int, np.integer)):
    budgets = [int(max_new_tokens)] * len(prompts)
  else:
    budgets = [int(n) for n in max_new_tokens]
    if len(budgets) != len(prompts):
      raise ValueError(f"{where}: max_new_tokens has {len(budgets)} entries for "
                       f"{len(prompts)} prompts (one int, or one per prompt)")
  for name, prompt, new in zip(names, prompts, budgets):
    n, limit = len(prompt), config.max_seq_len
    if new < 1:
      raise ValueError(f"{where}: {name}: max_new_tokens={new} must be >= 1")
    if n == 0:
      raise ValueError(f"{where}: {name} is empty; every prompt needs at least one token")
    if n > limit:
      raise ValueError(f"{where}: {name} has {n} tokens, longer than the model's "
                       f"max_seq_len={limit}")
    if n + new > limit:
      raise ValueError(f"{where}: {name} has {n} tokens and max_new_tokens={new}: "
                       f"{n + new} > the model's max_seq_len={limit} "
                       f"(at most {limit - n} new tokens fit)")
    bad = sorted({t for t in prompt if not 0 <= t < config.vocab_size})
    if bad:
      raise ValueError(f"{where}: {name} has token ids {bad[:10]} outside the vocabulary "
                       f"[0, {config.vocab_size})")
  return budgets


class Rows(NamedTuple):
  """The engine's bookkeeping per row, on device."""
  last_B: jax.Array  # int32: the last token (the next decode input)
  count_B: jax.Array  # int32: tokens generated so far
  budget_B: jax.Array  # int32: the row's max_new_tokens
  done_B: jax.Array  # bool: finished (eos or budget) or empty
  index_B: jax.Array  # int32: the prompt the row serves
  out_BxN: jax.Array  # int32: generated tokens (0 past count_B)


class Sampling(NamedTuple):
  temperature: jax.Array
  top_p: jax.Array
  eos_id: jax.Array
  rng: jax.Array


@functools.partial(jax.jit,
                   static_argnames=("config", "execution", "backend", "greedy", "draft"),
                   donate_argnames=("state", "rows"))
def _refill(variables: dict, state, rows: Rows, rows_R: jax.Array, prompt_RxP: jax.Array,
            lens_R: jax.Array, index_R: jax.Array, budget_R: jax.Array, s: Sampling, *,
            config: ModelConfig, execution: Execution, backend: str, greedy: bool,
            draft: Optional[ModelConfig] = None):
  """Prefill prompts into rows rows_R (index >= B: padding, ignored); first tokens sampled.
  With a `draft` config the state is `speculative.State` (both caches filled)."""
  if draft is None:
    logits_RxV, state = BACKENDS[backend].refill(config, execution, variables, state, rows_R,
                                                 prompt_RxP, lens_R)
  else:
    logits_RxV, state = speculative.refill(config, draft, execution, variables, state, rows_R,
                                           prompt_RxP, lens_R)
  first_R = sample(logits_RxV, token_keys(s.rng, index_R, jnp.zeros_like(index_R)),
                   s.temperature, s.top_p, greedy)
  n = rows.out_BxN.shape[1]
  put = lambda x_B, new_R: x_B.at[rows_R].set(new_R, mode="drop")
  return state, Rows(
      put(rows.last_B, first_R), put(rows.count_B, jnp.ones_like(first_R)),
      put(rows.budget_B, budget_R), put(rows.done_B, (first_R == s.eos_id) | (budget_R <= 1)),
      put(rows.index_B, index_R),
      put(rows.out_BxN, jnp.zeros((len(first_R), n), jnp.int32).at[:, 0].set(first_R)))


@functools.partial(jax.jit, static_argnames=("config", "execution", "backend", "greedy"),
                   donate_argnames=("state", "rows"))
def _decode(variables: dict, state, rows: Rows, s: Sampling, *, config: ModelConfig,
            execution: Execution, backend: str, greedy: bool):
  """Decode steps for every row until a running row finishes (rows done on entry idle)."""
  step = BACKENDS[backend].step
  b, n = rows.out_BxN.shape
  idle_B = rows.done_B

  def cond(carry):
    return ~jnp.any(carry[1].done_B & ~idle_B)

  def body(carry):
    state, r = carry
    logits_BxV, state = step(config, execution, variables, state, r.last_B)
    next_B = sample(logits_BxV, token_keys(s.rng, r.index_B, r.count_B), s.temperature, s.top_p,
                    greedy)
    out_BxN = r.out_BxN.at[jnp.arange(b), jnp.where(r.done_B, n, r.count_B)].set(
        next_B, mode="drop")
    count_B = r.count_B + ~r.done_B
    done_B = r.done_B | (next_B == s.eos_id) | (count_B >= r.budget_B)
    return state, Rows(jnp.where(r.done_B, r.last_B, next_B), count_B, r.budget_B, done_B,
                       r.index_B, out_BxN)

  return jax.lax.while_loop(cond, body, (state, rows))


@functools.partial(jax.jit,
                   static_argnames=("config", "execution", "draft", "draft_len", "greedy"),
                   donate_argnames=("state", "rows"))
def _speculate(variables: dict, state: speculative.State, rows: Rows, s: Sampling, *,
               config: ModelConfig, execution: Execution, draft: ModelConfig, draft_len: int,
               greedy: bool):
  """Speculative rounds (`speculative.round_`: what each row keeps, both caches rolled back)
  until a running row finishes; here only the rows' bookkeeping, as `_decode`'s. Also the
  round counts: verifications, running rows verified, drafts accepted, tokens kept."""
  b, n = rows.out_BxN.shape
  idle_B = rows.done_B
  j_S = jnp.arange(draft_len + 1)

  def cond(carry):
    return ~jnp.any(carry[1].done_B & ~idle_B)

  def body(carry):
    state, r, counts = carry
    kept, state = speculative.round_(config, draft, execution, variables, state, r.last_B,
                                     r.index_B, r.count_B, r.budget_B - r.count_B, r.done_B,
                                     s, draft_len, greedy)
    cols_BxS = jnp.where(j_S[None] < kept.keep_B[:, None], r.count_B[:, None] + j_S[None], n)
    out_BxN = r.out_BxN.at[jnp.arange(b)[:, None], cols_BxS].set(kept.tokens_BxS, mode="drop")
    count_B = r.count_B + kept.keep_B
    done_B = r.done_B | kept.hit_eos_B | (count_B >= r.budget_B)
    running_B = ~r.done_B
    counts = counts + jnp.stack([jnp.int32(1), running_B.sum(),
                                 jnp.where(running_B, kept.accepted_B, 0).sum(),
                                 kept.keep_B.sum()])
    return state, Rows(kept.last_B, count_B, r.budget_B, done_B, r.index_B, out_BxN), counts

  return jax.lax.while_loop(cond, body, (state, rows, jnp.zeros(4, jnp.int32)))


def stream(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]],
           max_new_tokens: Budgets, *, execution: Execution = Execution(),
           temperature: float = 0.0, top_p: float = 1.0,
           eos_id: Optional[int] = None, rng: Optional[jax.Array] = None,
           batch_size: Optional[int] = None, backend: Optional[str] = None,
           names: Optional[Sequence[str]] = None, where: str = "generate",
           draft_cycles: Optional[Sequence[int]] = None, draft_len: int = 4,
           stats: Optional[speculative.Stats] = None) -> Iterator[tuple[int, list[int]]]:
  """(prompt index, new tokens) of each prompt as it finishes; see `generate`."""
  budgets = check_request(config, prompts, max_new_tokens, names, where)
  if temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(f"{where}: need temperature >= 0 and 0 < top_p <= 1 "
                     f"(got temperature={temperature}, top_p={top_p})")
  greedy = temperature == 0
  if not greedy and rng is None:
    raise ValueError(f"{where}: sampling (temperature > 0) needs an explicit PRNG key `rng`")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"{where}: batch_size={batch_size} must be >= 1")
  backend = backend or backend_for(config)
  if backend not in BACKENDS:
    raise ValueError(f"{where}: backend={backend!r}, expected one of {sorted(BACKENDS)}")
  draft = None
  if draft_cycles is not None:
    draft = speculative.draft_config(config, tuple(draft_cycles), where)
    if backend != "kv":
      raise ValueError(f"{where}: draft_cycles needs the KV-cache back end, not {backend!r}")
    if draft_len < 1:
      raise ValueError(f"{where}: draft_len={draft_len} must be >= 1")
  if stats is not None:
    stats.draft_len = draft_len if draft is not None else 0
  return _run(config, execution, variables, [list(p) for p in prompts], budgets, greedy,
              Sampling(jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
                       jnp.int32(-1 if eos_id is None else eos_id),
                       jax.random.PRNGKey(0) if rng is None else rng),
              min(batch_size or len(prompts), len(prompts)), backend, draft, draft_len, stats)


def _run(config: ModelConfig, execution: Execution, variables: dict, prompts: list[list[int]],
         budgets: list[int], greedy: bool, s: Sampling, b: int, backend: str,
         draft: Optional[ModelConfig], draft_len: int, stats: Optional[speculative.Stats]
         ) -> Iterator[tuple[int, list[int]]]:
  be = BACKENDS[backend]
  variables = be.prepare(variables)
  n = bucket(max(budgets))
  length = bucket(max(map(len, prompts))) + n
  if draft is None:
    state = be.init(config, execution, b, length)
  else:  # a verification writes up to draft_len positions past the row's last token
    state = speculative.init(config, draft, execution, b, length + draft_len)
  rows = Rows(*(jnp.zeros(b, jnp.int32) for _ in range(3)), jnp.ones(b, bool),
              jnp.zeros(b, jnp.int32), jnp.zeros((b, n), jnp.int32))
  static = dict(config=config, execution=execution, backend=backend, greedy=greedy, draft=draft)
  pending = iter(sorted(range(len(prompts)), key=lambda i: -budgets[i]))
  serving: list[Optional[int]] = [None] * b  # the prompt each row serves

  def fill(free: list[int]):
    nonlocal state, rows
    take = [(r, i) for r, i in zip(free, pending)]
    if not take:
      return
    r_len = 1 << (len(take) - 1).bit_length()  # refill shapes: powers of two
    p_len = bucket(max(len(prompts[i]) for _, i in take))
    prompt_RxP = np.zeros((r_len, p_len), np.int32)
    rows_R, index_R, lens_R, budget_R = (np.full(r_len, b, np.int32), np.zeros(r_len, np.int32),
                                         np.ones(r_len, np.int32), np.ones(r_len, np.int32))
    for j, (r, i) in enumerate(take):
      serving[r] = i
      prompt_RxP[j, p_len - len(prompts[i]):] = prompts[i]
      rows_R[j], index_R[j], lens_R[j], budget_R[j] = r, i, len(prompts[i]), budgets[i]
    state, rows = _refill(variables, state, rows, rows_R, prompt_RxP, lens_R, index_R,
                          budget_R, s, **static)

  fill(list(range(b)))
  while any(i is not None for i in serving):
    done_B = np.asarray(rows.done_B)
    finished = [r for r, i in enumerate(serving) if i is not None and done_B[r]]
    if not finished and draft is None:
      state, rows = _decode(variables, state, rows, s, config=config, execution=execution,
                            backend=backend, greedy=greedy)
      continue
    if not finished:
      state, rows, counts = _speculate(variables, state, rows, s, config=config,
                                       execution=execution, draft=draft, draft_len=draft_len,
                                       greedy=greedy)
      if stats is not None:
        rounds, row_rounds, accepted, tokens = np.asarray(counts).tolist()
        stats.rounds += rounds
        stats.row_rounds += row_rounds
        stats.accepted += accepted
        stats.tokens += tokens
      continue
    count_B, out_BxN = np.asarray(rows.count_B), np.asarray(rows.out_BxN)
    for r in finished:
      yield serving[r], out_BxN[r, :count_B[r]].tolist()  # ends at eos: the loop stops there
      serving[r] = None
    fill(finished)


def generate(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]],
             max_new_tokens: Budgets, *, execution: Execution = Execution(),
             temperature: float = 0.0, top_p: float = 1.0,
             eos_id: Optional[int] = None, rng: Optional[jax.Array] = None,
             batch_size: Optional[int] = None, backend: Optional[str] = None,
             draft_cycles: Optional[Sequence[int]] = None, draft_len: int = 4,
             stats: Optional[speculative.Stats] = None) -> list[list[int]]:
  """The new tokens of each prompt, in prompt order: up to and including eos_id, at most its
  max_new_tokens (one int, or one per prompt).

  `execution` says how the model runs (its dtype is the KV cache's too; a checkpoint's own:
  `model_loading.load_model`). temperature 0 is greedy; otherwise nucleus sampling with the
  explicit PRNG key `rng`.
  batch_size rows decode at once (default: all prompts), refilled as answers finish.
  Test-time depth: pass `config.replace(H_cycles=..., L_cycles=...)`. `backend` ("kv" or
  "recompute") overrides `backend_for(config)`, e.g. to check one back end against the other.

  Speculative decoding: `draft_cycles=(H, L)` drafts `draft_len` tokens per round with the
  same weights at H/L cycles and verifies them in one full-depth pass (`speculative`):
  greedy output equal to the full model's (up to float reduction order), sampled output
  distributed as the full model's. A `speculative.Stats` passed as `stats` accumulates the
  acceptance rate and tokens per verification.
  """
  out: list[list[int]] = [[] for _ in prompts]
  for i, tokens in stream(config, variables, prompts, max_new_tokens, execution=execution,
                          temperature=temperature,
                          top_p=top_p, eos_id=eos_id, rng=rng, batch_size=batch_size,
                          backend=backend, draft_cycles=draft_cycles, draft_len=draft_len,
                          stats=stats):
    out[i] = tokens
  return out
