"""Workloads the benchmark scripts share: randomly packed PrefixLM rows, the attention
forward + backward program, median timing of variants whose runs alternate, a program's
matmuls alone (its measured floor) and the load check of benchmarks/README.md's protocol.

benchmarks/attention.py and benchmarks/device_check.py time the same program on the same
kind of rows, so their figures compare.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.extend as jex
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


class Dot(NamedTuple):
  """One dot_general of a program: operand types, its parameters and how often it runs."""

  lhs: jax.ShapeDtypeStruct
  rhs: jax.ShapeDtypeStruct
  params: tuple[tuple[str, Any], ...]
  count: int

  @property
  def flops(self) -> int:
    """2 x batch x M x K x N per run, times the runs."""
    (_, rhs_contract), (_, rhs_batch) = dict(self.params)["dimension_numbers"]
    rhs_free = [n for d, n in enumerate(self.rhs.shape) if d not in (*rhs_contract, *rhs_batch)]
    return int(2 * np.prod(self.lhs.shape) * np.prod(rhs_free) * self.count)


def dots_of(fn: Callable, *args: Any) -> list[Dot]:
  """Every dot_general `fn(*args)` runs, forward and backward alike (the traced program, so
  a gradient's transposed dots are included), with scan bodies counted `length` times."""
  counts: dict[tuple, int] = {}

  def walk(jaxpr, times: int) -> None:
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        lhs, rhs = (jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars)
        key = (lhs, rhs, tuple(sorted((k, v) for k, v in eqn.params.items()
                                      if k != "out_sharding")))
        counts[key] = counts.get(key, 0) + times
      if eqn.primitive.name in ("while", "cond"):
        raise ValueError(f"dots_of: {eqn.primitive.name} has no static trip count")
      inner = times * eqn.params.get("length", 1) if eqn.primitive.name == "scan" else times
      for sub in jex.core.jaxprs_in_params(eqn.params):
        walk(sub, inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
  return [Dot(lhs, rhs, params, n) for (lhs, rhs, params), n in counts.items()]


def dots_program(dots: list[Dot], seed: int = 0) -> tuple[Callable, tuple]:
  """A jitted program running exactly `dots` (each as often as it runs) and its inputs: every
  run gets operands of its own, so XLA can neither merge nor skip any, and every output is
  returned (written, as the real program writes it)."""
  rng = np.random.default_rng(seed)
  operand = lambda t: jnp.asarray(rng.standard_normal(t.shape, np.float32), t.dtype)
  inputs = tuple((operand(d.lhs), operand(d.rhs)) for d in dots for _ in range(d.count))
  params = [dict(d.params) for d in dots for _ in range(d.count)]

  @jax.jit
  def run(inputs):
    return [jax.lax.dot_general(a, b, **p) for (a, b), p in zip(inputs, params)]

  return run, (inputs,)


LOAD_LIMIT = 1.5  # 1-minute load average above which timings measure the contention


def check_load(what: str = "timings") -> float:
  """Print the 1-minute load average and warn when it is above LOAD_LIMIT: figures taken
  with other work running measure the contention, not the code (benchmarks/README.md)."""
  load = os.getloadavg()[0]
  print(f"load average (1 min): {load:.2f} on {os.cpu_count()} cores")
  if load > LOAD_LIMIT:
    print(f"WARNING: load {load:.2f} > {LOAD_LIMIT}: something else is running; these {what} "
          "measure the contention, not the code. Wait for a quiet machine.")
  return load
