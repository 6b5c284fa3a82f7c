"""Throughput of the data pipeline: it must never be the bottleneck of training.

    python benchmarks/data.py

Prints batches/s and tokens/s of `hrm_jax.data.Pipeline` on the demo data at the demo shape
(8 x 256) and on a synthetic data_io directory at 16 x 4096, and, in the same run, the token
rate of one jitted forward+backward of the demo model (hidden 256, 2 layers per stack, H2 L3,
8 x 256) with the ratio pipeline / training step.
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags
import numpy as np

from hrm_jax import data

_BATCHES = flags.DEFINE_integer("batches", 200, "batches timed per configuration")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "pipeline prefetch (threads)")
_MODEL = flags.DEFINE_bool("model", True, "also time the demo model's training step")


def synthetic_dir(root: str, examples: int = 6000, seed: int = 0) -> str:
  """A data_io directory with long SFT-like examples (instruction 20-1500, response 2-2500)."""
  rng = np.random.default_rng(seed)
  inst_len = rng.integers(20, 1500, examples)
  resp_len = rng.integers(2, 2500, examples)
  total = int(inst_len.sum() + resp_len.sum())
  tokens = rng.integers(0, 65000, total).astype(np.uint16)
  starts = np.concatenate([[0], np.cumsum(inst_len + resp_len)[:-1]])
  ex = data.Examples(starts, inst_len, starts + inst_len, resp_len)
  info = {"tokenizer_path": root, "boq": "", "eoq": "", "eoa": "", "condition_mapping": {},
          "vocab_size": 65000}
  out = os.path.join(root, "synthetic")
  data.write_sampled(out, tokens=tokens, examples=ex, tokenizer_info=info, max_seq_len=4097,
                     epochs=2)
  return out


def time_pipeline(path: str, rows: int, row_len: int, batches: int) -> tuple[float, float, int]:
  """(seconds for `batches` batches after the first, plan seconds, batches timed)."""
  t0 = time.perf_counter()
  pipe = data.Pipeline(data.open_sampled(path), rows=rows, row_len=row_len,
                       prefetch=_PREFETCH.value)
  it = pipe.iterator()
  plan = time.perf_counter() - t0
  next(it)
  t = time.perf_counter()
  n = 0
  for _ in range(batches):
    try:
      next(it)
    except StopIteration:
      break
    n += 1
  return time.perf_counter() - t, plan, n


def model_tokens_per_s() -> float:
  import jax
  import hrm_jax
  cfg = hrm_jax.model_config("B", "hrm", hidden_size=256, num_heads=4, n_layers=4,
                             vocab_size=256, max_seq_len=256)
  model = hrm_jax.LanguageModel(cfg)
  with tempfile.TemporaryDirectory() as tmp:
    demo = data.ensure_demo_data(tmp)
    batch = next(data.Pipeline(data.open_sampled(demo.train_dir), rows=8, row_len=256).iterator())
  labels = batch.pop("labels")
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch)

  @jax.jit
  def step(params):
    def loss(p):
      logits = model.apply({**variables, "params": p}, batch, bp_steps=None)
      return hrm_jax.loss_and_metrics(logits, labels, batch["segment_ids"])[0]
    return jax.value_and_grad(loss)(params)

  jax.block_until_ready(step(variables["params"]))
  times = []
  for _ in range(3):
    t = time.perf_counter()
    jax.block_until_ready(step(variables["params"]))
    times.append(time.perf_counter() - t)
  return 8 * 256 / float(np.median(times))


def main(_):
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    demo = data.ensure_demo_data(os.path.join(tmp, "cache"))
    rows.append(("demo", 8, 256, *time_pipeline(demo.train_dir, 8, 256, _BATCHES.value)))
    synth = synthetic_dir(tmp)
    rows.append(("synthetic", 16, 4096, *time_pipeline(synth, 16, 4096, _BATCHES.value // 4)))
  print("| data | batch | batches/s | tokens/s | plan+open s |")
  print("|---|---|---|---|---|")
  demo_rate = 0.0
  for name, r, s, secs, plan, n in rows:
    rate = n / secs
    print(f"| {name} | {r} x {s} | {rate:,.1f} | {rate * r * s:,.0f} | {plan:.2f} |")
    if name == "demo":
      demo_rate = rate * r * s
  if _MODEL.value:
    step_rate = model_tokens_per_s()
    print(f"\ndemo training step (hidden 256, 2 layers/stack, H2 L3, 8 x 256, fwd+bwd): "
          f"{step_rate:,.0f} tokens/s; pipeline / step = {demo_rate / step_rate:,.1f}x "
          f"(must be >= 10x); vs a nominal 1,000 tokens/s step: {demo_rate / 1000:,.0f}x")


if __name__ == "__main__":
  app.run(main)
