"""The generation engine: one front door, continuous batching over a fixed set of rows.

`generate` / `stream` keep `batch_size` rows busy: when a row emits eos or reaches its own
budget its answer is recorded (streamed) and the row is refilled with the next prompt, so
throughput tracks the mean answer length, not the longest. Decoding runs as compiled chunks
(`_decode`: a `lax.while_loop` until some running row finishes); between chunks the freed rows
are prefilled (`_refill`) into their own slots while the other rows keep their state.

Two back ends share the loop, chosen by the arch's spec in `backend_for`: `decode` (KV
cache, a ring of fixed length per call, so a refilled row starts anywhere) and
`recompute_decode` (cache-free, each step recomputes every row: `trm`, whose one stack cannot
keep a cache per pass). Each provides prepare / init / refill / step; neither imports the
other, and the request checks, sampling and eos trimming live here once.

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

from hrm_jax import decode, recompute_decode
from hrm_jax.config import ModelConfig
from hrm_jax.models.registry import spec_of

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


def sample(logits_BxV: jax.Array, keys_B: jax.Array, temperature: jax.Array, top_p: jax.Array,
           greedy: bool) -> jax.Array:
  """Greedy argmax, or nucleus sampling at `temperature` keeping the top-`top_p` mass, each
  row with its own key."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  keep_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p  # always keeps the top token
  cutoff_B = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1)
  logits_BxV = jnp.where(logits_BxV >= cutoff_B[:, None], logits_BxV, -jnp.inf)
  return jax.vmap(jax.random.categorical)(keys_B, logits_BxV).astype(jnp.int32)


def _keys(rng: jax.Array, index_B: jax.Array, token_B: jax.Array) -> jax.Array:
  return jax.vmap(lambda i, t: jax.random.fold_in(jax.random.fold_in(rng, i), t))(
      index_B, token_B)


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


@functools.partial(jax.jit, static_argnames=("config", "backend", "greedy"),
                   donate_argnames=("state", "rows"))
def _refill(variables: dict, state, rows: Rows, rows_R: jax.Array, prompt_RxP: jax.Array,
            lens_R: jax.Array, index_R: jax.Array, budget_R: jax.Array, s: Sampling, *,
            config: ModelConfig, backend: str, greedy: bool):
  """Prefill prompts into rows rows_R (index >= B: padding, ignored); first tokens sampled."""
  logits_RxV, state = BACKENDS[backend].refill(config, variables, state, rows_R, prompt_RxP,
                                               lens_R)
  first_R = sample(logits_RxV, _keys(s.rng, index_R, jnp.zeros_like(index_R)), s.temperature,
                   s.top_p, greedy)
  n = rows.out_BxN.shape[1]
  put = lambda x_B, new_R: x_B.at[rows_R].set(new_R, mode="drop")
  return state, Rows(
      put(rows.last_B, first_R), put(rows.count_B, jnp.ones_like(first_R)),
      put(rows.budget_B, budget_R), put(rows.done_B, (first_R == s.eos_id) | (budget_R <= 1)),
      put(rows.index_B, index_R),
      put(rows.out_BxN, jnp.zeros((len(first_R), n), jnp.int32).at[:, 0].set(first_R)))


@functools.partial(jax.jit, static_argnames=("config", "backend", "greedy"),
                   donate_argnames=("state", "rows"))
def _decode(variables: dict, state, rows: Rows, s: Sampling, *, config: ModelConfig,
            backend: str, greedy: bool):
  """Decode steps for every row until a running row finishes (rows done on entry idle)."""
  step = BACKENDS[backend].step
  b, n = rows.out_BxN.shape
  idle_B = rows.done_B

  def cond(carry):
    return ~jnp.any(carry[1].done_B & ~idle_B)

  def body(carry):
    state, r = carry
    logits_BxV, state = step(config, variables, state, r.last_B)
    next_B = sample(logits_BxV, _keys(s.rng, r.index_B, r.count_B), s.temperature, s.top_p,
                    greedy)
    out_BxN = r.out_BxN.at[jnp.arange(b), jnp.where(r.done_B, n, r.count_B)].set(
        next_B, mode="drop")
    count_B = r.count_B + ~r.done_B
    done_B = r.done_B | (next_B == s.eos_id) | (count_B >= r.budget_B)
    return state, Rows(jnp.where(r.done_B, r.last_B, next_B), count_B, r.budget_B, done_B,
                       r.index_B, out_BxN)

  return jax.lax.while_loop(cond, body, (state, rows))


def stream(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]],
           max_new_tokens: Budgets, *, temperature: float = 0.0, top_p: float = 1.0,
           eos_id: Optional[int] = None, rng: Optional[jax.Array] = None,
           batch_size: Optional[int] = None, backend: Optional[str] = None,
           names: Optional[Sequence[str]] = None, where: str = "generate"
           ) -> Iterator[tuple[int, list[int]]]:
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
  return _run(config, variables, [list(p) for p in prompts], budgets, greedy,
              Sampling(jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
                       jnp.int32(-1 if eos_id is None else eos_id),
                       jax.random.PRNGKey(0) if rng is None else rng),
              min(batch_size or len(prompts), len(prompts)), backend)


def _run(config: ModelConfig, variables: dict, prompts: list[list[int]], budgets: list[int],
         greedy: bool, s: Sampling, b: int, backend: str) -> Iterator[tuple[int, list[int]]]:
  be = BACKENDS[backend]
  variables = be.prepare(variables)
  n = bucket(max(budgets))
  state = be.init(config, variables, b, bucket(max(map(len, prompts))) + n)
  rows = Rows(*(jnp.zeros(b, jnp.int32) for _ in range(3)), jnp.ones(b, bool),
              jnp.zeros(b, jnp.int32), jnp.zeros((b, n), jnp.int32))
  static = dict(config=config, backend=backend, greedy=greedy)
  pending = iter(range(len(prompts)))
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
    if not finished:
      state, rows = _decode(variables, state, rows, s, **static)
      continue
    count_B, out_BxN = np.asarray(rows.count_B), np.asarray(rows.out_BxN)
    for r in finished:
      yield serving[r], out_BxN[r, :count_B[r]].tolist()  # ends at eos: the loop stops there
      serving[r] = None
    fill(finished)


def generate(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]],
             max_new_tokens: Budgets, *, temperature: float = 0.0, top_p: float = 1.0,
             eos_id: Optional[int] = None, rng: Optional[jax.Array] = None,
             batch_size: Optional[int] = None, backend: Optional[str] = None
             ) -> list[list[int]]:
  """The new tokens of each prompt, in prompt order: up to and including eos_id, at most its
  max_new_tokens (one int, or one per prompt).

  temperature 0 is greedy; otherwise nucleus sampling with the explicit PRNG key `rng`.
  batch_size rows decode at once (default: all prompts), refilled as answers finish.
  Test-time depth: pass `config.replace(H_cycles=..., L_cycles=...)`. `backend` ("kv" or
  "recompute") overrides `backend_for(config)`, e.g. to check one back end against the other.
  """
  out: list[list[int]] = [[] for _ in prompts]
  for i, tokens in stream(config, variables, prompts, max_new_tokens, temperature=temperature,
                          top_p=top_p, eos_id=eos_id, rng=rng, batch_size=batch_size,
                          backend=backend):
    out[i] = tokens
  return out
