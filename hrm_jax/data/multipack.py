"""Multipack sampler: examples -> rows of one global batch, longest-first (LPT) across rows.

Semantics of the reference `MultipackDistributedBatchSampler` (multipack v2): walk the epoch in
order; for each batch take the longest prefix of the remaining examples (found by binary search)
that LPT scheduling fits into `num_rows` rows of `capacity` tokens; LPT gives each row its share,
which balances tokens and quadratic attention work. The epoch stops at the first batch that
cannot give every row at least one example, and with drop_last also before the batch that
consumes the last example. Only lengths matter, so every host computes the same plan and then
builds only its own rows.

The plan is compiled with numba (LPT is a sequential heap walk that NumPy cannot vectorise;
Python loops cost ~13 us per example, 50 s for a 4M-example epoch) and stored compactly: one
int32 array of example indices in (step, row, packing order) and int64 offsets per (step, row).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _lpt_fits_presorted(window: np.ndarray, ascending: np.ndarray, count: int, capacity: int,
                        num_rows: int) -> bool:
  """Whether LPT of window[:count] keeps every row <= capacity (a binary min-heap of loads),
  given `ascending`, an argsort of the whole window: the prefix is visited longest first by
  skipping indices >= count (no sort per probe; the order of equal lengths, like ties between
  equally loaded rows, does not change the loads)."""
  loads = np.zeros(num_rows, np.int64)
  for k in range(ascending.size - 1, -1, -1):
    if ascending[k] >= count:
      continue
    load = loads[0] + window[ascending[k]]
    if load > capacity:
      return False
    loads[0] = load
    u = 0
    while True:  # sift down
      v = 2 * u + 1
      if v >= num_rows:
        break
      if v + 1 < num_rows and loads[v + 1] < loads[v]:
        v += 1
      if loads[u] <= loads[v]:
        break
      loads[u], loads[v] = loads[v], loads[u]
      u = v
  return True


@numba.njit(cache=True, nogil=True)
def _lpt_assign(window: np.ndarray, num_rows: int, row: np.ndarray) -> np.ndarray:
  """row[i] = the row LPT gives window[i]; returns the stable ascending order of lengths
  (placement visits it from the end).

  Which row gets an example on ties decides the batch contents, so this follows the
  reference's heap exactly: a 1-based min-heap of (load, row) sunk after each placement.
  """
  order = np.argsort(window, kind="mergesort")
  heap = np.zeros(num_rows + 1, np.int64)
  row_of = np.arange(-1, num_rows)
  for k in range(order.size - 1, -1, -1):
    idx = order[k]
    heap[1] += window[idx]
    row[idx] = row_of[1]
    u = 1
    while 2 * u <= num_rows:
      v = 2 * u
      if v + 1 <= num_rows and heap[v + 1] < heap[v]:
        v += 1
      if heap[u] <= heap[v]:
        break
      heap[u], heap[v] = heap[v], heap[u]
      row_of[u], row_of[v] = row_of[v], row_of[u]
      u = v
  return order


@numba.njit(cache=True, nogil=True)
def _plan(lengths: np.ndarray, capacity: int, num_rows: int, drop_last: bool
          ) -> tuple[np.ndarray, np.ndarray]:
  """(examples [M] int32 in (step, row, placement) order, row_ends [steps * num_rows] int64).
  Working memory beyond the output is one batch window."""
  n_total = lengths.size
  examples = np.empty(n_total, np.int32)
  row_ends = np.empty(max(num_rows, n_total // 16), np.int64)  # grown by doubling
  fill = np.zeros(num_rows + 1, np.int64)
  n_out, n_rows_out, start = 0, 0, 0
  while start < n_total:
    # Smallest window from `start` whose tokens reach the batch (or the rest of the epoch).
    end, acc = start, 0
    while end < n_total and acc < capacity * num_rows:
      acc += lengths[end]
      end += 1
    window = lengths[start:end]
    ascending = np.argsort(window)
    lo, hi = 1, 1 + window.size  # binary search over counts in [lo, hi)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if _lpt_fits_presorted(window, ascending, mid, capacity, num_rows):
        lo = mid
      else:
        hi = mid
    if lo < num_rows:
      break
    if drop_last and start + lo >= n_total:
      break
    row = np.empty(lo, np.int64)
    order = _lpt_assign(window[:lo], num_rows, row)
    if n_rows_out + num_rows > row_ends.size:
      grown = np.empty(2 * row_ends.size, np.int64)
      grown[:n_rows_out] = row_ends[:n_rows_out]
      row_ends = grown
    fill[:] = 0
    for i in range(lo):
      fill[row[i] + 1] += 1
    for r in range(num_rows):
      fill[r + 1] += fill[r]
      row_ends[n_rows_out + r] = n_out + fill[r + 1]
    for k in range(lo - 1, -1, -1):  # grouped by row, in placement order within a row
      i = order[k]
      examples[n_out + fill[row[i]]] = start + i
      fill[row[i]] += 1
    n_out += lo
    n_rows_out += num_rows
    start += lo
  return examples[:n_out], row_ends[:n_rows_out]


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """An epoch's batches: step s, row r holds examples[row_starts[s*R + r]:row_starts[s*R+r+1]]
  (indices into the epoch's examples, in packing order); R = num_rows."""
  examples: np.ndarray  # [M] int32
  row_starts: np.ndarray  # [steps * num_rows + 1] int64
  num_rows: int

  def __len__(self) -> int:
    return (self.row_starts.size - 1) // self.num_rows

  def row(self, step: int, r: int) -> np.ndarray:
    k = step * self.num_rows + r
    return self.examples[self.row_starts[k]:self.row_starts[k + 1]]

  def rows(self, step: int) -> list[np.ndarray]:
    return [self.row(step, r) for r in range(self.num_rows)]

  def map(self, order: np.ndarray) -> "EpochPlan":
    """The same plan with example i renamed order[i] (plan of a permuted epoch)."""
    renamed = np.empty_like(self.examples)
    np.take(order, self.examples, out=renamed)
    return EpochPlan(renamed, self.row_starts, self.num_rows)

  @property
  def nbytes(self) -> int:
    return self.examples.nbytes + self.row_starts.nbytes


def plan_epoch(lengths: np.ndarray, capacity: int, num_rows: int,
               drop_last: bool = True) -> EpochPlan:
  """The multipack plan of one epoch. lengths: [N] model tokens per example, in epoch order."""
  lengths = np.ascontiguousarray(lengths, np.int64)
  if lengths.size >= 2 ** 31:
    raise ValueError(f"{lengths.size} examples in one epoch; the plan holds int32 indices")
  if lengths.size and int(lengths.max()) > capacity:
    raise ValueError(f"an example has {int(lengths.max())} tokens, more than a row "
                     f"({capacity})")
  if lengths.size and int(lengths.min()) < 1:
    raise ValueError(f"an example has {int(lengths.min())} tokens; each needs at least one")
  examples, row_ends = _plan(lengths, int(capacity), int(num_rows), bool(drop_last))
  return EpochPlan(examples, np.concatenate([np.zeros(1, np.int64), row_ends]), int(num_rows))


def lpt_fits(lengths: np.ndarray, capacity: int, num_rows: int) -> bool:
  """Whether LPT (longest first, each into the least-loaded row) keeps every row <= capacity."""
  lengths = np.ascontiguousarray(lengths, np.int64)
  return bool(_lpt_fits_presorted(lengths, np.argsort(lengths, kind="stable"), lengths.size,
                                  int(capacity), int(num_rows)))


def lpt_assign(lengths: np.ndarray, num_rows: int) -> list[list[int]]:
  """LPT assignment: for each row, indices into `lengths` in the order they were placed."""
  lengths = np.ascontiguousarray(lengths, np.int64)
  row = np.empty(lengths.size, np.int64)
  order = _lpt_assign(lengths, int(num_rows), row)[::-1]
  return [[int(i) for i in order if row[i] == r] for r in range(num_rows)]


class Multipack:
  """The batch plan of one epoch as lists (see `plan_epoch` for the compact form).
  lengths: [N] model tokens per example, in epoch order."""

  def __init__(self, lengths: np.ndarray, capacity: int, num_rows: int, drop_last: bool = True):
    self.compact = plan_epoch(lengths, capacity, num_rows, drop_last)
    lengths = np.asarray(lengths, np.int64)
    self.used_tokens = int(lengths[self.compact.examples].sum())

  def __iter__(self) -> Iterator[list[np.ndarray]]:
    """Yields batches: per row, the epoch indices of its examples in packing order."""
    for step in range(len(self.compact)):
      yield [r.astype(np.int64) for r in self.compact.rows(step)]

  def plan(self) -> list[list[np.ndarray]]:
    return list(self)
