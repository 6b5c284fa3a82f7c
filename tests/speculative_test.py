"""Self-speculative decoding: greedy output equal to the full depth's (random and trained
weights, several draft depths and k, eos inside a draft window, rows accepting different
counts under continuous batching), caches after rollback equal to caches built token by
token, sampled tokens distributed as the full model's and reproducible with a fixed key."""

import functools

import filelock
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hrm_jax
from hrm_jax import decode, kv_cache, sampling, speculative
from helpers import prompts_of, tiny_config
from helpers import tiny_model as tiny

# The engine's building blocks, compiled once per shape (run op by op they took minutes).
EX = hrm_jax.Execution()
_refill = jax.jit(speculative.refill, static_argnums=(0, 1, 2))
_propose = jax.jit(speculative.propose, static_argnums=(0, 1, 2, 11), static_argnames="greedy")
_advance = jax.jit(speculative.advance)
_decode_tokens = jax.jit(decode.decode_tokens, static_argnums=(0, 1))

LENGTHS = [5, 11, 1, 7, 3, 20, 2]
BUDGETS = [3, 12, 1, 7, 2, 9, 5]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, worker_id) -> tuple[hrm_jax.ModelConfig, dict]:
  """`_train`'s model, trained once per session: the first xdist worker to need it trains
  and writes it in the session's temporary folder, the other reads it (pytest-xdist's
  recipe for a session fixture that runs once)."""
  if worker_id == "master":  # no xdist: one process
    return _train()
  shared = tmp_path_factory.getbasetemp().parent  # this session's, shared by its workers
  with filelock.FileLock(str(shared / "speculative_trained.lock")):
    path = shared / "speculative_trained.msgpack"
    if not path.exists():
      path.write_bytes(flax.serialization.msgpack_serialize(nn.unbox(_train()[1])))
    return tiny_config(), flax.serialization.msgpack_restore(path.read_bytes())


def _train() -> tuple[hrm_jax.ModelConfig, dict]:
  """A tiny HRM trained to continue its prompt counting up by one (mod the vocabulary):
  confident enough that the shallow recursion agrees with the full depth most of the time."""
  cfg = tiny_config()
  v = cfg.vocab_size
  rng = np.random.default_rng(0)
  rows = 64
  start_B = rng.integers(1, v, rows)
  tokens_BxS = (start_B[:, None] + np.arange(24)) % v
  prompt_len_B = rng.integers(2, 8, rows)
  idx_S = np.arange(24)
  batch = {"inputs": tokens_BxS.astype(np.int32),
           "positions": np.broadcast_to(idx_S, tokens_BxS.shape).astype(np.int32),
           "segment_ids": np.ones_like(tokens_BxS, np.int32),
           "prefix_mask": idx_S[None] < prompt_len_B[:, None]}
  labels_BxS = np.where(idx_S[None] + 1 >= prompt_len_B[:, None], np.roll(tokens_BxS, -1, 1),
                        -1)[:, :-1]
  model = hrm_jax.LanguageModel(cfg)
  params = model.init(jax.random.PRNGKey(0), batch)
  opt = optax.adam(3e-3)

  # Optimised code for these 150 steps (conftest compiles at level 0, fast to compile but
  # several times slower to run).
  @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2})
  def train_step(params, opt_state):
    def loss(p):
      logits = model.apply(p, batch)[:, :-1]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, np.maximum(labels_BxS, 0))
      return jnp.sum(ce * (labels_BxS >= 0)) / np.sum(labels_BxS >= 0)
    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = opt.init(params)
  for _ in range(150):
    params, opt_state = train_step(params, opt_state)
  return cfg, params


def _counting_prompts(cfg, n):
  rng = np.random.default_rng(1)
  return [((s + np.arange(int(k))) % cfg.vocab_size).tolist()
          for s, k in zip(rng.integers(1, cfg.vocab_size, n), rng.integers(2, 8, n))]


@pytest.mark.parametrize("cycles,k", [((1, 1), 1), ((2, 2), 3)])
def test_greedy_equals_full_depth_on_random_weights(cycles, k):
  cfg, variables = tiny()
  prompts = prompts_of(LENGTHS, cfg.vocab_size)
  full = hrm_jax.generate(cfg, variables, prompts, BUDGETS)
  stats = speculative.Stats()
  assert hrm_jax.generate(cfg, variables, prompts, BUDGETS, batch_size=3, draft_cycles=cycles,
                          draft_len=k, stats=stats) == full
  assert stats.rounds > 0 and 0 <= stats.acceptance_rate <= 1
  assert 1 <= stats.tokens_per_verification <= k + 1


@pytest.mark.parametrize("cycles,k", [((1, 1), 4), ((2, 1), 2)])
def test_greedy_equals_full_depth_on_a_trained_model(cycles, k, trained):
  cfg, variables = trained
  prompts = _counting_prompts(cfg, 6)
  budgets = [12, 5, 16, 9, 3, 14]
  full = hrm_jax.generate(cfg, variables, prompts, budgets)
  stats = speculative.Stats()
  assert hrm_jax.generate(cfg, variables, prompts, budgets, batch_size=4, draft_cycles=cycles,
                          draft_len=k, stats=stats) == full
  assert stats.acceptance_rate > 0.5  # the draft is useful: most rounds emit several tokens
  assert stats.tokens_per_verification > 1.5


def test_eos_inside_a_draft_window_ends_the_row_there(trained):
  cfg, variables = trained
  prompts = _counting_prompts(cfg, 6)
  free = hrm_jax.generate(cfg, variables, prompts, 12)
  eos = free[0][3]  # the 4th token of row 0: inside the first window of k = 4 drafts
  expected = [row[:row.index(eos) + 1] if eos in row else row for row in free]
  stats = speculative.Stats()
  got = hrm_jax.generate(cfg, variables, prompts, 12, eos_id=eos, batch_size=4,
                         draft_cycles=(1, 1), draft_len=4, stats=stats)
  assert got == expected and len(got[0]) <= 4
  assert stats.acceptance_rate > 0.5  # the windows were mostly accepted, eos cut them


def _spec_state(cfg, draft, variables, prompts, length):
  """Both caches prefilled with `prompts` (speculative layout), and the first tokens."""
  b = len(prompts)
  p = max(map(len, prompts))
  prompt_BxP = np.array([[0] * (p - len(x)) + x for x in prompts], np.int32)
  lens_B = np.array(list(map(len, prompts)), np.int32)
  state = speculative.init(cfg, draft, EX, b, length)
  logits_BxV, state = _refill(cfg, draft, EX, variables, state, jnp.arange(b),
                              prompt_BxP, lens_B)
  return state, jnp.argmax(logits_BxV, -1).astype(jnp.int32)


def _valid(cache, state: decode.State):
  """Each cache slot (keys [B*H, K, T], values [B*H, T, K]) as [B, H, K, T] in position
  order, NaN at each row's positions >= pos_B (what the row must not see)."""
  t = decode.cache_length(cache)
  b = len(state.start_B)
  order_Bx1x1xT = ((state.start_B[:, None] + jnp.arange(t)[None]) % t)[:, None, None]
  keep_Bx1x1xT = (jnp.arange(t)[None] < state.pos_B[:, None])[:, None, None]

  def in_order(x_NxAxB, positions_axis):
    x = jnp.moveaxis(x_NxAxB.reshape((b, -1) + x_NxAxB.shape[1:]), positions_axis + 1, -1)
    return jnp.where(keep_Bx1x1xT, jnp.take_along_axis(x, order_Bx1x1xT, -1), jnp.nan)
  return jax.tree.map(lambda kv: kv_cache.LayerKV(in_order(kv.k_NxKxT, 2),
                                                  in_order(kv.v_NxTxK, 1)),
                      cache, is_leaf=lambda x: isinstance(x, kv_cache.LayerKV))


def test_rollback_leaves_the_caches_a_fresh_prefill_and_steps_would_build():
  """Rows accept different counts in one round; afterwards both caches hold exactly what
  prefill + one decode step per kept token gives, and predict the same next tokens."""
  cfg, variables = tiny()  # random weights: the draft agrees sometimes, so counts differ
  draft = speculative.draft_config(cfg, (1, 1))
  variables = decode.prepare(variables)
  prompts = prompts_of([3, 7, 5, 4], cfg.vocab_size, seed=3)
  k, length = 4, 32
  state, last_B = _spec_state(cfg, draft, variables, prompts, length)
  b = len(prompts)
  zeros = jnp.zeros(b, jnp.int32)
  kept = []
  for _ in range(3):
    prop, state = _propose(cfg, draft, EX, variables, state, last_B, zeros, zeros,
                           jax.random.PRNGKey(0), 1.0, 1.0, k, greedy=True)
    kept.append(np.asarray(prop.count_B))
    state = _advance(state, prop.tokens_BxS, prop.count_B, last_B)
    last_B = jnp.take_along_axis(prop.tokens_BxS, (prop.count_B - 1)[:, None], 1)[:, 0]
  assert len(set(np.concatenate(kept).tolist())) > 1  # rows accepted different counts
  generated = [np.asarray(state.full.pos_B)[r] - len(prompts[r]) for r in range(b)]

  ref, first_B = _spec_state(cfg, draft, variables, prompts, length)
  full, small = ref.full, ref.draft
  tokens = hrm_jax.generate(cfg, variables, prompts, [g + 1 for g in generated])
  for j in range(max(generated)):
    tok_B = jnp.array([t[j] if j < len(t) - 1 else 0 for t in tokens], jnp.int32)
    step_B = jnp.array([j < len(t) - 1 for t in tokens])
    ones = jnp.ones((b, 1), bool)
    _, fc = _decode_tokens(cfg, EX, variables, full.cache, tok_B[:, None], full.start_B,
                           full.pos_B, ones & step_B[:, None])
    _, dc = _decode_tokens(draft, EX, variables, small.cache, tok_B[:, None], small.start_B,
                           small.pos_B, ones & step_B[:, None])
    full = full._replace(cache=fc, pos_B=full.pos_B + step_B)
    small = small._replace(cache=dc, pos_B=small.pos_B + step_B)
  np.testing.assert_array_equal(np.asarray(full.pos_B), np.asarray(state.full.pos_B))
  np.testing.assert_array_equal(np.asarray(last_B), [t[-1] for t in tokens])
  assert np.asarray(first_B).tolist() == [t[0] for t in tokens]
  # The draft cache misses the last accepted draft where a row took all k (filled next round).
  small = small._replace(pos_B=jnp.where(state.behind_B, small.pos_B - 1, small.pos_B))
  spec_draft = state.draft._replace(pos_B=small.pos_B)
  for got, want in ((_valid(state.full.cache, state.full), _valid(full.cache, full)),
                    (_valid(state.draft.cache, spec_draft), _valid(small.cache, small))):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got,
                 want)


def test_sampled_tokens_follow_the_full_model_distribution():
  """One round over 6000 copies of a prompt: the first kept token (an accepted draft or the
  replacement drawn from max(p - q, 0)) is distributed as the full model's nucleus p."""
  cfg, variables = tiny()
  draft = speculative.draft_config(cfg, (1, 1))
  variables = decode.prepare(variables)
  n, temperature, top_p = 6000, 0.7, 0.95
  state, _ = _spec_state(cfg, draft, variables, [prompts_of([4], cfg.vocab_size)[0]] * n, 12)
  last_B = jnp.full(n, 7, jnp.int32)
  prop, _ = _propose(cfg, draft, EX, variables, state, last_B, jnp.arange(n),
                     jnp.ones(n, jnp.int32), jax.random.PRNGKey(3),
                     jnp.float32(temperature), jnp.float32(top_p), 2, greedy=False)
  logits_BxSxV, _ = _decode_tokens(cfg, EX, variables, state.full.cache, last_B[:, None],
                                   state.full.start_B, state.full.pos_B)
  p_V = np.asarray(jax.nn.softmax(sampling.nucleus_logits(logits_BxSxV[:, 0], temperature,
                                                          top_p))[0])
  q_logits, _ = _decode_tokens(draft, EX, variables, state.draft.cache, last_B[:, None],
                               state.draft.start_B, state.draft.pos_B)
  q_V = np.asarray(jax.nn.softmax(sampling.nucleus_logits(q_logits[:, 0], temperature,
                                                          top_p))[0])
  assert 0.5 * np.abs(p_V - q_V).sum() > 0.2  # the draft alone would be far off
  freq_V = np.bincount(np.asarray(prop.tokens_BxS[:, 0]), minlength=cfg.vocab_size) / n
  assert 0.5 * np.abs(freq_V - p_V).sum() < 0.04  # sampling noise here is ~0.02
  assert 0 < np.mean(np.asarray(prop.accepted_B) > 0) < 1


def test_sampling_with_a_fixed_key_is_reproducible_at_any_batch_size():
  cfg, variables = tiny()
  prompts = prompts_of(LENGTHS, cfg.vocab_size)
  run = lambda seed, batch_size: hrm_jax.generate(
      cfg, variables, prompts, BUDGETS, temperature=1.0, top_p=0.9,
      rng=jax.random.PRNGKey(seed), batch_size=batch_size, draft_cycles=(1, 1), draft_len=2)
  reference = run(0, None)
  assert [len(r) for r in reference] == BUDGETS
  assert run(0, 3) == reference
  assert run(1, 3) != reference


def test_bad_speculation_requests_name_the_argument():
  cfg, variables = tiny()
  with pytest.raises(ValueError, match="draft_cycles"):
    hrm_jax.generate(cfg, variables, [[1, 2]], 2, draft_cycles=(0, 1))
  with pytest.raises(ValueError, match="draft_len"):
    hrm_jax.generate(cfg, variables, [[1, 2]], 2, draft_cycles=(1, 1), draft_len=0)
  trm, trm_variables = tiny("trm")
  with pytest.raises(ValueError, match="draft_cycles needs an HRM"):
    hrm_jax.generate(trm, trm_variables, [[1, 2]], 2, draft_cycles=(1, 1))


def test_a_draft_at_full_depth_is_always_accepted():
  """The draft's own cache and rollback match the full model's: at the same cycles every
  draft is accepted and each verification emits k + 1 tokens (until a row's budget)."""
  cfg, variables = tiny()
  prompts = prompts_of(LENGTHS[:4], cfg.vocab_size)
  stats = speculative.Stats()
  got = hrm_jax.generate(cfg, variables, prompts, 10, batch_size=2,
                         draft_cycles=(cfg.H_cycles, cfg.L_cycles), draft_len=3, stats=stats)
  assert got == hrm_jax.generate(cfg, variables, prompts, 10)
  assert stats.acceptance_rate == 1.0


@functools.lru_cache(maxsize=None)
def _forward(cfg):
  return jax.jit(hrm_jax.LanguageModel(cfg).apply)


def _free_logits(cfg, variables, prompt, generated, length=48):
  """Logits [P + G, V] of a cache-free forward (right-padded to `length`, one compile per
  config): the prompt as bidirectional prefix, the generated tokens causal (what the
  KV-cache engine computes); row i predicts the token after the first i + 1."""
  seq = list(prompt) + list(generated)
  s = len(seq)
  pad = lambda x: np.pad(np.asarray(x), (0, length - s))[None]
  batch = {"inputs": pad(seq).astype(np.int32), "positions": pad(np.arange(s)).astype(np.int32),
           "segment_ids": pad(np.ones(s)).astype(np.int32),
           "prefix_mask": pad(np.arange(s) < len(prompt)).astype(bool)}
  return np.asarray(_forward(cfg)(variables, batch))[0, :s]


def test_the_draft_predicts_what_the_shallow_model_recomputes():
  """After rounds with rejections (and rows that took all k, whose draft cache is behind),
  the draft's next-token logits from its cache, computed as the next round's first draft
  step does, equal a cache-free forward of the draft-depth model on the row's accepted
  sequence: the draft proposes what the shallow model would (f32, |diff| <= 1e-4)."""
  cfg, variables = tiny()
  draft = speculative.draft_config(cfg, (2, 2))
  dv = decode.prepare(variables)
  prompts = prompts_of([3, 7, 5, 4], cfg.vocab_size, seed=5)
  b, k = len(prompts), 2
  state, last_B = _spec_state(cfg, draft, dv, prompts, 40)
  generated = [[t] for t in np.asarray(last_B).tolist()]
  zeros = jnp.zeros(b, jnp.int32)
  counts, behind = set(), 0
  for _ in range(4):
    prop, state = _propose(cfg, draft, EX, dv, state, last_B, zeros, zeros,
                           jax.random.PRNGKey(0), 1.0, 1.0, k, greedy=True)
    state = _advance(state, prop.tokens_BxS, prop.count_B, last_B)
    for r, c in enumerate(np.asarray(prop.count_B).tolist()):
      generated[r] += np.asarray(prop.tokens_BxS[r, :c]).tolist()
      counts.add(c)
    last_B = jnp.array([g[-1] for g in generated], jnp.int32)
    behind += int(np.sum(np.asarray(state.behind_B)))
    two_Bx2 = jnp.stack([state.prev_B, last_B], axis=1)
    write_Bx2 = jnp.stack([state.behind_B, jnp.ones_like(state.behind_B)], axis=1)
    cached_Bx2xV, _ = _decode_tokens(draft, EX, dv, state.draft.cache, two_Bx2,
                                     state.draft.start_B, state.draft.pos_B - 1, write_Bx2)
    for r in range(b):
      np.testing.assert_allclose(np.asarray(cached_Bx2xV[r, 1]),
                                 _free_logits(draft, variables, prompts[r], generated[r])[-1],
                                 rtol=0, atol=1e-4)
  assert len(counts) > 1 and behind > 0  # rejections, partial and full acceptances


def _predicted_accepted(agree, k, budget):
  """Drafts accepted by greedy speculation on one row, from teacher-forced agreement:
  agree[c] says whether the draft's argmax after the full model's first c tokens is the
  full model's token c. A round at c accepts the run of agreements from c (at most k), as
  accepted drafts are the full model's tokens."""
  c, accepted = 1, 0
  while c < budget:
    a = 0
    while a < k and c + a < len(agree) and agree[c + a]:
      a += 1
    accepted += a
    c += min(a + 1, budget - c)
  return accepted


@pytest.mark.parametrize("k", [1, 3])
def test_acceptance_is_what_teacher_forced_agreement_predicts(k):
  """End to end through the engine (continuous batching, refills): the drafts accepted are
  exactly those the shallow model's teacher-forced argmax over the full model's greedy
  continuation predicts, so a draft-cache fault would show up as lower acceptance."""
  cfg, variables = tiny()
  draft = speculative.draft_config(cfg, (2, 2))
  prompts = prompts_of(LENGTHS, cfg.vocab_size, seed=7)
  full = hrm_jax.generate(cfg, variables, prompts, BUDGETS)
  # k tokens past each budget: a row's last round drafts (and may accept) past its budget.
  longer = hrm_jax.generate(cfg, variables, prompts, [n + k for n in BUDGETS])
  expected = 0
  for prompt, tokens, budget in zip(prompts, longer, BUDGETS):
    argmax_S = np.argmax(_free_logits(draft, variables, prompt, tokens), -1)
    agree = [c > 0 and argmax_S[len(prompt) + c - 1] == tokens[c] for c in range(len(tokens))]
    expected += _predicted_accepted(agree, k, budget)
  stats = speculative.Stats()
  assert hrm_jax.generate(cfg, variables, prompts, BUDGETS, batch_size=3, draft_cycles=(2, 2),
                          draft_len=k, stats=stats) == full
  assert 0 < expected < stats.row_rounds * k  # some drafts accepted, some rejected
  assert stats.accepted == expected
