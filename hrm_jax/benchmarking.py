"""Workloads the benchmark scripts share: randomly packed PrefixLM rows, the attention
forward + backward program, and median timing of variants whose runs alternate.

benchmarks/attention.py and benchmarks/device_check.py time the same program on the same
kind of rows, so their figures compare.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import attention
from hrm_jax.loss import IGNORE_LABEL


def packed_rows(rng: np.random.Generator, batch: int, seq: int,
                max_example: int) -> tuple[np.ndarray, np.ndarray]:
  """segment_ids and prefix_mask [batch, seq] of rows packed like SFT data: examples of
  uniform random length in [16, max_example] with a random prompt share, then padding."""
  seg = np.zeros((batch, seq), np.int32)
  prefix = np.zeros((batch, seq), bool)
  for r in range(batch):
    t, n = 0, 1
    while seq - t >= 16:
      length = int(rng.integers(16, min(max_example, seq - t) + 1))
      seg[r, t:t + length] = n
      prefix[r, t:t + int(rng.integers(0, length))] = True
      t, n = t + length, n + 1
  return seg, prefix


def packed_batch(rng: np.random.Generator, rows: int, row_len: int, vocab_size: int,
                 max_example: int) -> dict[str, np.ndarray]:
  """A training batch [rows, row_len] on `packed_rows`: random tokens, positions restarting
  at each example, labels the next token wherever it is a response token (target only)."""
  seg, prefix = packed_rows(rng, rows, row_len, max_example)
  inputs = rng.integers(1, vocab_size, (rows, row_len)).astype(np.int32)
  inputs[seg == 0] = 0
  idx = np.arange(row_len)
  first = np.concatenate([np.ones((rows, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  start = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
  positions = np.where(seg > 0, idx - start, 0).astype(np.int32)
  nxt = lambda x, fill: np.concatenate([x[:, 1:], np.full((rows, 1), fill, x.dtype)], axis=1)
  target = (seg > 0) & (nxt(seg, 0) == seg) & ~nxt(prefix, True)
  labels = np.where(target, nxt(inputs, 0), IGNORE_LABEL).astype(np.int32)
  return {"inputs": inputs, "labels": labels, "positions": positions, "segment_ids": seg,
          "prefix_mask": prefix}


def attention_fwd_bwd(impl: str, chunk: int) -> Callable:
  """Jitted (q, k, v [B, S, H, K], cotangent w, segment_ids, prefix_mask [B, S]) ->
  (output, (dq, dk, dv)) of `attention.attend` with `impl`, mask preparation included."""

  def run(q, k, v, w, seg, prefix):
    info = attention.make_mask_info(seg, prefix, impl)
    out, vjp = jax.vjp(lambda q, k, v: attention.attend(q, k, v, info, impl, chunk), q, k, v)
    return out, vjp(w.astype(out.dtype))

  return jax.jit(run)


def time_alternating(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: bool = True,
                     reduce: Callable[[list[float]], float] = statistics.median
                     ) -> dict[str, float]:
  """Wall seconds of each thunk (its outputs waited for), the median (or `reduce`) of
  `repeats` runs. Runs alternate between the thunks, so a changing machine load hits all of
  them alike."""
  if warmup:
    for fn in fns.values():
      jax.block_until_ready(fn())
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: reduce(t) for name, t in times.items()}


def random_qkv(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any
               ) -> tuple[jax.Array, ...]:
  """q, k, v and an output cotangent w: standard normal arrays of `shape` in `dtype`."""
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)
               for _ in range(4))


def time_train_step(step: Callable, state: Any, batch: Any, steps: int
                    ) -> tuple[Any, float, float, Any, Any]:
  """Compile a (state-donating) jitted train step, run it once to warm up, then time `steps`
  runs. Returns (compiled, compile seconds, median step seconds, last state, last metrics)."""
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return compiled, compile_s, float(np.median(times)), state, metrics
