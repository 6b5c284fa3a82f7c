"""Data at scale: prepare_data speed and memory, the epoch plan, pipeline throughput.

    python benchmarks/data.py                                  # everything
    python benchmarks/data.py --only=prepare,plan --baseline_root=/path/to/other/checkout

- prepare: `experiments/prepare_data.py` (a subprocess, the demo's character tokenizer) on a
  generated JSONL corpus at each of --corpus_mb: MB/s, CPU seconds (all processes: on a
  shared machine the load-independent figure), peak RSS of the main process and peak PSS
  summed over it and its workers (sampled every 20 ms). Beside it, in the same run, the
  floor: reading the file plus the `tokenizers` batch encoder alone over every row's texts
  on --workers threads (no JSON, no ids to Python, no writing), which no prepare_data with
  this tokenizer can beat. --repeats runs every code that many times, interleaved, and keeps
  each one's fastest run (the machine is shared: the least disturbed run is the figure).
- plan: seconds and MiB (peak RSS growth; RSS still held after) of one epoch's multipack plan
  for --plan_examples examples at 64 rows x 4,096 tokens, in a fresh subprocess (numba's
  compile-or-load time is printed apart).
- index: MiB of RSS that opening a sampled directory of --plan_examples examples and planning
  its epoch add (64 rows x 4,096 tokens), in a fresh subprocess; the index stays memory-mapped
  and is read in chunks, so it is not held.
- pipeline: batches/s and tokens/s of `hrm_jax.data.Pipeline` on the demo data (8 x 256) and
  a synthetic directory (16 x 4096), and the demo model's training step for the ratio.
- bucket: a training step's wait for its batch when the data is in a bucket (local servers:
  moto's S3 and the GCS emulator, started here as the tests start them) against local disk,
  with the synthetic directory (16 x 4,096 tokens a batch): each step takes its batch, then
  sleeps each of --step_ms as a device step would (the GIL free for the read-ahead threads).
  Rounds interleave local and bucket, medians reported, with the raw batches/s without the
  sleep (a store slower than one batch a step cannot be hidden by any read-ahead).
  The load average is printed; above 1.5 the figures measure the contention.
With --baseline_root (a checkout) or --baseline_commit (a commit of this repository, exported
with `git archive` to a temporary folder), prepare and plan also run on that code in the same
run, side by side with the ratio: b001db2 is the code before the streaming prepare and the
compact plan (its hrm_jax/data/prepare.py is that of 7e79fb9^, the commit before the
streaming prepare landed).

    python benchmarks/data.py --only=prepare --baseline_commit=b001db2 --corpus_mb=74,111 \
        --baseline_max_mb=120
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import numpy as np

from hrm_jax import cli, data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_ONLY = flags.DEFINE_list("only", ["prepare", "plan", "index", "pipeline", "bucket"],
                          "sections to run")
_STEP_MS = flags.DEFINE_list("step_ms", ["100", "300"], "bucket: simulated device steps (ms)")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "bucket: interleaved rounds per store")
_BATCHES = flags.DEFINE_integer("batches", 200, "batches timed per configuration")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "pipeline prefetch (threads)")
_MODEL = flags.DEFINE_bool("model", True, "also time the demo model's training step")
_CORPUS_MB = flags.DEFINE_list("corpus_mb", ["18.5", "74"], "generated JSONL sizes (MB); 74 MB "
                               "is ~200k rows, ~63M tokens")
_WORKERS = flags.DEFINE_integer("workers", 2, "prepare_data --workers")
_PLAN_EXAMPLES = flags.DEFINE_list("plan_examples", ["1000000", "4000000"], "plan sizes")
_BASELINE = flags.DEFINE_string("baseline_root", None, "another checkout to run side by side")
_BASELINE_COMMIT = flags.DEFINE_string("baseline_commit", None, "a commit of this repository to "
                                       "run side by side (exported to a temporary folder)")
_REPEATS = flags.DEFINE_integer("repeats", 1, "prepare: runs per code and size, interleaved; "
                                "the fastest is reported", lower_bound=1)
_BASELINE_MB = flags.DEFINE_float("baseline_max_mb", 20.0, "largest corpus the baseline gets "
                                  "(the old prepare_data held ~100 bytes per token)")


# --- prepare_data ----------------------------------------------------------------------------

def write_corpus(path: str, megabytes: float, seed: int = 0) -> int:
  """SFT-like JSONL of printable ASCII (a few non-ASCII characters become <unk>): instruction
  10-400 and response 2-600 characters; returns its size in bytes."""
  rng = np.random.default_rng(seed)
  alphabet = np.frombuffer(bytes(range(32, 127)) + b"\n\n", np.uint8)
  target = int(megabytes * 1e6)
  size = 0
  conds = ["direct", "cot", "synth,cot", "noisy"]
  with open(path, "w", encoding="utf-8") as f:
    while size < target:
      block = rng.choice(alphabet, 1 << 20)
      text = block.tobytes().decode("ascii")
      pos = 0
      lines = []
      for _ in range(1500):
        ni, nr = int(rng.integers(10, 400)), int(rng.integers(2, 600))
        inst, resp = text[pos:pos + ni], text[pos + ni:pos + ni + nr]
        pos = (pos + ni + nr) % ((1 << 20) - 1000)
        if rng.random() < 0.01:
          inst += "\u00e9\u4e2d"
        lines.append(json.dumps({"instruction": inst, "response": resp,
                                 "condition": conds[int(rng.integers(len(conds)))]}) + "\n")
      chunk = "".join(lines)
      f.write(chunk)
      size += len(chunk.encode())
  return os.path.getsize(path)


def _memory_tree(pid: int) -> tuple[int, int]:
  """(RSS of pid, PSS summed over pid and its descendants) in bytes, from /proc. PSS splits
  pages that forked workers share with their parent, so the sum is the tree's real use."""
  def field(p: int, name: str, file: str) -> int:
    try:
      with open(f"/proc/{p}/{file}") as f:
        for line in f:
          if line.startswith(name):
            return int(line.split()[1]) * 1024
    except OSError:
      pass
    return 0

  def children(p: int) -> list[int]:
    out = []
    try:
      for task in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{task}/children") as f:
          out += [int(c) for c in f.read().split()]
    except OSError:
      pass
    return out

  own, total, todo = field(pid, "VmRSS:", "status"), 0, [pid]
  while todo:
    p = todo.pop()
    total += field(p, "Pss:", "smaps_rollup")
    todo += children(p)
  return own, total


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, int, str]:
  """(wall seconds, CPU seconds of the process and its children, peak RSS of the process,
  peak PSS of its tree, stdout) of a subprocess."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  peak = [0, 0]

  def poll():
    while proc.poll() is None:
      own, tree = _memory_tree(proc.pid)
      peak[0], peak[1] = max(peak[0], own), max(peak[1], tree)
      time.sleep(0.02)

  poller = threading.Thread(target=poll, daemon=True)
  poller.start()
  out, err = proc.communicate()
  secs = time.perf_counter() - t0
  poller.join()
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
  return secs, cpu, peak[0], peak[1], out


_FLOOR_SNIPPET = """
import json, os, sys, time
path, tok_json = sys.argv[1], sys.argv[2]
import tokenizers
tok = tokenizers.Tokenizer.from_file(tok_json)
tok.encode_special_tokens = True  # as hrm_jax.tokenizer.Tokenizer encodes text
t = time.perf_counter()
with open(path, "rb") as f:
  raw = f.read()
read = time.perf_counter() - t
t = time.perf_counter()
batches, texts, size = [], [], 0
for line in raw.split(b"\\n"):
  if line.strip():
    row = json.loads(line)
    texts += [row["instruction"], row["response"]]
    size += len(line)
    if size >= 1 << 20:
      batches.append(texts)
      texts, size = [], 0
batches.append(texts)
del raw
parse = time.perf_counter() - t
encode = ids = tokens = 0
for batch in batches:  # ~1 MB of input per call, as prepare_data's chunks
  t = time.perf_counter()
  encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
  encode += time.perf_counter() - t
  t = time.perf_counter()
  tokens += sum(len(e.ids) for e in encodings)
  del encodings
  ids += time.perf_counter() - t
print(json.dumps({"read": read, "parse": parse, "encode": encode, "ids": ids, "tokens": tokens}))
"""


def baseline_root(tmp: str) -> str | None:
  """--baseline_root, or --baseline_commit exported into `tmp`."""
  if _BASELINE_COMMIT.value is None:
    return _BASELINE.value
  root = os.path.join(tmp, "baseline")
  os.makedirs(root)
  archive = subprocess.run(["git", "-C", ROOT, "archive", _BASELINE_COMMIT.value],
                           capture_output=True, check=False)
  if archive.returncode:
    raise app.UsageError(f"--baseline_commit={_BASELINE_COMMIT.value}: git archive failed: "
                         f"{archive.stderr.decode()[-500:]}")
  subprocess.run(["tar", "-x", "-C", root], input=archive.stdout, check=True)
  return root


def prepare_rows(tmp: str, baseline: str | None) -> tuple[list[tuple], list[tuple]]:
  """([(code, bytes, tokens, wall s, CPU s, peak RSS, peak PSS)] fastest per code and size,
  [(bytes, floor record)])."""
  tok = os.path.join(tmp, "tokenizer.json")
  data.demo.build_tokenizer().save(tok)
  roots = [("baseline", baseline)] * bool(baseline) + [("this", ROOT), ("floor", ROOT)]
  rows, floors = [], []
  for mb in map(float, _CORPUS_MB.value):
    corpus = os.path.join(tmp, f"corpus_{mb}.jsonl")
    size = write_corpus(corpus, mb)
    best: dict[str, tuple] = {}
    for _ in range(_REPEATS.value):
      for name, root in roots:
        if name == "baseline" and mb > _BASELINE_MB.value:
          continue
        env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
        if name == "floor":  # the batch encoder's own threads, as many as the workers
          env.update(TOKENIZERS_PARALLELISM="true", RAYON_NUM_THREADS=str(_WORKERS.value))
          secs, cpu, own, tree, out = run_measured(
              [sys.executable, "-c", _FLOOR_SNIPPET, corpus, tok], env)
          r = json.loads(out.strip().splitlines()[-1])
          row = (name, size, r["tokens"], r["read"] + r["encode"], cpu, own, tree, r)
        else:
          out = os.path.join(tmp, f"out_{name}_{mb}")
          flags_ = [f"--jsonl={corpus}", f"--tokenizer={tok}", f"--out={out}", "--epochs=1",
                    "--max_seq_len=4096"]
          if name == "this":
            flags_.append(f"--workers={_WORKERS.value}")
          secs, cpu, own, tree, _ = run_measured(
              [sys.executable, os.path.join(root, "experiments", "prepare_data.py"), *flags_],
              env)
          with open(os.path.join(out, "metadata.json")) as f:
            tokens = int(json.load(f)["total_length"])
          subprocess.run(["rm", "-rf", out], check=True)
          row = (name, size, tokens, secs, cpu, own, tree, None)
        print(f"  {mb:g} MB {name}: {row[3]:.1f} s", file=sys.stderr, flush=True)
        if name not in best or row[3] < best[name][3]:
          best[name] = row
    rows += [r[:7] for r in best.values() if r[0] != "floor"]
    floors.append((size, best["floor"]))
    os.remove(corpus)
  return rows, floors


# --- epoch plan ----------------------------------------------------------------------------

_PLAN_SNIPPET = """
import json, resource, sys, time
import numpy as np
def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * 4096
n, rows, row_len = int(sys.argv[1]), 64, 4096
rng = np.random.default_rng(0)
lengths = np.clip(rng.lognormal(np.log(600), 1.0, n), 3, row_len).astype(np.int64)
order = rng.permutation(n)
from hrm_jax.data import multipack
t = time.perf_counter()
compact = hasattr(multipack, "plan_epoch")
if compact:
  multipack.plan_epoch(lengths[:1000], row_len, rows)  # numba: compile or load the cache
warm = time.perf_counter() - t
base = rss()
t = time.perf_counter()
if compact:
  plan = multipack.plan_epoch(lengths, row_len, rows).map(order)
  steps = len(plan)
else:  # the former Pipeline.plan: lists of index arrays per row
  plan = tuple([order[r] for r in b] for b in multipack.Multipack(lengths, row_len, rows).plan())
  steps = len(plan)
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"secs": secs, "warm": warm, "steps": steps,
                  "peak_mib": max(0, peak - base) / 2**20, "held_mib": (rss() - base) / 2**20}))
"""


def plan_rows(baseline: str | None) -> list[tuple]:
  roots = [("this", ROOT)] + ([("baseline", baseline)] if baseline else [])
  rows = []
  for n in map(int, _PLAN_EXAMPLES.value):
    for name, root in roots:
      env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
      r = subprocess.run([sys.executable, "-c", _PLAN_SNIPPET, str(n)], env=env, cwd=root,
                         capture_output=True, text=True, check=True)
      rows.append((name, n, json.loads(r.stdout.strip().splitlines()[-1])))
  return rows


_INDEX_SNIPPET = """
import json, sys
import numpy as np
from hrm_jax import data
from hrm_jax.data import multipack
def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * 4096
def hwm():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
multipack.plan_epoch(np.full(1000, 5, np.int64), 4096, 64)  # numba: compile or load the cache
base = rss()
with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) restarts from here
  f.write("5")
sampled = data.open_sampled(sys.argv[1])
opened = rss()
data.Pipeline(sampled, rows=64, row_len=4096, seed=0).plan(0)
peak = hwm()
print(json.dumps({"open_mib": (opened - base) / 2**20, "held_mib": (rss() - base) / 2**20,
                  "peak_mib": max(0, peak - base) / 2**20}))
"""


def index_rows(tmp: str) -> list[tuple[int, dict]]:
  """(examples, RSS figures) of opening a directory and planning its epoch."""
  rows = []
  for n in map(int, _PLAN_EXAMPLES.value):
    rng = np.random.default_rng(0)
    inst, resp = rng.integers(1, 12, n), rng.integers(2, 12, n)
    starts = np.concatenate([[0], np.cumsum(inst + resp)[:-1]])
    tokens = rng.integers(4, 250, int((inst + resp).sum())).astype(np.uint16)
    folder = os.path.join(tmp, f"index_{n}")
    data.write_sampled(folder, tokens=tokens, examples=data.Examples(starts, inst,
                                                                     starts + inst, resp),
                       tokenizer_info={"tokenizer_path": "", "boq": "<q>", "eoq": "</q>",
                                       "eoa": "</a>", "condition_mapping": {},
                                       "vocab_size": 256}, max_seq_len=64, epochs=1)
    del tokens, starts, inst, resp
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _INDEX_SNIPPET, folder], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True)
    rows.append((n, json.loads(r.stdout.strip().splitlines()[-1])))
  return rows


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
  elapsed = time.perf_counter() - t
  it.close()
  time.sleep(1.0)  # the reads in flight finish (a bucket's server is stopped after)
  return elapsed, plan, n


def bucket_wait(path: str, steps: int, step_s: float) -> tuple[float, float]:
  """(median seconds a step waits for its batch, median seconds per whole step) over `steps`
  steps after the first 4 (read-ahead filling), each step sleeping `step_s` after its batch."""
  pipe = data.Pipeline(data.open_sampled(path), rows=16, row_len=4096,
                       prefetch=_PREFETCH.value)
  it = pipe.iterator()
  waits, whole = [], []
  for i in range(steps + 4):
    t = time.perf_counter()
    next(it)
    got = time.perf_counter()
    time.sleep(step_s)
    if i >= 4:
      waits.append(got - t)
      whole.append(time.perf_counter() - t)
  it.close()
  time.sleep(1.0)  # the reads in flight finish while the server is up
  return float(np.median(waits)), float(np.median(whole))


def bucket_rows(tmp: str, steps_s: list[float]) -> list[tuple]:
  """Per simulated step and store (local, s3, gcs): median wait ms, median step ms, and
  batches/s without a step."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))  # the servers the tests start
  import object_stores  # pylint: disable=g-import-not-at-top
  from hrm_jax import storage  # pylint: disable=g-import-not-at-top
  synth = synthetic_dir(tmp)
  paths = {"local disk": synth}
  os.environ[storage.CACHE_ENV] = os.path.join(tmp, "cache")  # the index copies go with tmp
  with contextlib.ExitStack() as stack:
    for kind in ("s3", "gcs"):
      url, env = stack.enter_context(object_stores.server(kind, "bench", tmp))
      os.environ.update(env)
      storage.configure.cache_clear()
      storage.configure()
      storage.upload_tree(synth, f"{url}/synthetic", last=["metadata.json"])
      paths[f"{kind} (local server)"] = f"{url}/synthetic"
    out = []
    for step_s in steps_s:
      results: dict[str, list] = {name: [] for name in paths}
      for r in range(_ROUNDS.value):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
          wait, step = bucket_wait(paths[name], 30, step_s)
          secs, _, n = time_pipeline(paths[name], 16, 4096, 30)
          results[name].append((wait, step, n / secs))
      out += [(step_s, name, *np.median(np.array(v), axis=0)) for name, v in results.items()]
  return out


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


def print_prepare(rows: list[tuple], floors: list[tuple]) -> None:
  print(f"## prepare_data (--workers={_WORKERS.value} for this checkout; demo character "
        f"tokenizer; fastest of {_REPEATS.value} run(s) each)\n")
  print("| code | input MB | tokens | wall s | MB/s | CPU s (all processes) | CPU s per MB | "
        "peak RSS main GiB | peak PSS all processes GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, size, tokens, secs, cpu, own, tree in rows:
    print(f"| {name} | {size / 1e6:,.1f} | {tokens:,} | {secs:.1f} | {size / 1e6 / secs:.2f} | "
          f"{cpu:.1f} | {cpu / (size / 1e6):.2f} | {own / 2**30:.2f} | {tree / 2**30:.2f} |")
  print(f"\nFloor: read the file, then the batch encoder (`encode_batch_fast`, "
        f"{_WORKERS.value} Rust threads, ~1 MB of input per call) on every row's texts; JSON "
        "parsing and ids to Python (1 thread) shown apart, not in the floor.\n")
  print("| input MB | read s | encode s | floor MB/s | (parse s) | (ids s) | CPU s | "
        "peak RSS GiB |")
  print("|---|---|---|---|---|---|---|---|")
  for size, (_, _, _, secs, cpu, own, _, r) in floors:
    print(f"| {size / 1e6:,.1f} | {r['read']:.1f} | {r['encode']:.1f} | {size / 1e6 / secs:.2f} "
          f"| {r['parse']:.1f} | {r['ids']:.1f} | {cpu:.1f} | {own / 2**30:.2f} |")
  by = {(r[0], r[1]): r for r in rows}
  floor = {size: r for size, r in floors}
  print()
  for (name, size), r in by.items():
    if name != "this":
      continue
    base, line = by.get(("baseline", size)), f"{size / 1e6:.1f} MB:"
    if base:
      line += (f" MB/s this / baseline = {base[3] / r[3]:.2f}x; CPU s baseline / this = "
               f"{base[4] / r[4]:.2f}x; peak PSS baseline / this = {base[6] / r[6]:.1f}x;")
      line += f" floor / baseline = {base[3] / floor[size][3]:.2f}x;"
    print(line + f" this / floor = {floor[size][3] / r[3]:.2f} of the floor's MB/s")


def print_plan(rows: list[tuple]) -> None:
  print("\n## epoch plan (64 rows x 4,096 tokens, lognormal lengths median 600)\n")
  print("| code | examples | steps | seconds | numba compile/load s | peak MiB | held MiB |")
  print("|---|---|---|---|---|---|---|")
  for name, n, r in rows:
    print(f"| {name} | {n:,} | {r['steps']:,} | {r['secs']:.2f} | {r['warm']:.2f} | "
          f"{r['peak_mib']:.0f} | {r['held_mib']:.0f} |")
  by = {(name, n): r for name, n, r in rows}
  for (name, n), r in by.items():
    base = by.get(("baseline", n))
    if name == "this" and base:
      print(f"\n{n:,} examples: baseline / this = {base['secs'] / r['secs']:.0f}x faster, "
            f"peak memory {base['peak_mib'] / max(r['peak_mib'], 1):.0f}x less")


def main(_):
  with tempfile.TemporaryDirectory() as tmp:
    baseline = baseline_root(tmp)
    if "prepare" in _ONLY.value:
      print_prepare(*prepare_rows(tmp, baseline))
    if "plan" in _ONLY.value:
      print_plan(plan_rows(baseline))
    if "index" in _ONLY.value:
      print("\n## open + plan: RSS added (goal < 150 MiB at 4M examples)\n")
      print("| examples | after open MiB | held after plan MiB | peak MiB |")
      print("|---|---|---|---|")
      for n, r in index_rows(tmp):
        print(f"| {n:,} | {r['open_mib']:.0f} | {r['held_mib']:.0f} | {r['peak_mib']:.0f} |")
    if "bucket" in _ONLY.value:
      load = os.getloadavg()[0]
      print(f"\n## data in a bucket vs local disk (16 x 4096 tokens; read-ahead "
            f"{data.pipeline.BUCKET_READ_AHEAD} batches in a bucket, {_PREFETCH.value} local; "
            f"load average {load:.2f}"
            + (": ABOVE 1.5, figures measure the contention" if load > 1.5 else "") + ")\n")
      print("| step ms | data | wait for batch ms (median) | step ms (median) | step vs local "
            "| batches/s, no step |")
      print("|---|---|---|---|---|---|")
      base = {}
      for step_s, name, wait, step, rate in bucket_rows(tmp, [float(v) / 1e3
                                                                for v in _STEP_MS.value]):
        base.setdefault(step_s, step)
        print(f"| {1e3 * step_s:g} | {name} | {1e3 * wait:.2f} | {1e3 * step:.1f} | "
              f"{step / base[step_s]:.3f}x | {rate:.1f} |", flush=True)
      print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
  if "pipeline" not in _ONLY.value:
    return
  print("\n## pipeline\n")
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
  cli.run(main)
