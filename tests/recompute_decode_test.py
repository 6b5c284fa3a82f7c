"""The cache-free back end: same tokens as the KV-cache back end on hrm, and for trm (which
the cache cannot serve) the argmax of a full PrefixLM forward at every step."""

import functools

import numpy as np

import hrm_jax
from helpers import pack_rows, prompts_of
from helpers import tiny_model as tiny


generate_uncached = functools.partial(hrm_jax.generate, backend="recompute")


def test_same_tokens_as_cached_generate_on_hrm():
  cfg, variables = tiny("hrm", H_cycles=3, L_cycles=2)
  prompts = prompts_of([5, 17, 1, 9], cfg.vocab_size)  # mixed lengths: padding in both paths
  cached = hrm_jax.generate(cfg, variables, prompts, max_new_tokens=12)
  assert generate_uncached(cfg, variables, prompts, max_new_tokens=12) == cached
  eos = cached[1][4]
  assert (generate_uncached(cfg, variables, prompts, 12, eos_id=eos)
          == hrm_jax.generate(cfg, variables, prompts, 12, eos_id=eos))


def test_trm_tokens_are_the_argmax_of_a_full_forward():
  cfg, variables = tiny("trm")
  prompts = prompts_of([6, 3], cfg.vocab_size, seed=2)
  outs = generate_uncached(cfg, variables, prompts, max_new_tokens=5)
  assert [len(o) for o in outs] == [5, 5]
  batch = pack_rows([[(p, o[:-1])] for p, o in zip(prompts, outs)], 16)  # one forward
  logits = np.asarray(hrm_jax.LanguageModel(cfg).apply(variables, batch))
  for row, (prompt, out) in enumerate(zip(prompts, outs)):
    steps = range(len(prompt) - 1, len(prompt) + len(out) - 1)
    assert out == [int(np.argmax(logits[row, i])) for i in steps]


def test_rows_stop_at_their_own_eos():
  cfg, variables = tiny("trm")
  prompts = prompts_of([4, 7], cfg.vocab_size)
  free = generate_uncached(cfg, variables, prompts, 10)
  eos = free[0][2]
  out = generate_uncached(cfg, variables, prompts, 10, eos_id=eos)
  for row, got in zip(free, out):
    assert got == (row[:row.index(eos) + 1] if eos in row else row)
