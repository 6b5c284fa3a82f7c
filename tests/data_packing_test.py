"""Packing and multipack against a direct transcription of the reference semantics
(HRM-Text dataset_new.py `_load_batch`, multipack_sampler.py), written loop by loop."""

import numpy as np
import pytest

from hrm_jax import data
from hrm_jax.data import multipack, packing

IGNORE = -100


# --- the reference, transcribed literally --------------------------------------------------

def ref_sink(heap, ids, n):
  u = 1
  while (u << 1) <= n:
    v = u << 1
    rch = (u << 1) | 1
    if rch <= n and heap[rch] < heap[v]:
      v = rch
    if heap[u] <= heap[v]:
      break
    heap[u], heap[v] = heap[v], heap[u]
    if ids is not None:
      ids[u], ids[v] = ids[v], ids[u]
    u = v


def ref_lpt_check(A, c, n):
  heap = [0] * (n + 1)
  for size in np.sort(A)[::-1]:
    heap[1] += size
    if heap[1] > c:
      return False
    ref_sink(heap, None, n)
  return True


def ref_lpt_with_result(A, n, rank):
  result = []
  indices = np.argsort(A, kind="mergesort")[::-1]
  heap = [0] * (n + 1)
  ids = list(range(-1, n))
  for idx, size in enumerate(A[indices]):
    heap[1] += size
    if ids[1] == rank:
      result.append(indices[idx])
    ref_sink(heap, ids, n)
  return np.array(result, np.int64)


def ref_allocate(start, lengths, rank, c, n):
  total, end = 0, start
  while end < lengths.size:
    total += lengths[end]
    end += 1
    if total >= c * n:
      break
  a = lengths[start:end]
  l, r = 1, 1 + a.size
  while r - l > 1:
    m = (l + r) // 2
    if ref_lpt_check(a[:m], c, n):
      l = m
    else:
      r = m
  return l >= n, l, start + ref_lpt_with_result(a[:l], n, rank)


def ref_batches(lengths, c, n, rank, drop_last):
  start, out = 0, []
  while start < lengths.size:
    full, count, batch = ref_allocate(start, lengths, rank, c, n)
    start += count
    if not full:
      break
    if drop_last and start >= lengths.size:
      break
    out.append(batch)
  return out


def ref_load_batch(tokens, ex, indices, c, target_only):
  inputs, labels, pos = [], [], []
  for k in indices:
    i = tokens[ex.inst_start[k]:ex.inst_start[k] + ex.inst_len[k]].astype(np.int32)
    o = tokens[ex.resp_start[k]:ex.resp_start[k] + ex.resp_len[k]].astype(np.int32)
    inputs += [i, o[:-1]]
    labels += [np.full(len(i) - 1, IGNORE, np.int32) if target_only else i[1:], o]
    pos += [np.arange(len(i)), np.arange(len(i), len(i) + len(o) - 1)]
  b = [np.concatenate(v).astype(np.int32) for v in (inputs, labels, pos)]
  pad = c - len(b[0])
  return [np.pad(x, (0, pad), constant_values=v) for x, v in zip(b, (0, IGNORE, 0))]


# --- tests ---------------------------------------------------------------------------------

def random_examples(rng, n, max_inst=12, max_resp=12, vocab=50):
  inst_len = rng.integers(1, max_inst + 1, n)
  resp_len = rng.integers(2, max_resp + 1, n)
  tokens, ex = data.concat_examples(
      [rng.integers(1, vocab, k).tolist() for k in inst_len],
      [rng.integers(1, vocab, k).tolist() for k in resp_len])
  return tokens, ex


@pytest.mark.parametrize("n_rows,cap,drop_last", [(1, 40, True), (3, 32, False), (4, 64, True),
                                                  (8, 24, False)])
def test_multipack_plan_matches_reference_sampler(n_rows, cap, drop_last):
  rng = np.random.default_rng(n_rows * 100 + cap)
  lengths = rng.integers(1, 9, 300) * rng.choice([1, 3], 300)  # many ties
  lengths = np.minimum(lengths, cap)
  plan = multipack.Multipack(lengths, cap, n_rows, drop_last).plan()
  assert plan, "the test data must produce batches"
  for rank in range(n_rows):
    ref = ref_batches(lengths, cap, n_rows, rank, drop_last)
    assert len(ref) == len(plan)
    for ours, theirs in zip(plan, ref):
      np.testing.assert_array_equal(ours[rank], theirs)


@pytest.mark.parametrize("target_only", [True, False])
def test_rows_match_reference_load_batch(target_only):
  rng = np.random.default_rng(1)
  tokens, ex = random_examples(rng, 40)
  rows = [[3, 0, 7], [12], [5, 6, 9, 10]]
  c = 80
  out = packing.pack_rows(
      [[(tokens[ex.inst_start[k]:ex.inst_start[k] + ex.inst_len[k]],
         tokens[ex.resp_start[k]:ex.resp_start[k] + ex.resp_len[k]]) for k in r] for r in rows],
      c, target_only)
  for r, idx in enumerate(rows):
    inputs, labels, pos = ref_load_batch(tokens, ex, idx, c, target_only)
    np.testing.assert_array_equal(out["inputs"][r], inputs)
    np.testing.assert_array_equal(out["labels"][r], labels)
    np.testing.assert_array_equal(out["positions"][r], pos)
    # segment ids and the prefix mask encode the reference's seqlens_i / seqlens_o
    seg, pre = [], []
    for s, k in enumerate(idx, start=1):
      n = ex.inst_len[k] + ex.resp_len[k] - 1
      seg += [s] * n
      pre += [True] * ex.inst_len[k] + [False] * (ex.resp_len[k] - 1)
    pad = c - len(seg)
    np.testing.assert_array_equal(out["segment_ids"][r], seg + [0] * pad)
    np.testing.assert_array_equal(out["prefix_mask"][r], pre + [False] * pad)
  assert out["inputs"].dtype == np.int32 and out["prefix_mask"].dtype == bool


def test_pipeline_batches_match_reference_end_to_end(tmp_path):
  rng = np.random.default_rng(2)
  tokens, ex = random_examples(rng, 500)
  info = {"tokenizer_path": "", "boq": "a", "eoq": "b", "eoa": "c", "condition_mapping": {},
          "vocab_size": 50}
  data.write_sampled(tmp_path / "d", tokens=tokens, examples=ex, tokenizer_info=info,
                     max_seq_len=40, epochs=2, seed=3)
  sampled = data.open_sampled(str(tmp_path / "d"))
  rows, c = 4, 48
  pipe = data.Pipeline(sampled, rows=rows, row_len=c, target_only=False, prefetch=0)
  got = list(pipe.iterator())
  want = []
  for epoch in range(2):
    e = sampled.examples(epoch)
    per_rank = [ref_batches(e.lengths, c, rows, r, True) for r in range(rows)]
    for step in range(len(per_rank[0])):
      want.append([ref_load_batch(sampled.tokens, e, per_rank[r][step], c, False)
                   for r in range(rows)])
  assert len(got) == len(want) == pipe.steps_per_epoch(0) + pipe.steps_per_epoch(1)
  for g, w in zip(got, want):
    for r in range(rows):
      np.testing.assert_array_equal(g["inputs"][r], w[r][0])
      np.testing.assert_array_equal(g["labels"][r], w[r][1])
      np.testing.assert_array_equal(g["positions"][r], w[r][2])


def test_ignore_label_is_the_models():
  import hrm_jax
  assert packing.IGNORE_LABEL == hrm_jax.IGNORE_LABEL == IGNORE


def test_fill_row_rejects_overflow_and_degenerate_examples():
  out = packing.empty_rows(1, 5)
  with pytest.raises(ValueError, match="more than 5"):
    packing.fill_row(out, 0, [(np.array([1, 2, 3]), np.array([4, 5, 6, 7]))])
  with pytest.raises(ValueError, match="need >= 1 and >= 2"):
    packing.fill_row(out, 0, [(np.array([1, 2]), np.array([4]))])
