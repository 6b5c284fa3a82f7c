"""KV-cache decoding: cached logits equal a full recompute, greedy generation equals
transformers' generate, per-row eos, sampling with explicit keys, bounded recompilation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hrm_jax
from hrm_jax import decode, generation, hf, kv_cache
from hf_test import hf_model
from helpers import pack_rows, prompts_of
from helpers import tiny_model as tiny


@pytest.mark.parametrize("arch,overrides", [("hrm", ()), ("hrm", (("H_cycles", 3), ("L_cycles", 2))),
                                            ("transformer", ()), ("rins", ()),
                                            ("hrm", (("attn_type", "causal"),)),
                                            ("rins", (("H_override", "n_layers=1,norm_type=post"),
                                                      ("pos_emb_type", "none")))])
def test_cached_decoding_matches_full_recompute(arch, overrides):
  cfg, variables = tiny(arch, **dict(overrides))
  prompts = prompts_of([5, 11, 1], cfg.vocab_size)
  responses = prompts_of([4, 4, 4], cfg.vocab_size, seed=1)
  full = np.asarray(hrm_jax.LanguageModel(cfg).apply(
      variables, pack_rows([[(p, r)] for p, r in zip(prompts, responses)], 16)))
  p_len = 16
  pad_B = np.array([p_len - len(p) for p in prompts], np.int32)
  prompt_BxP = np.array([[0] * (p_len - len(p)) + p for p in prompts], np.int32)
  ex = hrm_jax.Execution()
  logits, cache = decode.prefill(cfg, ex, variables, prompt_BxP, pad_B, p_len + 8)
  assert jax.tree.structure(cache) == jax.tree.structure(decode.init_cache(cfg, ex, 3, 24))
  if arch == "hrm":  # one slot per (stack, pass, layer), addressed by (stack, pass)
    assert sorted(cache) == sorted([("H", i) for i in range(cfg.H_cycles)] +
                                   [("L", i) for i in range(cfg.H_cycles * cfg.L_cycles)])
    assert all(len(layers) == cfg.layers_per_stack for layers in cache.values())
  for row, p in enumerate(prompts):  # prefill: the last prompt position's logits
    np.testing.assert_allclose(logits[row], full[row, len(p) - 1], atol=1e-5)
  for step in range(4):
    token_B = np.array([r[step] for r in responses], np.int32)
    step_logits, cache = decode.decode_step(cfg, ex, variables, cache, token_B,
                                            jnp.int32(p_len + step), pad_B)
    for row, p in enumerate(prompts):
      np.testing.assert_allclose(step_logits[row], full[row, len(p) + step], atol=1e-5)


def test_bfloat16_cache_under_a_float32_model_is_close():
  """Execution.kv_cache_dtype: the cache is stored in bfloat16 (keys and values rounded to 8
  significant bits when written), the attention math stays float32. Decode-step logits are
  within 2e-2 of the float32 recompute (they differ: the rounding is real), generation runs."""
  cfg, variables = tiny()
  prompts = prompts_of([5, 11, 1], cfg.vocab_size)
  responses = prompts_of([4, 4, 4], cfg.vocab_size, seed=1)
  full = np.asarray(hrm_jax.LanguageModel(cfg).apply(
      variables, pack_rows([[(p, r)] for p, r in zip(prompts, responses)], 16)))
  pad_B = np.array([16 - len(p) for p in prompts], np.int32)
  prompt_BxP = np.array([[0] * (16 - len(p)) + p for p in prompts], np.int32)
  ex = hrm_jax.Execution(kv_cache_dtype="bfloat16")
  _, cache = decode.prefill(cfg, ex, variables, prompt_BxP, pad_B, 24)
  assert {x.dtype for x in jax.tree.leaves(cache)} == {jnp.dtype(jnp.bfloat16)}
  worst = 0.0
  for step in range(4):
    token_B = np.array([r[step] for r in responses], np.int32)
    logits, cache = decode.decode_step(cfg, ex, variables, cache, token_B,
                                       jnp.int32(16 + step), pad_B)
    assert logits.dtype == jnp.float32
    for row, p in enumerate(prompts):
      worst = max(worst, float(np.abs(logits[row] - full[row, len(p) + step]).max()))
  assert 1e-6 < worst < 2e-2, worst
  out = hrm_jax.generate(cfg, variables, prompts, 6, execution=ex)
  assert [len(o) for o in out] == [6, 6, 6]


@pytest.mark.parametrize("name", ["h2l3", "h3l2_odd_shapes"])
def test_greedy_generation_equals_transformers(name, tmp_path):
  model = hf_model(name)
  model.save_pretrained(tmp_path)
  config, variables = hf.load(tmp_path)
  prompts = prompts_of([3, 9, 17], config.vocab_size)
  ours = hrm_jax.generate(config, variables, prompts, max_new_tokens=12)
  for prompt, out in zip(prompts, ours):
    with torch.no_grad():
      ref = model.generate(input_ids=torch.tensor([prompt]),
                           token_type_ids=torch.ones(1, len(prompt), dtype=torch.long),
                           do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert out == ref[0, len(prompt):].tolist()


def test_rows_stop_at_their_own_eos():
  cfg, variables = tiny()
  prompts = prompts_of([4, 7], cfg.vocab_size)
  free = hrm_jax.generate(cfg, variables, prompts, 10)
  eos = free[0][3]
  out = hrm_jax.generate(cfg, variables, prompts, 10, eos_id=eos)
  for row, got in zip(free, out):
    expected = row[:row.index(eos) + 1] if eos in row else row
    assert got == expected
  assert out[0][-1] == eos and len(out[0]) <= 4


def test_sampling_uses_the_explicit_key():
  cfg, variables = tiny()
  prompts = prompts_of([4, 7], cfg.vocab_size)
  sample = lambda seed, **kw: hrm_jax.generate(cfg, variables, prompts, 16, temperature=1.0,
                                               rng=jax.random.PRNGKey(seed), **kw)
  assert sample(0) == sample(0)
  assert sample(0) != sample(1)
  assert sample(3, top_p=1e-6) == hrm_jax.generate(cfg, variables, prompts, 16)
  with pytest.raises(ValueError, match="explicit PRNG key"):
    hrm_jax.generate(cfg, variables, prompts, 4, temperature=0.5)


def test_prompt_lengths_share_a_compiled_bucket():
  cfg, variables = tiny()
  hrm_jax.generate(cfg, variables, prompts_of([2, 3], cfg.vocab_size), 5)
  compiled = generation._decode._cache_size(), generation._refill._cache_size()
  for lengths, new in (([9, 1], 7), ([16, 5], 3), ([4, 12], 16)):
    hrm_jax.generate(cfg, variables, prompts_of(lengths, cfg.vocab_size), new)
  assert (generation._decode._cache_size(), generation._refill._cache_size()) == compiled
  assert [generation.bucket(n) for n in (1, 16, 17, 24, 25, 43, 48, 49, 100)] == \
      [16, 16, 24, 24, 32, 48, 48, 64, 128]


def test_test_time_depth_override_matches_full_forward():
  cfg, variables = tiny()
  deeper = cfg.replace(H_cycles=4, L_cycles=2)
  prompt = prompts_of([6], cfg.vocab_size)[0]
  out = hrm_jax.generate(deeper, variables, [prompt], 3)[0]
  seq = prompt + out[:2]
  batch = pack_rows([[(prompt, out[:2])]], len(seq))
  logits = np.asarray(hrm_jax.LanguageModel(deeper).apply(variables, batch))[0]
  assert out == [int(np.argmax(logits[i])) for i in range(len(prompt) - 1, len(seq))]


def test_bad_requests_are_clear_errors():
  cfg, variables = tiny()
  with pytest.raises(ValueError, match="outside the vocabulary"):
    hrm_jax.generate(cfg, variables, [[1, cfg.vocab_size]], 2)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    hrm_jax.generate(cfg, variables, [[1], []], 2)
  with pytest.raises(ValueError, match="max_new_tokens has 1 entries for 2 prompts"):
    hrm_jax.generate(cfg, variables, [[1], [2]], [2])
  with pytest.raises(ValueError, match="prompt 1: max_new_tokens=0 must be >= 1"):
    hrm_jax.generate(cfg, variables, [[1], [2]], [2, 0])
  with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
    hrm_jax.generate(cfg, variables, [[1]], 2, batch_size=0)


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_requests_past_max_seq_len_are_refused(arch):
  """Before: a 404-token prompt ran on a 256-token model and generated 400 tokens past it.
  The cached (hrm) and the recomputing (trm) back ends share one check."""
  cfg, variables = tiny(arch)  # max_seq_len 64
  with pytest.raises(ValueError, match=r"prompt 1 has 65 tokens, longer than the model's "
                     r"max_seq_len=64"):
    hrm_jax.generate(cfg, variables, prompts_of([3, 65], cfg.vocab_size), 1)
  with pytest.raises(ValueError, match=r"prompt 0 has 60 tokens and max_new_tokens=5: 65 > the "
                     r"model's max_seq_len=64 \(at most 4 new tokens fit\)"):
    hrm_jax.generate(cfg, variables, prompts_of([60], cfg.vocab_size), 5)
  with pytest.raises(ValueError, match="prompt 1 has 60 tokens and max_new_tokens=5"):
    hrm_jax.generate(cfg, variables, prompts_of([3, 60], cfg.vocab_size), [60, 5])
  assert len(hrm_jax.generate(cfg, variables, prompts_of([60], cfg.vocab_size), 4)[0]) == 4


def test_the_spec_picks_the_back_end():
  assert generation.backend_for(tiny("trm")[0]) == "recompute"
  assert generation.backend_for(tiny("hrm")[0]) == "kv"


def _computations(hlo: str) -> dict[str, list[str]]:
  """Optimized HLO text -> computation name -> its instruction lines."""
  comps, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%(\S+) ", line)
    if head and line.rstrip().endswith("{"):
      name = head.group(1)
      comps[name] = []
    elif name is not None and line.startswith("  "):
      comps[name].append(line)
  return comps


@pytest.mark.parametrize("b", [1, 3])
def test_decode_loop_writes_the_cache_in_place_and_never_copies_weights(b):
  """The compiled loop body (XLA's optimized HLO) makes no array the size of a layer weight
  (the weights were viewed per layer before the loop, not sliced per step) and none the size
  of a cache slot except by an in-place dynamic-update-slice of that slot. Batch 1 too: with
  a cache layout of separate batch and head dimensions, XLA:CPU copied every slot there."""
  cfg, variables = tiny()
  dec = decode.prepare(variables)
  ex = hrm_jax.Execution()
  state = decode.init(cfg, ex, b, 40)
  rows = generation.Rows(*(np.zeros(b, np.int32) for _ in range(3)), np.zeros(b, bool),
                         np.zeros(b, np.int32), np.zeros((b, 16), np.int32))
  s = generation.Sampling(jnp.float32(1e-6), jnp.float32(1), jnp.int32(-1),
                          jax.random.PRNGKey(0))
  hlo = generation._decode.lower(dec, state, rows, s, config=cfg, execution=ex, backend="kv",
                                 greedy=True).compile().as_text()
  comps = _computations(hlo)
  body = re.search(r"while\(.*body=%([^,\s]+)", hlo).group(1)
  layer_sizes = {int(np.prod(x.shape)) for tree in (variables, dec)  # stacked and per layer
                 for x in jax.tree.leaves(tree["params"]["core"])}
  slot_size = b * cfg.num_heads * cfg.head_dim * 40  # [B*H, K, 40 positions]
  assert slot_size not in layer_sizes
  written = 0
  for line in comps[body]:
    m = re.match(r"\s+(?:ROOT )?%\S+ = \w+\[([\d,]*)\]\S* ([\w-]+)\(", line)
    if not m or m.group(2) in ("parameter", "get-tuple-element", "bitcast", "tuple"):
      continue
    size = int(np.prod([int(d) for d in m.group(1).split(",") if d]))
    assert size not in layer_sizes, line
    if size == slot_size:
      root = next(l for l in comps[re.search(r"calls=%([^,\s]+)", line).group(1)]
                  if "ROOT" in l)
      assert " dynamic-update-slice(" in root, line
      written += 1
  assert written == 2 * cfg.H_cycles * (cfg.L_cycles + 1) * cfg.layers_per_stack


def test_cache_masks_of_the_wrong_width_are_clear_errors():
  cfg, variables = tiny("transformer")
  batch = pack_rows([[([1, 2, 3], [4])]], 4)
  ex = hrm_jax.Execution()
  model, dec = hrm_jax.LanguageModel(cfg, ex), decode.prepare(variables)
  empty = decode.init_cache(cfg, ex, 1, 8)
  step = kv_cache.CacheStep(jnp.int32(0), np.ones((1, 4, 8), bool), 8, prefill=True)
  with pytest.raises(ValueError, match="must cover this call's 4 keys"):
    model.apply(dec, batch, cache=empty, step=step)
  _, cache = decode.prefill(cfg, ex, variables, batch["inputs"], np.zeros(1, np.int32), 8)
  one = {k: v[:, :1] for k, v in batch.items()}
  step = kv_cache.CacheStep(jnp.int32(4), np.ones((1, 1, 5), bool), 8)
  with pytest.raises(ValueError, match="must cover all 8 cache positions"):
    model.apply(dec, one, cache=cache, step=step)
  with pytest.raises(ValueError, match="needs both `cache` and its `step`"):
    model.apply(dec, one, cache=cache)
