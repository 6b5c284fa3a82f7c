"""Multipack balance and determinism, the grain pipeline (rows per process, resume), and the
demo data (deterministic, cached atomically, correct answers, held-out eval)."""

import heapq
import json
import os

import numpy as np
import pytest

from hrm_jax import data
from hrm_jax.data import demo, multipack
from helpers import files_of, modes, umask


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  return data.ensure_demo_data(str(tmp_path_factory.mktemp("cache")), epochs=3,
                               train_per_task=300, eval_per_task=20)


# --- multipack -----------------------------------------------------------------------------

def test_lpt_balance_and_coverage():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 200, 5000)
  cap, n = 1024, 8
  plan = multipack.Multipack(lengths, cap, n, drop_last=False).plan()
  next_index, used = 0, 0
  for rows in plan:
    loads = [int(lengths[r].sum()) for r in rows]
    assert max(loads) <= cap and all(len(r) for r in rows)
    # LPT: the most loaded row got its last example while it was the least loaded one
    assert max(loads) - min(loads) <= max(int(lengths[r].max()) for r in rows)
    ids = np.sort(np.concatenate(rows))
    np.testing.assert_array_equal(ids, np.arange(next_index, next_index + ids.size))
    next_index += ids.size
    used += sum(loads)
  assert used / (len(plan) * n * cap) > 0.85  # the reference reports ~0.9 and up
  assert lengths.size - next_index < n  # only a tail that cannot fill every row is left


def test_lpt_fits_is_the_reference_feasibility():
  assert multipack.lpt_fits(np.array([5, 5, 4, 3, 2]), 10, 2)
  assert not multipack.lpt_fits(np.array([5, 5, 4, 3, 3]), 10, 2)  # fits, but not by LPT
  assert not multipack.lpt_fits(np.array([6, 6, 6]), 10, 2)
  assert multipack.lpt_assign(np.array([3, 3, 2, 2]), 2) == [[1, 2], [0, 3]]


def test_multipack_is_deterministic_and_stops_at_unfillable_batch():
  rng = np.random.default_rng(1)
  lengths = rng.integers(1, 50, 1000)
  a = multipack.Multipack(lengths, 128, 4).plan()
  b = multipack.Multipack(lengths.copy(), 128, 4).plan()
  assert all(np.array_equal(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
  # 3 examples for 2 rows: one full batch, then one example cannot fill both rows -> stop
  assert len(multipack.Multipack(np.array([10, 10, 10]), 10, 2, drop_last=False).plan()) == 1
  # drop_last drops the batch that consumes the last example, even when it is full
  assert len(multipack.Multipack(np.array([10, 10]), 10, 2, drop_last=True).plan()) == 0
  assert len(multipack.Multipack(np.array([10, 10]), 10, 2, drop_last=False).plan()) == 1
  with pytest.raises(ValueError, match="more than a row"):
    multipack.Multipack(np.array([11]), 10, 1)


def former_plan(lengths, capacity, num_rows, drop_last):
  """The former pure-Python multipack (heapq LPT, lists per row), kept as the reference."""
  def fits(a):
    loads = [0] * num_rows
    for size in sorted(a.tolist(), reverse=True):
      if loads[0] + size > capacity:
        return False
      heapq.heapreplace(loads, loads[0] + size)
    return True

  def assign(a):
    heap, row_of, rows = [0] * (num_rows + 1), list(range(-1, num_rows)), [[] for _ in range(num_rows)]
    for idx in np.argsort(a, kind="mergesort")[::-1].tolist():
      heap[1] += int(a[idx])
      rows[row_of[1]].append(idx)
      u = 1
      while 2 * u <= num_rows:
        v = 2 * u + (2 * u + 1 <= num_rows and heap[2 * u + 1] < heap[2 * u])
        if heap[u] <= heap[v]:
          break
        heap[u], heap[v], row_of[u], row_of[v] = heap[v], heap[u], row_of[v], row_of[u]
        u = v
    return rows

  cumsum, start, n, plan = np.concatenate([[0], np.cumsum(lengths)]), 0, len(lengths), []
  while start < n:
    goal = cumsum[start] + capacity * num_rows
    end = min(max(int(np.searchsorted(cumsum, goal, side="left")), start + 1), n)
    window, lo, hi = lengths[start:end], 1, 1 + end - start
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if fits(window[:mid]) else (lo, mid)
    rows = [[start + i for i in r] for r in assign(window[:lo])]
    start += lo
    if lo < num_rows or (drop_last and start >= n):
      break
    plan.append(rows)
  return plan


@pytest.mark.parametrize("seed,n,lo,hi,cap,rows,drop_last", [
    (0, 20000, 1, 300, 1024, 8, True), (1, 5000, 2, 4096, 4096, 64, True),
    (2, 3000, 1, 50, 100, 3, False), (3, 2000, 5, 5, 20, 4, False),  # all ties
    (4, 10000, 1, 2000, 2048, 16, False)])
def test_compiled_plan_equals_the_former_python_plan(seed, n, lo, hi, cap, rows, drop_last):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(lo, hi + 1, n)
  want = former_plan(lengths, cap, rows, drop_last)
  got = multipack.plan_epoch(lengths, cap, rows, drop_last)
  assert len(got) == len(want) > 0
  for step, batch in enumerate(want):
    assert [got.row(step, r).tolist() for r in range(rows)] == batch
  assert got.examples.dtype == np.int32 and got.nbytes < 5 * n + 8 * (len(got) * rows + 1)


def test_pipeline_plan_is_the_former_plan_through_the_epoch_order(demo_data):
  s = data.open_sampled(demo_data.train_dir)
  pipe = data.Pipeline(s, rows=4, row_len=128, seed=9)
  order = np.random.default_rng([9, 1]).permutation(len(s.examples(1)))
  want = former_plan(s.examples(1).lengths[order], 128, 4, True)
  plan = pipe.plan(1)
  assert len(plan) == len(want) == pipe.steps_per_epoch(1)
  for step, batch in enumerate(want):
    assert [plan.row(step, r).tolist() for r in range(4)] == [order[r].tolist() for r in batch]


# --- pipeline ------------------------------------------------------------------------------

def test_pipeline_shapes_and_schedule(demo_data):
  s = data.open_sampled(demo_data.train_dir)
  pipe = data.Pipeline(s, rows=4, row_len=128)
  batch = next(pipe.iterator())
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      "inputs": ((4, 128), "int32"), "labels": ((4, 128), "int32"),
      "positions": ((4, 128), "int32"), "segment_ids": ((4, 128), "int32"),
      "prefix_mask": ((4, 128), "bool")}
  assert pipe.total_steps(3) == 3 * s.total_length // 512
  assert pipe.efficiency(0) > 0.9
  # each example's labels are its response: the label at the last prompt token is the first
  # response token, and padding is ignored
  seg, lab, inp = batch["segment_ids"][0], batch["labels"][0], batch["inputs"][0]
  assert ((seg == 0) <= (lab == -100)).all()
  first = np.flatnonzero(np.diff(batch["prefix_mask"][0].astype(int)) == -1)
  np.testing.assert_array_equal(lab[first], inp[first + 1])


def test_processes_build_disjoint_slices_of_the_global_batch(demo_data):
  s = data.open_sampled(demo_data.train_dir)
  whole = data.Pipeline(s, rows=4, row_len=128).iterator()
  parts = [data.Pipeline(s, rows=4, row_len=128, process_index=p, process_count=2).iterator()
           for p in range(2)]
  for _ in range(3):
    w, a, b = next(whole), next(parts[0]), next(parts[1])
    for k in w:
      np.testing.assert_array_equal(w[k], np.concatenate([a[k], b[k]]))
  with pytest.raises(ValueError, match="divisible"):
    data.Pipeline(s, rows=3, row_len=128, process_count=2)


def test_resume_yields_the_same_batches_as_an_uninterrupted_run(demo_data):
  s = data.open_sampled(demo_data.train_dir)
  pipe = data.Pipeline(s, rows=4, row_len=128, seed=7, prefetch=3)
  steps = pipe.steps_per_epoch(0)
  full = list(pipe.iterator())
  assert len(full) == sum(pipe.steps_per_epoch(e) for e in range(3))
  for stop in (1, steps - 1, steps + 2):  # inside an epoch and across an epoch boundary
    it = pipe.iterator()
    for _ in range(stop):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    fresh = data.Pipeline(data.open_sampled(demo_data.train_dir), rows=4, row_len=128, seed=7)
    resumed = fresh.iterator()
    resumed.set_state(state)
    assert resumed.next_step == stop
    rest = list(resumed)
    assert len(rest) == len(full) - stop
    for x, y in zip(rest, full[stop:]):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])
  it = pipe.iterator(start_epoch=1)
  assert it.epoch == 1
  np.testing.assert_array_equal(next(it)["inputs"], full[steps]["inputs"])
  with pytest.raises(data.DataError, match="different pipeline"):
    data.Pipeline(s, rows=4, row_len=128, seed=8).iterator().set_state(state)


def test_seed_reorders_epochs_deterministically(demo_data):
  s = data.open_sampled(demo_data.train_dir)
  first = lambda seed: next(data.Pipeline(s, rows=2, row_len=64, seed=seed).iterator())["inputs"]
  np.testing.assert_array_equal(first(3), first(3))
  assert not np.array_equal(first(3), first(4))
  # seed 0 packs the directory's own order (the reference): first example leads row 0 or 1
  ex = s.examples(0)
  row0 = first(0)
  lead = s.tokens[ex.inst_start[0]:ex.inst_start[0] + ex.inst_len[0]]
  assert any(np.array_equal(row0[r, :len(lead)], lead) or
             lead.tolist() in [row0[r, i:i + len(lead)].tolist() for i in range(64 - len(lead))]
             for r in range(2))


# --- demo data -----------------------------------------------------------------------------

def test_demo_generation_is_deterministic_and_cached(tmp_path, demo_data):
  again = data.ensure_demo_data(str(tmp_path), epochs=3, train_per_task=300, eval_per_task=20)
  a, b = files_of(demo_data.root), files_of(again.root)
  path_free = lambda fs: {k: v for k, v in fs.items() if not k.endswith(".json")}
  assert path_free(a) == path_free(b) and len(a) > 10
  mtime = os.path.getmtime(os.path.join(again.root, "manifest.json"))
  assert data.ensure_demo_data(str(tmp_path), epochs=3, train_per_task=300,
                               eval_per_task=20).root == again.root
  assert os.path.getmtime(os.path.join(again.root, "manifest.json")) == mtime
  assert demo.generate(1, 50, 5) != demo.generate(0, 50, 5)


def test_demo_cache_is_regenerated_on_version_change_and_never_half_written(tmp_path,
                                                                           monkeypatch):
  first = data.ensure_demo_data(str(tmp_path), epochs=1, train_per_task=50, eval_per_task=5)
  monkeypatch.setattr(demo, "GENERATOR_VERSION", demo.GENERATOR_VERSION + 1)
  second = data.ensure_demo_data(str(tmp_path), epochs=1, train_per_task=50, eval_per_task=5)
  assert second.root != first.root
  with open(os.path.join(second.root, "manifest.json")) as f:
    assert json.load(f)["version"] == demo.GENERATOR_VERSION

  def interrupted(tmp, root, settings):
    open(os.path.join(tmp, "partial"), "w").close()
    raise KeyboardInterrupt

  monkeypatch.setattr(demo, "_write", interrupted)
  with pytest.raises(KeyboardInterrupt):
    data.ensure_demo_data(str(tmp_path), epochs=2, train_per_task=50, eval_per_task=5)
  assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(first.root),
                                                 os.path.basename(second.root)])


def test_demo_cache_follows_the_umask_and_keeps_foreign_files(tmp_path):
  """Before: the cache was 0700/0600 (tempfile modes), unreadable to the rest of a team."""
  with umask(0o022):
    built = data.ensure_demo_data(str(tmp_path), epochs=1, train_per_task=50, eval_per_task=5)
  assert modes(built.root) == {"dirs": {0o755}, "files": {0o644}}
  os.remove(os.path.join(built.root, "manifest.json"))  # stale: rebuilt in place
  data.ensure_demo_data(str(tmp_path), epochs=1, train_per_task=50, eval_per_task=5)
  os.remove(os.path.join(built.root, "manifest.json"))
  with open(os.path.join(built.root, "mine.txt"), "w") as f:
    f.write("not the cache's")
  with pytest.raises(FileExistsError, match=r"it holds \['mine.txt'\]"):
    data.ensure_demo_data(str(tmp_path), epochs=1, train_per_task=50, eval_per_task=5)
  with open(os.path.join(built.root, "mine.txt")) as f:
    assert f.read() == "not the cache's"


def _answer(task, inst):
  if task == "sort":
    return "".join(sorted(inst.split()[1]))
  if task == "bool":
    py = inst.replace("T", " True ").replace("F", " False ").replace("&", " and ")
    return "TF"[not eval(py.replace("|", " or ").replace("!", " not "))]
  return str(eval(inst))[::-1] if task in ("add", "mul") else str(eval(inst))


def test_demo_answers_are_right_and_eval_is_held_out(demo_data):
  train, evals = demo.generate(0, 300, 20)
  assert evals == demo_data.eval_examples
  assert {r["task"] for r in evals} == set(demo.TASKS)
  for r in train + evals:
    assert r["response"] == _answer(r["task"], r["instruction"]), r
  assert not {r["instruction"] for r in train} & {r["instruction"] for r in evals}
  tok = demo_data.tokenizer()
  assert tok.vocab_size == 256 and tok.tokenizer_vocab_size <= 256
  s = data.open_sampled(demo_data.train_dir, vocab_size=tok.vocab_size, max_seq_len=256)
  ex = s.examples(0)
  texts = {tok.decode(s.tokens[a:a + n]) for a, n in zip(ex.inst_start, ex.inst_len)}
  assert texts == {"<|im_start|><|quad_end|>" + r["instruction"] + "<|im_end|>" for r in train}
  assert int(ex.lengths.max()) < 40  # small enough for a CPU model at seq 256


def test_plan_cache_is_reused_keyed_and_recomputed_when_corrupt(demo_data, tmp_path,
                                                               monkeypatch, caplog):
  s = data.open_sampled(demo_data.train_dir)
  cache = str(tmp_path / "plans")
  first = data.Pipeline(s, rows=4, row_len=128, seed=3, plan_cache=cache)
  want = [first.plan(e) for e in range(3)]
  files = sorted(os.listdir(cache))
  assert len(files) == 3 and all(f.endswith(".npz") for f in files)

  def no_planning(*a, **k):
    raise AssertionError("planned although cached")

  monkeypatch.setattr(multipack, "plan_epoch", no_planning)
  again = data.Pipeline(s, rows=4, row_len=128, seed=3, plan_cache=cache)
  for e in range(3):
    np.testing.assert_array_equal(again.plan(e).examples, want[e].examples)
    np.testing.assert_array_equal(again.plan(e).row_starts, want[e].row_starts)
  with pytest.raises(AssertionError, match="planned although cached"):
    data.Pipeline(s, rows=4, row_len=128, seed=4, plan_cache=cache).plan(0)  # another key
  monkeypatch.undo()
  with open(os.path.join(cache, files[0]), "wb") as f:
    f.write(b"garbage")
  fresh = data.Pipeline(s, rows=4, row_len=128, seed=3, plan_cache=cache)
  with caplog.at_level("WARNING"):
    plans = [fresh.plan(e) for e in range(3)]
  assert "recomputing" in caplog.text
  assert all(np.array_equal(p.examples, w.examples) for p, w in zip(plans, want))
