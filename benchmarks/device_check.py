"""One accelerator check in a fixed time budget: are the attention kernels right on this
device, how fast are they, and what do the hrm1b-shaped train step and decoding reach.

    pip install -r requirements-gpu.txt          # jax 0.10.2 with its CUDA 13 plugin
    python benchmarks/device_check.py --workdir=runs/device_check    # <= 8 minutes on one H200
    python benchmarks/device_check.py --smoke    # CPU: interpreted kernels, tiny shapes

Phases, in order (each may start work until its share of --budget_s is used up; what did
not fit is recorded as skipped):
  kernels    pallas_gpu / pallas_tpu (whichever matches the backend; pallas_gpu interpreted
             on CPU) and chunked against a float32 dense reference at HIGHEST precision:
             outputs and dq, dk, dv at S = 1024 and 4096, bfloat16 and float32, rows packed
             with PrefixLM examples. An impl passes when its error (max |x - ref| / max |ref|)
             is at most 2x the error of `dense` in the same dtype plus a floor (FLOOR).
  attention  forward + backward time of pallas, chunked and dense at S = 4096 and 12,288,
             bfloat16 (`hrm_jax.benchmarking.attention_fwd_bwd`, as benchmarks/attention.py);
             an out-of-memory compile or run is recorded as OOM.
  step       the train step of experiments/configs/hrm1b.py (width, heads, cycles, bf16,
             remat, loss_chunk, Adam-atan2, EMA; bp_steps 5) with --layers_per_stack layers
             per stack, one 12,288-token row per device, per attention impl: step time,
             tokens/s, MFU against the device's bf16 peak (hrm_jax.train.metrics), memory.
  decode     hrm_jax.generate on the same model: decode tokens/s at batch 1, 8 and 64
             (256-token prompts, per-step time from two generation lengths sharing one
             compiled program) and the time to prefill one 1,024-token prompt.

Writes <workdir>/device_check.json and <workdir>/device_check.md after every measurement (a
run cut short keeps what it measured), prints a progress line per item, and exits 1 when a kernel
check fails, 2 when the budget ran out inside a measurement (0 otherwise).
"""

from __future__ import annotations

import os
import sys
import time

_STARTED = time.monotonic()  # the budget counts from here: imports and device start-up too
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import dataclasses  # noqa: E402
import datetime  # noqa: E402
import threading  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hrm_jax  # noqa: E402
from experiments import configs  # noqa: E402
from hrm_jax import atomic, benchmarking, cli  # noqa: E402
from hrm_jax import generation as decode_lib  # noqa: E402
from hrm_jax import flops as flops_lib  # noqa: E402
from hrm_jax import sharding as sharding_lib  # noqa: E402
from hrm_jax.train import loop  # noqa: E402
from hrm_jax.train import metrics as metrics_lib  # noqa: E402
from hrm_jax.train import state as state_lib  # noqa: E402
from hrm_jax.train.step import jit_train_step, optimizer  # noqa: E402

PHASES = ("kernels", "attention", "step", "decode")
# Share of the budget each phase may start work in (cumulative over the phases run).
PHASE_WEIGHTS = {"kernels": 0.2, "attention": 0.2, "step": 0.35, "decode": 0.25}
# Error floor of the kernel check: 8 units in the last place of the narrowest arithmetic a
# kernel may use for that dtype (tf32 for float32 dots on GPUs, bfloat16).
FLOOR = {"float32": 8 * 2.0**-11, "bfloat16": 8 * 2.0**-8}
JSON_NAME, MD_NAME = "device_check.json", "device_check.md"
GIB = 2**30

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for device_check.json and .md "
                               "(created; default runs/device_check-<UTC time>). Existing "
                               "reports in it are never replaced.")
_OUT = flags.DEFINE_string("out", None, "Deprecated alias of --workdir (warns; removed in the "
                           "next release).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes and interpreted Pallas kernels: the "
                           "whole script in seconds on CPU (CI).")
_BUDGET = flags.DEFINE_float("budget_s", 480.0, "Total wall-clock budget in seconds.")
_PHASES = flags.DEFINE_list("phases", list(PHASES), f"Phases to run, of {PHASES}.")
_LAYERS = flags.DEFINE_integer("layers_per_stack", 0, "Layers per stack of the step and "
                               "decode model (0: 4, hrm1b has 16; 1 with --smoke).")
_INJECT = flags.DEFINE_float("inject_error", 0.0, "Add this multiple of max |reference| to "
                             "every output and gradient of the checked kernels: shows that "
                             "the check fails a wrong kernel (the tests use it).")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Shapes and repeats of one run; the attention heads and head_dim are the model's."""

  check_seqs: tuple[int, ...]  # kernel check row lengths
  check_dtypes: tuple[str, ...]
  check_batch: int
  time_seqs: tuple[int, ...]  # forward + backward timing row lengths (batch 1, bfloat16)
  max_example: int  # longest packed example
  repeats: int  # timed runs per attention variant and decode length
  model: dict  # overrides of hrm1b's model section
  layers_per_stack: int
  vocab_size: int
  row_len: int
  steps: int  # timed train steps
  step_impls: tuple[str, ...]  # "pallas" is the backend's Pallas kernel
  decode_batches: tuple[int, ...]
  decode_prompt: int
  new_tokens: int
  prefill_len: int


# A check row of the timed length and dtype reuses the timing's compiled program.
FULL = Plan(check_seqs=(1024, 4096), check_dtypes=("bfloat16", "float32"), check_batch=1,
            time_seqs=(4096, 12288), max_example=2048, repeats=5, model={}, layers_per_stack=4,
            vocab_size=65536, row_len=12288, steps=3, step_impls=("pallas", "chunked", "dense"),
            decode_batches=(1, 8, 64), decode_prompt=256, new_tokens=128, prefill_len=1024)
# Every code path once, with as few compilations as that allows (compiling dominates on CPU;
# the prefill shares the batch-1 decode program).
SMOKE = Plan(check_seqs=(64,), check_dtypes=("bfloat16",), check_batch=1, time_seqs=(64,),
             max_example=48, repeats=10, model=dict(hidden_size=32, num_heads=2,
                                                   attention_chunk=16),
             layers_per_stack=1, vocab_size=256, row_len=64, steps=2, step_impls=("dense",),
             decode_batches=(1,), decode_prompt=16, new_tokens=16, prefill_len=16)


# --- bookkeeping -------------------------------------------------------------------------

class Budget:
  """Wall clock since `start`; each phase may start work until its cumulative share ends."""

  def __init__(self, seconds: float, phases: list[str], start: float):
    self.seconds = seconds
    self.start = start
    total = sum(PHASE_WEIGHTS[p] for p in phases)
    self.ends, acc = {}, 0.0
    for p in phases:
      acc += PHASE_WEIGHTS[p] / total
      self.ends[p] = acc * seconds

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def open(self, phase: str) -> bool:
    return self.elapsed() < self.ends[phase]


class Report:
  """The run's results; every change is written to JSON and Markdown at once (atomically)."""

  def __init__(self, out: str, meta: dict[str, Any], budget: Budget):
    self.json_path, self.md_path = os.path.join(out, JSON_NAME), os.path.join(out, MD_NAME)
    self.data: dict[str, Any] = {**meta, "phases": {}, "failures": [], "elapsed_s": 0.0}
    self.budget = budget
    self.phase = "start"
    self._lock = threading.RLock()  # the watchdog thread may save while main is adding

  def progress(self, line: str) -> None:
    print(f"[{self.budget.elapsed():6.1f}s] {self.phase}: {line}", flush=True)

  def add(self, phase: str, row: dict[str, Any]) -> None:
    with self._lock:
      self.data["phases"].setdefault(phase, []).append(row)
      self.save()

  def fail(self, why: str) -> None:
    self.progress(f"FAIL {why}")
    with self._lock:
      self.data["failures"].append(why)
      self.save()

  def save(self) -> None:
    with self._lock:
      self.data["elapsed_s"] = round(self.budget.elapsed(), 1)
      self.data["passed"] = not self.data["failures"]
      self.data["fastest_step_impl"] = fastest_step_impl(self.data["phases"])
      atomic.write_json(self.json_path, self.data)
      atomic.write_text(self.md_path, markdown(self.data))

  def out_of_time(self) -> None:
    """The budget ran out inside a measurement: keep what was measured and stop now."""
    with self._lock:
      self.data["incomplete"] = (f"the {self.budget.seconds:.0f} s budget ran out during "
                                 f"phase {self.phase}")
      self.progress(self.data["incomplete"])
      self.save()
      os._exit(1 if self.data["failures"] else 2)


def fastest_step_impl(phases: dict[str, list[dict]]) -> Optional[str]:
  """The attention impl of the fastest measured train step among impls with no failed
  kernel check row (dense is the reference)."""
  failed = {r.get("impl") for r in phases.get("kernels", []) if r["status"] not in
            ("ok", "baseline")}
  timed = [r for r in phases.get("step", []) if "step_s" in r and r["impl"] not in failed]
  return min(timed, key=lambda r: r["step_s"])["impl"] if timed else None


def error_status(e: Exception) -> str:
  """'OOM' for an out-of-memory compile or run, else the error's first line."""
  text = str(e)
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return "OOM"
  return f"error: {type(e).__name__}: {text.strip().splitlines()[0][:200] if text else ''}"


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
  """max |got - ref| / max |ref| in float64; inf when got is not finite."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  if not np.all(np.isfinite(got)):
    return float("inf")
  return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def tolerance(dense_error: float, dtype: str) -> float:
  """What a kernel may err: twice the dense kernel's own error in that dtype, plus FLOOR."""
  return 2 * dense_error + FLOOR[dtype]


def memory_of(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"args_gib": m.argument_size_in_bytes / GIB, "temp_gib": m.temp_size_in_bytes / GIB,
          "total_gib": total / GIB}


def peak_gib() -> Optional[float]:
  """The process's device memory high-water mark so far (None where not reported)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats["peak_bytes_in_use"] / GIB if "peak_bytes_in_use" in stats else None


def pallas_impl() -> str:
  """The backend's Pallas kernel; on CPU the Triton one, interpreted."""
  return "pallas_tpu" if jax.default_backend() == "tpu" else "pallas_gpu"


class Programs:
  """Compiled attention forward + backward programs by (impl, argument shapes and dtypes),
  with their compile seconds, shared by the kernel check and the timing."""

  def __init__(self, chunk: int):
    self.chunk = chunk
    self._compiled: dict[tuple, tuple[Any, float]] = {}

  def get(self, impl: str, args: tuple) -> tuple[Any, float]:
    key = (impl, tuple((a.shape, a.dtype) for a in args))
    if key not in self._compiled:
      start = time.perf_counter()
      compiled = benchmarking.attention_fwd_bwd(impl, self.chunk).lower(*args).compile()
      self._compiled[key] = compiled, round(time.perf_counter() - start, 1)
    return self._compiled[key]


def attention_inputs(plan: Plan, mc: hrm_jax.ModelConfig, batch: int, seq: int,
                     dtype: str) -> tuple:
  """(q, k, v, w, segment_ids, prefix_mask) of packed rows; the same for a given seq."""
  rng = np.random.default_rng(seq)
  seg, prefix = benchmarking.packed_rows(rng, batch, seq, plan.max_example)
  qkvw = benchmarking.random_qkv(rng, (batch, seq, mc.num_heads, mc.head_dim),
                                 jnp.dtype(dtype))
  return (*qkvw, jnp.asarray(seg), jnp.asarray(prefix))


def model_setup(plan: Plan, impl: str, rows: int):
  """(training config, ModelConfig, Execution): hrm1b with the plan's layers, width
  overrides, row."""
  cfg = configs.get("hrm1b")
  # remat full, fixed: the check compares attention impls on one program, not remat plans
  # (hrm1b's auto searches those; benchmarks/aot_compile.py --target=local runs it).
  cfg.model.update(n_layers=2 * plan.layers_per_stack, attention_impl=impl,
                   remat_policy="full", remat_scope="layer", **plan.model)
  cfg.data.rows, cfg.data.row_len = rows, plan.row_len
  return cfg, loop.model_config_from(cfg, plan.vocab_size), loop.execution_from(cfg)


# --- phases --------------------------------------------------------------------------------

def check_kernels(plan: Plan, report: Report, mc: hrm_jax.ModelConfig, programs: Programs,
                  inject: float) -> None:
  impls = ["dense", pallas_impl(), "chunked"]
  reference = benchmarking.attention_fwd_bwd("dense", programs.chunk)
  for seq in plan.check_seqs:
    for dtype in plan.check_dtypes:
      if not report.budget.open("kernels"):
        report.add("kernels", {"seq": seq, "dtype": dtype, "status": "skipped (time budget)"})
        report.fail(f"kernel check S={seq} {dtype} did not fit the time budget")
        continue
      args = attention_inputs(plan, mc, plan.check_batch, seq, dtype)
      with jax.default_matmul_precision("highest"):
        ref_out, ref_grads = reference(*(x.astype(jnp.float32) for x in args[:4]), *args[4:])
      ref = [np.asarray(x) for x in (ref_out, *ref_grads)]
      errors = {}
      for impl in impls:
        row = {"seq": seq, "dtype": dtype, "impl": impl}
        try:
          compiled, _ = programs.get(impl, args)
          out, grads = compiled(*args)
          got = [np.asarray(x.astype(jnp.float32)) for x in (out, *grads)]
        except Exception as e:  # noqa: BLE001  (a kernel that does not run fails the check)
          report.add("kernels", {**row, "status": error_status(e)})
          report.fail(f"{impl} S={seq} {dtype}: {error_status(e)}")
          continue
        if impl != "dense":
          got = [g + inject * np.max(np.abs(r)) for g, r in zip(got, ref)]
        errors[impl] = {name: relative_error(g, r)
                        for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref)}
        row["error"] = errors[impl]
        if impl == "dense":
          row["status"] = "baseline"
        elif "dense" not in errors:
          row["status"] = "FAIL"
          report.fail(f"{impl} S={seq} {dtype}: no dense baseline to compare with")
        else:
          tol = {k: tolerance(errors["dense"][k], dtype) for k in errors[impl]}
          bad = [k for k in tol if not errors[impl][k] <= tol[k]]
          row.update(tolerance=tol, status="FAIL" if bad else "ok")
          if bad:
            report.fail(f"{impl} S={seq} {dtype}: " + ", ".join(
                f"{k} error {errors[impl][k]:.2e} > {tol[k]:.2e}" for k in bad))
        report.add("kernels", row)
        report.progress(f"S={seq} {dtype} {impl}: {row['status']} (" + ", ".join(
            f"{k} {v:.1e}" for k, v in errors[impl].items()) + ")")


def time_attention(plan: Plan, report: Report, mc: hrm_jax.ModelConfig,
                   programs: Programs) -> None:
  impls = [pallas_impl(), "chunked", "dense"]
  for seq in plan.time_seqs:
    args = attention_inputs(plan, mc, 1, seq, "bfloat16")
    runnable, rows = {}, {}
    for impl in impls:
      rows[impl] = {"seq": seq, "impl": impl, "dtype": "bfloat16"}
      if not report.budget.open("attention"):
        rows[impl]["status"] = "skipped (time budget)"
        continue
      try:
        compiled, compile_s = programs.get(impl, args)
        rows[impl].update(compile_s=compile_s, **memory_of(compiled))
        jax.block_until_ready(compiled(*args))
        runnable[impl] = lambda c=compiled: c(*args)
      except Exception as e:  # noqa: BLE001  (OOM at 12,288 is an expected outcome for dense)
        rows[impl]["status"] = error_status(e)
    if runnable:
      for impl, s in benchmarking.time_alternating(runnable, plan.repeats, warmup=False).items():
        rows[impl].update(ms=s * 1e3, status="ok")
    for impl in impls:
      report.add("attention", rows[impl])
      r = rows[impl]
      report.progress(f"S={seq} {impl}: " + (f"{r['ms']:.2f} ms fwd+bwd, {r['temp_gib']:.2f} "
                                              f"GiB temp" if "ms" in r else r["status"]))


def time_steps(plan: Plan, report: Report, peak_flops: float) -> None:
  n = jax.device_count()
  for impl in plan.step_impls:
    impl = pallas_impl() if impl == "pallas" else impl
    cfg, mc, ex = model_setup(plan, impl, n)
    row: dict[str, Any] = {"impl": impl, "layers_per_stack": mc.layers_per_stack,
                           "rows": cfg.data.rows, "row_len": plan.row_len}
    if not report.budget.open("step"):
      report.add("step", {**row, "status": "skipped (time budget)"})
      continue
    try:
      mesh = loop.make_mesh(cfg)
      tx, _ = optimizer(cfg.train, total_steps=10**6)
      model = hrm_jax.LanguageModel(mc, ex)
      shardings = state_lib.state_shardings(model, tx, mesh)
      bp = cfg.train.bp_max_steps
      step = jit_train_step(model, tx, cfg.train, shardings, mesh, bp)
      state = state_lib.init_state(model, tx, jax.random.PRNGKey(0), shardings)
      batch = jax.device_put(
          benchmarking.packed_batch(np.random.default_rng(0), cfg.data.rows, plan.row_len,
                                    mc.vocab_size, plan.max_example),
          sharding_lib.batch_sharding(mesh))
      compiled, compile_s, step_s, state, metrics = benchmarking.time_train_step(
          step, state, batch, plan.steps)
      row.update(compile_s=round(compile_s, 1), **memory_of(compiled))
      tokens = cfg.data.rows * plan.row_len
      flops = flops_lib.train_flops_per_token(mc, plan.row_len, bp) * tokens
      row.update(status="ok", step_s=step_s, tokens_per_s=tokens / step_s,
                 mfu=flops / step_s / (peak_flops * n), loss=float(metrics["loss"]),
                 peak_gib_so_far=peak_gib())
      del state, compiled
    except Exception as e:  # noqa: BLE001
      row["status"] = error_status(e)
    report.add("step", row)
    report.progress(f"{impl}: " + (f"{row['step_s'] * 1e3:.0f} ms/step, "
                                   f"{row['tokens_per_s']:.0f} tokens/s, MFU "
                                   f"{100 * row['mfu']:.1f}%" if "step_s" in row
                                   else row["status"]))


def time_decode(plan: Plan, report: Report) -> None:
  _, mc, ex = model_setup(plan, "chunked", 1)
  variables = hrm_jax.LanguageModel(mc, ex).init(jax.random.PRNGKey(0),
                                             state_lib.example_batch(1, 8))
  rng = np.random.default_rng(0)
  # Two lengths that share one compiled program (same bucket): their difference is decoding.
  bucket = decode_lib.bucket(plan.new_tokens)
  short = next(n for n in range(1, plan.new_tokens) if decode_lib.bucket(n) == bucket)
  gen = lambda prompts, n: lambda: decode_lib.generate(mc, variables, prompts, n, execution=ex)
  for b in plan.decode_batches:
    row: dict[str, Any] = {"batch": b, "prompt": plan.decode_prompt,
                           "new_tokens": plan.new_tokens}
    if not report.budget.open("decode"):
      report.add("decode", {**row, "status": "skipped (time budget)"})
      continue
    prompts = rng.integers(1, mc.vocab_size, (b, plan.decode_prompt)).tolist()
    try:
      start = time.perf_counter()
      gen(prompts, plan.new_tokens)()
      row["first_call_s"] = round(time.perf_counter() - start, 1)
      # The fastest of the repeats: the two lengths differ by a quarter of the bucket only.
      t = benchmarking.time_alternating({"long": gen(prompts, plan.new_tokens),
                                         "short": gen(prompts, short)}, plan.repeats,
                                        warmup=False, reduce=min)
      step_s = (t["long"] - t["short"]) / (plan.new_tokens - short)
      row["end_to_end_tokens_per_s"] = b * plan.new_tokens / t["long"]
      if step_s > 0:
        row.update(status="ok", ms_per_step=step_s * 1e3, decode_tokens_per_s=b / step_s)
      else:
        row["status"] = f"below timer noise ({plan.new_tokens} vs {short} tokens)"
    except Exception as e:  # noqa: BLE001
      row["status"] = error_status(e)
    report.add("decode", row)
    report.progress(f"batch {b}: " + (f"{row['decode_tokens_per_s']:.0f} tokens/s decoding, "
                                      f"{row['ms_per_step']:.2f} ms/step" if "ms_per_step" in row
                                      else row["status"]))
  row = {"batch": 1, "prompt": plan.prefill_len}
  if not report.budget.open("decode"):
    report.add("prefill", {**row, "status": "skipped (time budget)"})
    return
  try:
    first = gen([rng.integers(1, mc.vocab_size, plan.prefill_len).tolist()], 1)
    first()
    s = benchmarking.time_alternating({"prefill": first}, plan.repeats, warmup=False,
                                      reduce=min)["prefill"]
    row.update(status="ok", ms=s * 1e3, tokens_per_s=plan.prefill_len / s)
  except Exception as e:  # noqa: BLE001
    row["status"] = error_status(e)
  report.add("prefill", row)
  report.progress(f"prefill of {plan.prefill_len} tokens: " + (
      f"{row['ms']:.1f} ms" if "ms" in row else row["status"]))


# --- the report's Markdown -------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".3g") -> str:
  return "-" if x is None else format(x, spec) if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
  """The JSON report as Markdown tables."""
  p = data["phases"]
  verdict = "PASS" if data["passed"] else "FAIL: " + "; ".join(data["failures"])
  out = [f"# Device check, {data['date']}", "",
         f"{data['devices']} x {data['device_kind']} ({data['backend']}), jax "
         f"{data['jax_version']}, {'smoke' if data['smoke'] else 'full'} run, "
         f"{data['elapsed_s']:.0f} of {data['budget_s']:.0f} s; peak "
         f"{data['peak_tflops']:.3g} TFLOP/s per device ({data['peak_source']}).", "",
         f"Kernel check: **{verdict}**. Fastest train step: "
         f"{data['fastest_step_impl'] or '-'}."]
  if "incomplete" in data:
    out += ["", f"Incomplete: {data['incomplete']}."]
  if "kernels" in p:
    out += ["", "## Attention kernels against the float32 dense reference", "",
            "Error max|x - ref| / max|ref| (tolerance: 2x dense's error + floor).", "",
            _table(["S", "dtype", "impl", "out", "dq", "dk", "dv", "status"],
                   [[r["seq"], r["dtype"], r.get("impl", "-"),
                     *[_fmt(r.get("error", {}).get(k), ".1e") for k in ("out", "dq", "dk", "dv")],
                     r["status"]] for r in p["kernels"]])]
  if "attention" in p:
    out += ["", "## Attention forward + backward (bfloat16, batch 1)", "",
            _table(["S", "impl", "ms", "temp GiB", "compile s", "status"],
                   [[r["seq"], r["impl"], _fmt(r.get("ms"), ".2f"),
                     _fmt(r.get("temp_gib"), ".2f"), r.get("compile_s"), r["status"]]
                    for r in p["attention"]])]
  if "step" in p:
    out += ["", "## hrm1b-shaped train step (bf16, remat full, bp_steps 5)", "",
            _table(["impl", "layers/stack", "rows x len", "ms/step", "tokens/s", "MFU",
                    "compiled GiB", "peak GiB so far", "compile s", "status"],
                   [[r["impl"], r["layers_per_stack"], f"{r['rows']} x {r['row_len']}",
                     _fmt(r["step_s"] * 1e3 if "step_s" in r else None, ".0f"),
                     _fmt(r.get("tokens_per_s"), ".0f"),
                     f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-",
                     _fmt(r.get("total_gib"), ".2f"), _fmt(r.get("peak_gib_so_far"), ".2f"),
                     r.get("compile_s"), r["status"]] for r in p["step"]])]
  if "decode" in p:
    out += ["", "## Decoding (hrm_jax.generate, greedy)", "",
            _table(["batch", "prompt", "new tokens", "decode tokens/s", "ms/step",
                    "end-to-end tokens/s", "first call s", "status"],
                   [[r["batch"], r["prompt"], r["new_tokens"],
                     _fmt(r.get("decode_tokens_per_s"), ".0f"), _fmt(r.get("ms_per_step"), ".2f"),
                     _fmt(r.get("end_to_end_tokens_per_s"), ".0f"), r.get("first_call_s"),
                     r["status"]] for r in p["decode"]])]
  if "prefill" in p:
    out += [""] + [f"Prefill of one {r['prompt']}-token prompt: " + (
        f"{r['ms']:.1f} ms ({r['tokens_per_s']:.0f} tokens/s)" if "ms" in r else r["status"])
        for r in p["prefill"]]
  return "\n".join(out) + "\n"


# --- main ------------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
  del argv
  backend = jax.default_backend()
  if backend == "cpu" and not _SMOKE.value:
    raise app.UsageError("JAX sees no accelerator (backend cpu): the full check needs a GPU "
                         "or TPU; pass --smoke for the CPU smoke run")
  phases = [p for p in PHASES if p in _PHASES.value]
  unknown = sorted(set(_PHASES.value) - set(PHASES))
  if unknown or not phases:
    raise app.UsageError(f"--phases={','.join(_PHASES.value)}: expected some of {PHASES}")
  plan = SMOKE if _SMOKE.value else FULL
  if _LAYERS.value:
    plan = dataclasses.replace(plan, layers_per_stack=_LAYERS.value)
  now = datetime.datetime.now(datetime.timezone.utc)
  out = configs.workdir_from(_WORKDIR.value, _OUT.value,
                             os.path.join("runs", f"device_check-{now:%Y%m%d-%H%M%S}"))
  for name in (JSON_NAME, MD_NAME):
    if os.path.lexists(os.path.join(out, name)):
      raise app.UsageError(f"--workdir={out}: {os.path.join(out, name)} exists; refusing to "
                           "replace a previous report (pass a new --workdir)")

  budget = Budget(_BUDGET.value, phases, _STARTED)
  device = jax.devices()[0]
  peak = metrics_lib.peak_flops_per_device(device)
  known = any(k.lower() in device.device_kind.lower() for k in metrics_lib.PEAK_FLOPS)
  report = Report(out, {
      "date": now.strftime("%Y-%m-%d %H:%M UTC"), "backend": backend,
      "device_kind": device.device_kind, "devices": jax.device_count(),
      "jax_version": jax.__version__, "smoke": _SMOKE.value, "budget_s": _BUDGET.value,
      "plan": dataclasses.asdict(plan), "peak_tflops": peak / 1e12,
      "peak_source": ("measured f32 matmul" if backend == "cpu"
                      else "vendor bf16" if known else "unknown device: 1 PFLOP/s assumed"),
  }, budget)
  report.save()
  print(f"device check: {jax.device_count()} x {device.device_kind} ({backend}); budget "
        f"{_BUDGET.value:.0f} s; phases {', '.join(phases)}; writing {out}", flush=True)
  watchdog = threading.Timer(max(0.0, _BUDGET.value - budget.elapsed()), report.out_of_time)
  watchdog.daemon = True
  watchdog.start()

  _, mc, ex = model_setup(plan, "chunked", 1)
  programs = Programs(ex.attention_chunk)
  runners: dict[str, Callable[[], None]] = {
      "kernels": lambda: check_kernels(plan, report, mc, programs, _INJECT.value),
      "attention": lambda: time_attention(plan, report, mc, programs),
      "step": lambda: time_steps(plan, report, peak),
      "decode": lambda: time_decode(plan, report),
  }
  for phase in phases:
    report.phase = phase
    runners[phase]()
  watchdog.cancel()
  report.phase = "done"
  report.save()
  print(f"\n{open(report.md_path, encoding='utf-8').read()}", flush=True)
  sys.exit(1 if report.data["failures"] else 0)


if __name__ == "__main__":
  cli.run(main)
