"""Greedy decode tokens/s: hrm_jax.generate vs transformers' generate, same model and prompts.

    python benchmarks/decode.py [--hidden_size=256 --layers_per_stack=2 --batch=4 --new_tokens=64]

A random hrm_jax model is exported with hrm_jax.hf.save and loaded by
`transformers.HrmTextForCausalLM`; both decode the same left-padded PrefixLM prompts
greedily (no eos). One timed run each, after one warm-up run (compilation for hrm_jax).
ms per decode step is hrm_jax's (time for new_tokens - time for 1 token) / (new_tokens - 1),
i.e. without the prefill; tokens/s include the prefill for both.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np
import torch
import transformers
from absl import app, flags

import hrm_jax

flags.DEFINE_integer("hidden_size", 256, "Hidden size.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("layers_per_stack", 2, "Layers in each of H and L.")
flags.DEFINE_integer("H_cycles", 2, "H cycles.")
flags.DEFINE_integer("L_cycles", 3, "L cycles.")
flags.DEFINE_integer("vocab_size", 8192, "Vocabulary size.")
flags.DEFINE_integer("batch", 4, "Prompts decoded together.")
flags.DEFINE_integer("new_tokens", 64, "Tokens generated per prompt.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  config = hrm_jax.model_config(
      "B", "hrm", hidden_size=f.hidden_size, num_heads=f.num_heads,
      n_layers=2 * f.layers_per_stack, H_cycles=f.H_cycles, L_cycles=f.L_cycles,
      vocab_size=f.vocab_size)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, f.vocab_size, int(n)).tolist()
             for n in rng.integers(16, 48, f.batch)]
  dummy = {k: np.zeros((1, 8), np.int32) for k in ("inputs", "positions", "segment_ids")}
  dummy["prefix_mask"] = np.ones((1, 8), bool)
  variables = hrm_jax.LanguageModel(config).init(jax.random.PRNGKey(0), dummy)

  def timed(new_tokens: int) -> tuple[list[list[int]], float]:
    run = lambda: hrm_jax.generate(config, variables, prompts, new_tokens)
    run()
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start

  ours, jax_s = timed(f.new_tokens)
  _, prefill_s = timed(1)
  step_ms = (jax_s - prefill_s) / max(f.new_tokens - 1, 1) * 1e3

  with tempfile.TemporaryDirectory() as tmp:
    hrm_jax.hf.save(tmp, config, variables)
    model = transformers.HrmTextForCausalLM.from_pretrained(tmp).eval()
  p = max(map(len, prompts))
  ids = torch.tensor([[0] * (p - len(x)) + x for x in prompts])
  real = torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts])
  kw = dict(input_ids=ids, attention_mask=real, token_type_ids=real, do_sample=False,
            max_new_tokens=f.new_tokens, min_new_tokens=f.new_tokens, pad_token_id=0)
  with torch.no_grad():
    model.generate(**{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
    start = time.perf_counter()
    theirs = model.generate(**kw)
    torch_s = time.perf_counter() - start

  n = f.batch * f.new_tokens
  agree = np.mean([a == b for a, b in zip(np.array(ours).ravel(), theirs[:, p:].numpy().ravel())])
  print(f"model: hidden {f.hidden_size}, {f.layers_per_stack} layers/stack, H{f.H_cycles} "
        f"L{f.L_cycles}, vocab {f.vocab_size}; batch {f.batch}, {f.new_tokens} new tokens, "
        f"prompt lengths {[len(x) for x in prompts]}")
  print(f"{'hrm_jax.generate':>24}: {n / jax_s:10.1f} tokens/s ({jax_s:.3f} s; "
        f"{step_ms:.2f} ms per decode step, prefill + 1 token {prefill_s * 1e3:.1f} ms)")
  print(f"{'transformers generate':>24}: {n / torch_s:10.1f} tokens/s ({torch_s:.3f} s)")
  print(f"{'load average (1 min)':>24}: {os.getloadavg()[0]:10.2f}   (on {os.cpu_count()} CPUs)")
  print(f"{'ratio':>24}: {torch_s / jax_s:10.2f}x   (greedy tokens agreeing: {agree:.1%})")


if __name__ == "__main__":
  app.run(main)
