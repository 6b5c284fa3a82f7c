"""Greedy decode tokens/s: hrm_jax.generate vs transformers' generate, same model and prompts.

    python benchmarks/decode.py [--hidden_size=256 --layers_per_stack=2 --batch=4 --new_tokens=64]
    python benchmarks/decode.py --continuous --batch=8 [--prompts=48]

--continuous compares the engine's continuous batching (a finished row takes the next
prompt) with static batches (each group of --batch prompts generated to its longest budget,
through the same `hrm_jax.generate`) on prompts with long-tailed budgets: 80% in 4-32 new
tokens, 20% in 96-128. It prints items/s of both, their ratio and whether every answer is
the same, each after one warm-up run (compilation).

A random hrm_jax model is exported with hrm_jax.hf.save and loaded by
`transformers.HrmTextForCausalLM`; both decode the same left-padded PrefixLM prompts
greedily (no eos). One timed run each, after one warm-up run (compilation for hrm_jax).
ms per decode step is (time for new_tokens - time for 1 token) / (new_tokens - 1), i.e.
without the prefill; tokens/s include the prefill for both. Wall times on a shared machine
are noisy: the CPU seconds of the process and the load average are printed beside them.
XLA flags are the user's (XLA_FLAGS); none is set here (single-threaded XLA,
`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`, measured no faster).
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
flags.DEFINE_bool("continuous", False, "Continuous vs static batching (see above).")
flags.DEFINE_integer("prompts", 48, "Prompts of the --continuous comparison.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads for transformers; 0 keeps "
                     "torch's default (one per core). On a loaded machine compare 1 with "
                     "XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
                     "intra_op_parallelism_threads=1'.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  if f.torch_threads:
    torch.set_num_threads(f.torch_threads)
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
  if f.continuous:
    continuous(config, variables, rng)
    return

  def timed(run) -> tuple[object, float, float]:
    """One warm-up run (compilation), then one timed run: output, wall s, process CPU s."""
    run()
    start, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, time.perf_counter() - start, time.process_time() - cpu

  ours, jax_s, jax_cpu = timed(lambda: hrm_jax.generate(config, variables, prompts, f.new_tokens))
  _, jax_first_s, _ = timed(lambda: hrm_jax.generate(config, variables, prompts, 1))

  with tempfile.TemporaryDirectory() as tmp:
    hrm_jax.hf.save(tmp, config, variables)
    model = transformers.HrmTextForCausalLM.from_pretrained(tmp).eval()
  p = max(map(len, prompts))
  ids = torch.tensor([[0] * (p - len(x)) + x for x in prompts])
  real = torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts])
  kw = dict(input_ids=ids, attention_mask=real, token_type_ids=real, do_sample=False,
            pad_token_id=0)

  def hf_generate(n: int):
    with torch.no_grad():
      return model.generate(**kw, max_new_tokens=n, min_new_tokens=n)

  theirs, torch_s, torch_cpu = timed(lambda: hf_generate(f.new_tokens))
  _, torch_first_s, _ = timed(lambda: hf_generate(1))

  n = f.batch * f.new_tokens
  per_step = lambda total, first: (total - first) / max(f.new_tokens - 1, 1) * 1e3
  agree = np.mean([a == b for a, b in zip(np.array(ours).ravel(), theirs[:, p:].numpy().ravel())])
  print(f"model: hidden {f.hidden_size}, {f.num_heads} heads, {f.layers_per_stack} layers/stack, "
        f"H{f.H_cycles} L{f.L_cycles} ({config.H_cycles * (config.L_cycles + 1) * config.layers_per_stack} "
        f"layer applications per token), vocab {f.vocab_size}, float32; batch {f.batch}, "
        f"{f.new_tokens} new tokens, prompt lengths {[len(x) for x in prompts]}")
  print(f"threads: torch {torch.get_num_threads()}, XLA CPU intra-op pool {os.cpu_count()} "
        f"(one per core); XLA_FLAGS={os.environ.get('XLA_FLAGS') or '(default)'}; "
        "transformers runs float32 eager")
  print(f"| {'':22} | {'tokens/s':>9} | {'total s':>8} | {'CPU s':>6} | {'ms per decode step':>18} "
        f"| {'prefill + 1 token ms':>20} |")
  print(f"|{'-' * 24}|{'-' * 11}|{'-' * 10}|{'-' * 8}|{'-' * 20}|{'-' * 22}|")
  for name, total, cpu, first in (("hrm_jax.generate", jax_s, jax_cpu, jax_first_s),
                                  ("transformers generate", torch_s, torch_cpu, torch_first_s)):
    print(f"| {name:22} | {n / total:9.1f} | {total:8.3f} | {cpu:6.2f} | "
          f"{per_step(total, first):18.2f} | {first * 1e3:20.1f} |")
  print(f"ratio (tokens/s): {torch_s / jax_s:.2f}x; per decode step: "
        f"{per_step(torch_s, torch_first_s) / per_step(jax_s, jax_first_s):.2f}x; greedy tokens "
        f"agreeing: {agree:.1%}; load average (1 min) {os.getloadavg()[0]:.2f}")


def continuous(config: hrm_jax.ModelConfig, variables: dict, rng: np.random.Generator) -> None:
  """Items/s of continuous vs static batches of FLAGS.batch over long-tailed budgets."""
  f = flags.FLAGS
  n = f.prompts
  prompts = [rng.integers(1, f.vocab_size, int(k)).tolist() for k in rng.integers(16, 48, n)]
  long_tail = np.isin(np.arange(n), rng.permutation(n)[:round(0.2 * n)])  # exactly 20%
  budgets = np.where(long_tail, rng.integers(96, 129, n), rng.integers(4, 33, n)).tolist()

  def static():
    out = []
    for i in range(0, n, f.batch):  # every row of a batch waits for the batch's longest
      out += hrm_jax.generate(config, variables, prompts[i:i + f.batch], budgets[i:i + f.batch])
    return out

  def engine():
    return hrm_jax.generate(config, variables, prompts, budgets, batch_size=f.batch)

  seconds, outs = {}, {}
  for name, run in (("static batches", static), ("continuous batching", engine)):
    run()  # compilation
    start = time.perf_counter()
    outs[name] = run()
    seconds[name] = time.perf_counter() - start
  tokens = sum(budgets)
  print(f"model: hidden {f.hidden_size}, {f.layers_per_stack} layers/stack, H{f.H_cycles} "
        f"L{f.L_cycles}, vocab {f.vocab_size}, float32; {n} prompts of 16-47 tokens, batch "
        f"{f.batch}; budgets: {int(long_tail.sum())} in 96-128, the rest in 4-32 "
        f"({tokens} tokens, no eos)")
  print(f"| {'':20} | {'items/s':>8} | {'tokens/s':>9} | {'s':>7} |")
  print(f"|{'-' * 22}|{'-' * 10}|{'-' * 11}|{'-' * 9}|")
  for name, s in seconds.items():
    print(f"| {name:20} | {n / s:8.2f} | {tokens / s:9.1f} | {s:7.2f} |")
  print(f"continuous / static items/s: {seconds['static batches'] / seconds['continuous batching']:.2f}x; "
        f"same tokens: {outs['static batches'] == outs['continuous batching']}; "
        f"load average (1 min) {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
