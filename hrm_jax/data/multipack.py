"""Multipack sampler: examples -> rows of one global batch, longest-first (LPT) across rows.

Semantics of the reference `MultipackDistributedBatchSampler` (multipack v2): walk the epoch in
order; for each batch take the longest prefix of the remaining examples (found by binary search)
that LPT scheduling fits into `num_rows` rows of `capacity` tokens; LPT gives each row its share,
which balances tokens and quadratic attention work. The epoch stops at the first batch that
cannot give every row at least one example, and with drop_last also before the batch that
consumes the last example. Only lengths matter, so every host computes the same plan and then
builds only its own rows.
"""

from __future__ import annotations

import heapq
from typing import Iterator

import numpy as np


def lpt_fits(lengths: np.ndarray, capacity: int, num_rows: int) -> bool:
  """Whether LPT (longest first, each into the least-loaded row) keeps every row <= capacity.

  Ties between equally loaded rows do not change the loads, so a plain binary heap gives the
  reference's answer.
  """
  loads = [0] * num_rows
  for size in sorted(lengths.tolist(), reverse=True):
    load = loads[0] + size
    if load > capacity:
      return False
    heapq.heapreplace(loads, load)
  return True


def lpt_assign(lengths: np.ndarray, num_rows: int) -> list[list[int]]:
  """LPT assignment: for each row, indices into `lengths` in the order they were placed.

  Which row gets an example on ties decides the batch contents, so this follows the
  reference's heap exactly: a 1-based min-heap of (load, row) sunk after each placement, with
  examples visited in reverse stable-ascending order of length.
  """
  order = np.argsort(lengths, kind="mergesort")[::-1].tolist()
  sizes = lengths.tolist()
  heap = [0] * (num_rows + 1)
  row_of = list(range(-1, num_rows))
  rows: list[list[int]] = [[] for _ in range(num_rows)]
  for idx in order:
    heap[1] += sizes[idx]
    rows[row_of[1]].append(idx)
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
  return rows


class Multipack:
  """The batch plan of one epoch. lengths: [N] model tokens per example, in epoch order."""

  def __init__(self, lengths: np.ndarray, capacity: int, num_rows: int, drop_last: bool = True):
    self.lengths = np.asarray(lengths, np.int64)
    if self.lengths.size and int(self.lengths.max()) > capacity:
      raise ValueError(f"an example has {int(self.lengths.max())} tokens, more than a row "
                       f"({capacity})")
    self.capacity, self.num_rows, self.drop_last = capacity, num_rows, drop_last
    self._cumsum = np.concatenate([[0], np.cumsum(self.lengths)])  # [N + 1]
    self.used_tokens = 0

  def _allocate(self, start: int) -> tuple[bool, int, list[list[int]]]:
    n_total = self.lengths.size
    # Smallest window from `start` whose tokens reach the batch (or the rest of the epoch).
    goal = self._cumsum[start] + self.capacity * self.num_rows
    end = min(max(int(np.searchsorted(self._cumsum, goal, side="left")), start + 1), n_total)
    window = self.lengths[start:end]
    lo, hi = 1, 1 + window.size  # binary search over counts in [lo, hi)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if lpt_fits(window[:mid], self.capacity, self.num_rows):
        lo = mid
      else:
        hi = mid
    rows = [[start + i for i in r] for r in lpt_assign(window[:lo], self.num_rows)]
    return lo >= self.num_rows, lo, rows

  def __iter__(self) -> Iterator[list[np.ndarray]]:
    """Yields batches: per row, the epoch indices of its examples in packing order."""
    start, n_total = 0, self.lengths.size
    while start < n_total:
      full, count, rows = self._allocate(start)
      start += count
      if not full:
        break
      if self.drop_last and start >= n_total:
        break
      self.used_tokens += int(self._cumsum[start] - self._cumsum[start - count])
      yield [np.asarray(r, np.int64) for r in rows]

  def plan(self) -> list[list[np.ndarray]]:
    return list(self)
