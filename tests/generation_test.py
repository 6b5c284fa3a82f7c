"""The engine: continuous batching (refilled rows) gives each prompt the tokens it gets alone
(greedy, f32), per-prompt budgets, eos in the middle of a batch, both back ends through one
front door, sampling independent of batch_size, answers streamed as they finish."""

import jax
import pytest

import hrm_jax
from hrm_jax import generation
from helpers import prompts_of
from helpers import tiny_model as tiny

LENGTHS = [5, 11, 1, 7, 3, 20, 2]


def _alone(cfg, variables, prompts, budgets, **kw):
  return [hrm_jax.generate(cfg, variables, [p], n, **kw)[0] for p, n in zip(prompts, budgets)]


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_refilled_rows_equal_each_prompt_alone(arch):
  cfg, variables = tiny(arch)
  prompts = prompts_of(LENGTHS, cfg.vocab_size)
  budgets = [3, 12, 1, 7, 2, 9, 5]  # short rows finish first and their rows are refilled
  alone = _alone(cfg, variables, prompts, budgets)
  assert [len(a) for a in alone] == budgets
  for batch_size in (2, 3):
    assert hrm_jax.generate(cfg, variables, prompts, budgets, batch_size=batch_size) == alone


def test_rows_are_refilled_largest_budget_first_and_stream_as_they_finish():
  cfg, variables = tiny()
  prompts = prompts_of(LENGTHS, cfg.vocab_size)
  budgets = [9, 2, 1, 4, 1, 3, 6]
  order = [i for i, _ in hrm_jax.stream(cfg, variables, prompts, budgets, batch_size=2)]
  # Admission by budget: 0 (9), 6 (6), 3 (4), 5 (3), 1 (2), then 2 and 4 (1 each, prompt
  # order). Rows A, B start with 0 and 6; 6 ends at 6 tokens (A has 6) and B takes 3, which
  # ends with 0 at 9; A takes 5 (3 tokens), B takes 1 (2), which ends first; B then takes 2
  # and 4 (each done at its first token) before 5 ends.
  assert order == [6, 0, 3, 1, 2, 4, 5]


def test_eos_in_the_middle_of_a_batch_frees_the_row():
  cfg, variables = tiny()
  prompts = prompts_of(LENGTHS, cfg.vocab_size)
  free = hrm_jax.generate(cfg, variables, prompts, 10)
  eos = free[3][2]  # row 3 stops after 3 tokens; others stop at their own eos, if any
  expected = [row[:row.index(eos) + 1] if eos in row else row for row in free]
  for batch_size in (3, None):
    assert hrm_jax.generate(cfg, variables, prompts, 10, eos_id=eos,
                            batch_size=batch_size) == expected
  assert len(expected[3]) <= 3 and expected[3][-1] == eos


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_sampling_with_a_fixed_key_is_independent_of_batch_size(arch):
  cfg, variables = tiny(arch)
  prompts = prompts_of(LENGTHS, cfg.vocab_size)
  budgets = [6, 3, 8, 1, 5, 4, 7]
  sample = lambda seed, batch_size: hrm_jax.generate(
      cfg, variables, prompts, budgets, temperature=1.0, top_p=0.9,
      rng=jax.random.PRNGKey(seed), batch_size=batch_size)
  reference = sample(0, None)
  assert [len(r) for r in reference] == budgets
  assert sample(0, 3) == reference
  assert sample(1, 3) != reference


def test_compiled_shapes_are_few_within_a_call():
  """Refills of one to four rows and prompts of 1..20 tokens share a handful of programs:
  refills have 1, 2 or 4 rows and prompt buckets 16 and 24."""
  cfg, variables = tiny()
  prompts = prompts_of([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 17, 18, 19, 20] * 2, cfg.vocab_size)
  budgets = [1 + (7 * i) % 9 for i in range(len(prompts))]
  before = generation._refill._cache_size(), generation._decode._cache_size()
  hrm_jax.generate(cfg, variables, prompts, budgets, batch_size=4)
  refills = generation._refill._cache_size() - before[0]
  assert refills <= 3 * 2 and generation._decode._cache_size() - before[1] <= 1
