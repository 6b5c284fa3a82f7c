"""Throughput of the evaluation engine (hrm_jax.eval.runner) per generation stream.

    python benchmarks/eval.py                      # hidden 256, 2 layers/stack, H2 L3
    python benchmarks/eval.py --batch_sizes=1,8 --items=32 --max_new_tokens=64

A random model (it never emits eoa, so every open-ended item generates the full
--max_new_tokens: the worst case) with the demo character tokenizer runs all ten invented
fixture benchmarks (tests/fixtures/eval), rows repeated to --items per benchmark. Each batch
size runs twice: the first run includes compilation, the second is the steady state. Prints
items/s per stream (the one-token multiple-choice stream, GSM8K+MATH+DROP+MMLU-Pro, AIME
samples) and how many of its prompts exceed --max_seq_len (empty outputs, no generation:
with character tokens the 25-shot ARC, 10-shot HellaSwag and DROP prompts do at 512).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import flags

import hrm_jax
from hrm_jax import cli
from hrm_jax.data import demo
from hrm_jax.eval import runner, tasks
from hrm_jax.tokenizer import Tokenizer, TokenizerInfo

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "eval"

flags.DEFINE_integer("hidden_size", 256, "Model width.")
flags.DEFINE_integer("layers_per_stack", 2, "Layers in each of H and L.")
flags.DEFINE_integer("max_seq_len", 512, "Model context (few-shot prompts are fitted to it).")
flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to compare.")
flags.DEFINE_integer("items", 8, "Items per benchmark (fixture rows repeated).")
flags.DEFINE_integer("max_new_tokens", 16, "Cap on open-ended generation.")
flags.DEFINE_integer("aime_samples", 4, "Samples per AIME problem.")


def demo_tokenizer() -> Tokenizer:
  path = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
  built = demo.build_tokenizer()
  built.save(path)
  return Tokenizer.load(path, TokenizerInfo.default(path, built.get_vocab_size()))


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  config = hrm_jax.model_config("B", "hrm", hidden_size=f.hidden_size, num_heads=4,
                                n_layers=2 * f.layers_per_stack, vocab_size=256,
                                max_seq_len=f.max_seq_len)
  batch = {"inputs": np.ones((1, 4), np.int32), "positions": np.arange(4, dtype=np.int32)[None],
           "segment_ids": np.ones((1, 4), np.int32), "prefix_mask": np.ones((1, 4), bool)}
  variables = jax.jit(hrm_jax.LanguageModel(config).init)(jax.random.PRNGKey(0), batch)
  tok = demo_tokenizer()
  benches = list(tasks.benchmarks(f.aime_samples).values())
  data = {}
  for b in benches:
    examples, shots = runner.load_examples(b, str(FIXTURES))
    data[b.name] = ((examples * f.items)[:f.items], shots)
  streams: dict[tasks.GenSettings, list[str]] = {}
  for b in benches:
    streams.setdefault(b.settings, []).append(b.name)
  print(f"hrm hidden {f.hidden_size}, {f.layers_per_stack} layers/stack, H{config.H_cycles} "
        f"L{config.L_cycles}, {f.items} items per benchmark, <= {f.max_new_tokens} new tokens, "
        f"{jax.devices()[0].platform}\n")
  print("| batch | stream | requests | too long | first run s (compiles) | steady s | "
        "steady items/s |")
  print("|---|---|---|---|---|---|---|")
  for bs in map(int, f.batch_sizes):
    times = []
    for _ in range(2):
      per_stream = {}
      for settings, names in streams.items():
        group = [b for b in benches if b.name in names]
        start = time.perf_counter()
        out = runner.evaluate(config, variables, tok, group, None, batch_size=bs,
                              max_new_tokens=f.max_new_tokens, progress=False,
                              log=lambda m: None, loaded={n: data[n] for n in names})
        too_long = sum(r["too_long"] for r in out.values()) * settings.samples
        per_stream["+".join(names)] = (time.perf_counter() - start,
                                       len(names) * f.items * settings.samples, too_long)
      times.append(per_stream)
    for name, (first, n, too_long) in times[0].items():
      steady = times[1][name][0]
      print(f"| {bs} | {name} | {n} | {too_long} | {first:.1f} | {steady:.1f} | "
            f"{n / steady:.1f} |", flush=True)


if __name__ == "__main__":
  cli.run(main)
