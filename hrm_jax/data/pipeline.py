"""Training batches from a sampled directory: multipack plan + packing, as a grain pipeline.

The global batch is `rows` rows of `row_len` tokens (the reference's data-parallel ranks, each
with `global_batch_size / ranks` tokens). The plan of every epoch depends only on example
lengths, so each process computes it and builds only its own rows
[p * rows / P, (p + 1) * rows / P). Plans are compact arrays (`multipack.EpochPlan`, ~4 bytes
per example) computed per epoch when needed; only the last two are kept. Each batch's token
ids are checked against the vocabulary as it is built (O(batch)), so a bad id fails with the
example named even when the directory's ids were not checked in full at open. Steps of all
epochs form one grain MapDataset indexed by the global step; its iterator state (the next
global step) is what a checkpoint stores, so a restored iterator yields exactly the next
batch, on any number of processes that divides the rows.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from typing import Any, Iterator

import grain
import numpy as np

from hrm_jax import atomic
from hrm_jax.data import multipack
from hrm_jax.data.multipack import EpochPlan
from hrm_jax.data.packing import IGNORE_LABEL, empty_rows, fill_row
from hrm_jax.data.sampled import DataError, RemoteTokens, SampledData, read_spans

STATE_VERSION = 1
PLAN_CACHE_VERSION = 1  # bump when the plan of given lengths changes
BUCKET_READ_AHEAD = 8  # batches in flight when the data is in a bucket

log = logging.getLogger(__name__)


class Pipeline:
  """Packed batches of `rows` x `row_len` tokens; seed 0 keeps the directory's epoch order
  (the reference); another seed reshuffles each epoch deterministically per (seed, epoch).
  plan_cache: a directory where epoch plans are kept (`plan_*.npz`, keyed by a hash of the
  epoch's lengths, rows, row_len, seed, epoch and drop_last) and reused by later starts."""

  def __init__(self, sampled: SampledData, *, rows: int, row_len: int, seed: int = 0,
               target_only: bool = True, process_index: int = 0, process_count: int = 1,
               prefetch: int = 2, drop_last: bool = True, plan_cache: str | None = None):
    if rows < 1 or row_len < 2:
      raise ValueError(f"rows={rows} and row_len={row_len} must be >= 1 and >= 2")
    if process_count < 1 or rows % process_count:
      raise ValueError(f"rows={rows} must be divisible by process_count={process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if sampled.num_epochs and max((int(sampled.examples(e).lengths.max(initial=0))
                                   for e in range(sampled.num_epochs))) > row_len:
      raise DataError(f"{sampled.path}: an example is longer than row_len={row_len} tokens; "
                      "use a longer row or regenerate with a smaller max_seq_len")
    self.sampled, self.rows, self.row_len, self.seed = sampled, rows, row_len, seed
    self.target_only, self.drop_last, self.prefetch = target_only, drop_last, prefetch
    self.process_index, self.process_count = process_index, process_count
    self.local_rows = rows // process_count
    self._row_lo = process_index * self.local_rows
    self.plan_cache = plan_cache

  @property
  def read_ahead(self) -> int:
    """Batches prepared ahead of the step: `prefetch`, and at least BUCKET_READ_AHEAD when
    tokens.npy is in a bucket (each batch then waits on the network)."""
    if isinstance(self.sampled.tokens, RemoteTokens):
      return max(self.prefetch, BUCKET_READ_AHEAD)
    return self.prefetch

  @property
  def global_batch_tokens(self) -> int:
    return self.rows * self.row_len

  @functools.lru_cache(maxsize=2)
  def plan(self, epoch: int) -> EpochPlan:
    """Per step of the epoch, per global row: indices into `examples(epoch)`
    (`plan(e).row(step, r)`)."""
    lengths = self.sampled.examples(epoch).lengths
    file = self._plan_file(epoch, lengths) if self.plan_cache else None
    if file and os.path.exists(file):
      try:
        with np.load(file) as z:
          plan = EpochPlan(z["examples"], z["row_starts"], self.rows)
        if (plan.examples.dtype == np.int32 and plan.row_starts[-1] == plan.examples.size
            and (plan.row_starts.size - 1) % self.rows == 0):
          return plan
      except (OSError, ValueError, KeyError, IndexError):
        pass
      log.warning("%s: unreadable or inconsistent plan cache file; recomputing it", file)
    if self.seed == 0:  # the directory's order
      plan = multipack.plan_epoch(lengths, self.row_len, self.rows, self.drop_last)
    else:
      order = np.random.default_rng([self.seed, epoch]).permutation(len(lengths))
      plan = multipack.plan_epoch(lengths[order], self.row_len, self.rows,
                                  self.drop_last).map(order)
    if file:
      with atomic.file(file, "wb") as f:
        np.savez(f, examples=plan.examples, row_starts=plan.row_starts)
    return plan

  def _plan_file(self, epoch: int, lengths: np.ndarray) -> str:
    digest = hashlib.blake2b(memoryview(np.ascontiguousarray(lengths, np.int64)),
                             digest_size=12).hexdigest()
    return os.path.join(self.plan_cache, f"plan_v{PLAN_CACHE_VERSION}_{digest}_r{self.rows}_"
                        f"l{self.row_len}_s{self.seed}_e{epoch}_d{int(self.drop_last)}.npz")

  @functools.lru_cache(maxsize=None)
  def steps_per_epoch(self, epoch: int) -> int:
    return len(self.plan(epoch))

  def total_steps(self, epochs: int) -> int:
    """The reference's schedule length: epochs * total_length // global batch tokens."""
    return epochs * self.sampled.total_length // self.global_batch_tokens

  def data_steps(self) -> int:
    """Global steps in all epochs' plans: where the data runs out."""
    return int(self._offsets[-1])

  def efficiency(self, epoch: int) -> float:
    """Share of row tokens holding data (not padding) over the epoch."""
    used = int(self.sampled.examples(epoch).lengths[self.plan(epoch).examples].sum())
    return used / max(1, self.steps_per_epoch(epoch) * self.global_batch_tokens)

  @functools.cached_property
  def _offsets(self) -> np.ndarray:
    """[num_epochs + 1] global step at which each epoch starts."""
    steps = [self.steps_per_epoch(e) for e in range(self.sampled.num_epochs)]
    return np.concatenate([[0], np.cumsum(steps, dtype=np.int64)])

  def locate(self, step: int) -> tuple[int, int]:
    """Global step -> (epoch, step within the epoch)."""
    epoch = int(np.searchsorted(self._offsets, step, side="right")) - 1
    return epoch, step - int(self._offsets[epoch])

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global step `step`: dict of [local_rows, row_len] arrays."""
    epoch, i = self.locate(step)
    ex, tokens = self.sampled.examples(epoch), self.sampled.tokens
    out = empty_rows(self.local_rows, self.row_len)
    plan = self.plan(epoch)
    rows = [plan.row(i, self._row_lo + r) for r in range(self.local_rows)]
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    # one read for the whole batch: concurrent range requests when tokens.npy is in a bucket
    spans = read_spans(tokens, np.concatenate([ex.inst_start[idx], ex.resp_start[idx]]),
                       np.concatenate([ex.inst_len[idx], ex.resp_len[idx]]))
    inst, resp = spans[:len(idx)], spans[len(idx):]
    first = 0
    for r, row in enumerate(rows):
      pieces = list(zip(inst[first:first + len(row)], resp[first:first + len(row)]))
      fill_row(out, r, pieces, self.target_only)
      first += len(row)
    self._check_ids(out, epoch, rows)
    return out

  def _check_ids(self, out: dict[str, np.ndarray], epoch: int, rows: list[np.ndarray]) -> None:
    """Raise naming the example if a token id of the batch is outside the vocabulary.
    inputs hold every token but each response's last; labels hold that one."""
    limit, inputs, labels = self.sampled.id_limit, out["inputs"], out["labels"]
    bad = (inputs < 0) | (inputs >= limit) | (labels >= limit) | (
        (labels < 0) & (labels != IGNORE_LABEL))
    if not bad.any():
      return
    r, t = np.argwhere(bad)[0]
    value = inputs[r, t] if not 0 <= inputs[r, t] < limit else labels[r, t]
    example = int(rows[r][out["segment_ids"][r, t] - 1])
    ex = self.sampled.examples(epoch)
    raise DataError(
        f"{self.sampled.path}: epoch {epoch} example {example} (tokens.npy "
        f"[{ex.inst_start[example]}, {ex.inst_start[example] + ex.inst_len[example]}) and "
        f"[{ex.resp_start[example]}, {ex.resp_start[example] + ex.resp_len[example]})) has "
        f"token id {int(value)}, outside the vocabulary [0, {limit}); run "
        f"experiments/check_data.py {self.sampled.path} to find every bad id")

  def _fingerprint(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, "rows": self.rows, "row_len": self.row_len,
            "seed": self.seed, "target_only": self.target_only, "drop_last": self.drop_last,
            "total_length": self.sampled.total_length, "num_epochs": self.sampled.num_epochs,
            "total_batches": int(self._offsets[-1])}

  def iterator(self, start_epoch: int = 0) -> "PipelineIterator":
    """All batches from `start_epoch` to the last epoch, in order."""
    if not 0 <= start_epoch <= self.sampled.num_epochs:
      raise ValueError(f"start_epoch={start_epoch} outside [0, {self.sampled.num_epochs}]")
    return PipelineIterator(self, int(self._offsets[start_epoch]))


class PipelineIterator(Iterator[dict[str, np.ndarray]]):
  """Iterator over batches with checkpointable state (grain's, plus a layout check)."""

  def __init__(self, pipeline: Pipeline, start_step: int):
    self.pipeline = pipeline
    total = int(pipeline._offsets[-1])
    ahead = pipeline.read_ahead
    options = grain.ReadOptions(num_threads=min(ahead, 4), prefetch_buffer_size=ahead)
    self._dataset = grain.MapDataset.range(total).map(pipeline.batch).to_iter_dataset(options)
    self._it = iter(self._dataset)
    if start_step:
      self._it.set_state({**self._it.get_state(), "next_index": start_step})

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def close(self) -> None:
    """Stop reading ahead (batches already being read finish in the background)."""
    self._it.close()

  @property
  def next_step(self) -> int:
    """The global step of the batch `next` returns."""
    return int(self._it.get_state()["next_index"])

  @property
  def epoch(self) -> int:
    """The epoch of the next batch (num_epochs once exhausted)."""
    step = self.next_step
    if step >= int(self.pipeline._offsets[-1]):
      return self.pipeline.sampled.num_epochs
    return self.pipeline.locate(step)[0]

  def get_state(self) -> dict[str, Any]:
    return {"grain": self._it.get_state(), "pipeline": self.pipeline._fingerprint()}

  def set_state(self, state: dict[str, Any]) -> None:
    want, have = self.pipeline._fingerprint(), dict(state.get("pipeline") or {})
    for key in ("process_index", "process_count"):  # in states saved before 2026-12
      have.pop(key, None)
    if want != have:
      raise DataError(f"iterator state was saved by a different pipeline or data: saved "
                      f"{have}, this pipeline {want}")
    self._it.set_state(state["grain"])
