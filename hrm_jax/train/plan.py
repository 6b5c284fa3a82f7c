"""The accelerator plan: the least recomputation whose compiled step fits, chosen by compiling.

`model.remat_policy="auto"` (hrm1b's default) asks for it. Candidates are (remat policy,
scope, microbatches). Each is ranked by the forward work its rematerialisation repeats
(`flops.recompute_flops_per_token`, counted from the model, so loops are counted whole), then
by microbatches (each one more gathers the FSDP-sharded weights again). They are compiled in
that order for the devices at hand, the real ones in train.py and compile-only ones in
benchmarks/aot_compile.py. The first whose per-device total is within 90% of the device's
memory wins. A compile the backend refuses for memory counts as "does not fit", not as a
crash. The choice is cached per (model, batch, mesh, devices), so a restart skips the search.

`roofline` predicts the step time from the counts: FLOPs at the chip's peak, HBM bytes at its
bandwidth, collective bytes at its interconnect's. It is a lower bound, since it assumes
perfect overlap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections

from hrm_jax import atomic, storage
from hrm_jax import config as config_lib
from hrm_jax import errors
from hrm_jax import flops as flops_lib
from hrm_jax import params as params_lib
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel, registry
from hrm_jax.train import aot
from hrm_jax.train.bp_schedule import BpSchedule, bp_steps_at
from hrm_jax.train import state as state_lib
from hrm_jax.train.metrics import PEAK_FLOPS

AUTO = "auto"
HEADROOM = 0.9  # a plan must fit in this share of device memory
# Remat settings, each with its scope; "none" has no unit to scope.
SETTINGS = (("none", "layer"), ("dots", "layer"), ("proj", "layer"), ("full", "layer"),
            ("proj", "pass"), ("full", "pass"))
MICROBATCHES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published figures of one accelerator: HBM bytes, HBM bytes/s, and the bytes/s one chip
  moves over its fast interconnect (ICI, NVLink) and over the network between hosts."""
  hbm_bytes: float
  hbm_bandwidth: float
  ici_bandwidth: float
  network_bandwidth: float


# Keys match device_kind as PEAK_FLOPS's do (longest match wins). v5p: 95 GB HBM2e at
# 2.76 TB/s, ICI 4,800 Gbps per chip. H100/H200 SXM: NVLink 450 GB/s per direction, and one
# 400 Gb/s InfiniBand port per GPU between hosts.
CHIPS = {
    "TPU v5": Chip(95e9, 2.765e12, 600e9, 600e9),
    "TPU v5p": Chip(95e9, 2.765e12, 600e9, 600e9),
    "TPU v4": Chip(32e9, 1.2e12, 300e9, 300e9),
    "H100": Chip(80e9, 3.35e12, 450e9, 50e9),
    "H200": Chip(141e9, 4.8e12, 450e9, 50e9),
}


def _lookup(table: dict[str, Any], kind: str) -> Any:
  for name in sorted(table, key=len, reverse=True):
    if name.lower() in kind.lower():
      return table[name]
  return None


def chip_of(device: Any) -> Optional[Chip]:
  return _lookup(CHIPS, device.device_kind)


def peak_of(device: Any) -> Optional[float]:
  return _lookup(PEAK_FLOPS, device.device_kind)


def memory_limit(device: Any) -> Optional[float]:
  """Bytes a program may use on `device`: what its allocator reports for a real device,
  else the chip's HBM (compile-only devices); None when unknown (CPU)."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001 - compile-only devices have no allocator
    stats = {}
  if stats.get("bytes_limit"):
    return float(stats["bytes_limit"])
  chip = chip_of(device)
  return chip.hbm_bytes if chip else None


@dataclasses.dataclass(frozen=True)
class Candidate:
  policy: str
  scope: str
  microbatches: int

  def apply(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of the training config with this setting."""
    out = cfg.copy_and_resolve_references()
    with out.unlocked():
      out.model.remat_policy, out.model.remat_scope = self.policy, self.scope
      out.train.microbatches = self.microbatches
    return out

  def __str__(self) -> str:
    return f"{self.policy}/{self.scope} x{self.microbatches}"


def step_counts(cfg: ml_collections.ConfigDict, model_config: config_lib.ModelConfig
                ) -> tuple[float, float, Optional[int]]:
  """(model FLOPs, FLOPs with what remat repeats, bp_steps) of one step of `cfg`'s batch,
  at the largest bp_steps (after the warm-up), every loop trip counted."""
  bp = bp_steps_at(1, 1, model_config, BpSchedule.of(cfg.train))
  tokens = cfg.data.rows * cfg.data.row_len
  model = flops_lib.train_flops_per_token(model_config, cfg.data.row_len, bp) * tokens
  extra = flops_lib.recompute_flops_per_token(
      model_config, registry.execution_of_section(cfg.model.to_dict()), cfg.data.row_len,
      bp) * tokens
  return model, model + extra, bp


def candidates(cfg: ml_collections.ConfigDict, vocab_size: int, batch_devices: int
               ) -> list[tuple[Candidate, float]]:
  """(candidate, recompute overhead) in the order they are tried: least overhead first."""
  rows = cfg.data.rows
  out = []
  for policy, scope in SETTINGS:
    for mb in MICROBATCHES:
      if rows % mb or (rows // mb) % batch_devices:
        continue  # each micro-batch must still give every batch shard whole rows
      c = Candidate(policy, scope, mb)
      run = c.apply(cfg)
      model, compiled, _ = step_counts(
          run, registry.model_config_of_section(run.model.to_dict(), vocab_size))
      out.append((c, compiled / model - 1))
  return sorted(out, key=lambda x: (round(x[1], 6), x[0].microbatches))


@dataclasses.dataclass
class Tried:
  """One compiled candidate: its memory per device (None: the compiler refused it)."""
  candidate: Candidate
  recompute: float
  report: Optional[aot.CompileReport]
  fits: bool
  why: str
  seconds: float


def _out_of_memory(error: BaseException) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text


def try_compile(cfg: ml_collections.ConfigDict, vocab_size: int, devices: Sequence[Any],
                candidate: Candidate, recompute: float, limit: Optional[float]) -> Tried:
  """Compile `candidate`; a backend that refuses it for memory gives a row that does not
  fit."""
  run = candidate.apply(cfg)
  model_config = registry.model_config_of_section(run.model.to_dict(), vocab_size)
  bp = bp_steps_at(1, 1, model_config, BpSchedule.of(run.train))
  t = time.perf_counter()
  try:
    compiled = aot.compile_train_step(run, model_config, list(devices), bp)
  except Exception as e:  # noqa: BLE001 - only memory refusals are a result
    if not _out_of_memory(e):
      raise
    first = (str(e).splitlines() or [""])[0][:160]
    return Tried(candidate, recompute, None, False, f"refused by the compiler: {first}",
                 time.perf_counter() - t)
  rep = aot.report(compiled, list(devices))
  fits = limit is None or rep.total <= HEADROOM * limit
  why = (f"{rep.total / 2**30:.2f} GiB of {limit / 2**30:.2f} GiB" if limit else
         f"{rep.total / 2**30:.2f} GiB (no memory limit known)")
  return Tried(candidate, recompute, rep, fits, why, time.perf_counter() - t)


def search(cfg: ml_collections.ConfigDict, vocab_size: int, devices: Sequence[Any],
           on_row: Callable[[Tried], None] = lambda _: None, exhaustive: bool = False
           ) -> tuple[Optional[Tried], list[Tried]]:
  """(the chosen row or None, every row compiled): candidates in order until one fits
  (`exhaustive`: all of them)."""
  mesh = _mesh(cfg, devices)
  batch_devices = mesh["data"] * mesh["fsdp"]
  limit = memory_limit(devices[0])
  chosen, rows = None, []
  for candidate, recompute in candidates(cfg, vocab_size, batch_devices):
    row = try_compile(cfg, vocab_size, devices, candidate, recompute, limit)
    rows.append(row)
    on_row(row)
    if row.fits and chosen is None:
      chosen = row
      if not exhaustive:
        break
  return chosen, rows


def _mesh(cfg: ml_collections.ConfigDict, devices: Sequence[Any]) -> dict[str, int]:
  """Axis sizes of the mesh train.py builds from `cfg` on `devices`."""
  return dict(sharding_lib.make_mesh(tuple(cfg.mesh.shape), list(devices),
                                     tuple(cfg.mesh.dcn_shape)).shape)


def cache_key(cfg: ml_collections.ConfigDict, vocab_size: int, devices: Sequence[Any]) -> str:
  """What the choice depends on: the model (less its remat fields), the largest bp_steps of
  the warm-up, the batch, the mesh, the loss chunk, the devices and the compiler."""
  model = {k: v for k, v in cfg.model.to_dict().items() if k not in ("remat_policy",
                                                                      "remat_scope")}
  what = {"model": model, "bp_max_steps": cfg.train.bp_max_steps, "vocab": vocab_size,
          "rows": cfg.data.rows,
          "row_len": cfg.data.row_len, "mesh": list(cfg.mesh.shape),
          "dcn": list(cfg.mesh.dcn_shape), "loss_chunk": cfg.train.loss_chunk,
          "devices": len(devices), "kind": devices[0].device_kind,
          "platform": devices[0].platform, "jax": jax.__version__}
  return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def choose(cfg: ml_collections.ConfigDict, vocab_size: int, devices: Sequence[Any],
           cache_file: Optional[str] = None, say: Callable[[str], None] = print
           ) -> Candidate:
  """The plan for `cfg` on `devices` (cached in `cache_file`, a JSON object keyed by
  `cache_key`); says the choice and why in one line."""
  key = cache_key(cfg, vocab_size, devices)
  cache = _read_cache(cache_file)
  if key in cache:
    c = cache[key]
    chosen = Candidate(c["remat_policy"], c["remat_scope"], c["microbatches"])
    say(f"remat auto: {chosen} (cached in {cache_file}: {c['why']})")
    return chosen
  limit = memory_limit(devices[0])
  if limit is None:  # CPU: no device memory to fit, so nothing to recompute
    chosen, why = Candidate("none", "layer", 1), "no device memory limit (CPU)"
  else:
    row, rows = search(cfg, vocab_size, devices)
    if row is None:
      tried = "; ".join(f"{r.candidate}: {r.why}" for r in rows)
      raise errors.ConfigError(f"--config.model.remat_policy=auto: no remat setting fits "
                               f"{HEADROOM:.0%} of {limit / 2**30:.1f} GiB per device "
                               f"({tried}); use more devices, shorter rows "
                               "(--config.data.row_len) or fewer rows per step")
    chosen = row.candidate
    skipped = [f"{r.candidate} {r.why}" for r in rows if r is not row]
    why = (f"+{row.recompute:.0%} recompute, {row.why}"
           + (f"; {', '.join(skipped)} did not fit" if skipped else ""))
  say(f"remat auto: {chosen} ({why})")
  if cache_file and jax.process_index() == 0:
    cache[key] = {"remat_policy": chosen.policy, "remat_scope": chosen.scope,
                  "microbatches": chosen.microbatches, "why": why}
    atomic.write_json(cache_file, cache)
  return chosen


def _read_cache(path: Optional[str]) -> dict:
  if not path or not storage.path(path).exists():
    return {}
  try:
    cache = json.loads(storage.path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    logging.warning("ignoring the remat plan cache %s: %s", path, e)
    return {}
  return cache if isinstance(cache, dict) else {}


def checkable(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`cfg` with "auto" replaced by a concrete setting, for checks that need a ModelConfig
  before the plan is chosen."""
  return Candidate("none", "layer", 1).apply(cfg) if cfg.model.remat_policy == AUTO else cfg


def resolve(cfg: ml_collections.ConfigDict, vocab_size: int, devices: Sequence[Any],
            cache_file: Optional[str] = None, say: Callable[[str], None] = print
            ) -> ml_collections.ConfigDict:
  """`cfg` itself unless its model.remat_policy is "auto"; then a copy with the plan."""
  if cfg.model.remat_policy != AUTO:
    return cfg
  return choose(cfg, vocab_size, devices, cache_file, say).apply(cfg)


@dataclasses.dataclass(frozen=True)
class Roofline:
  """Predicted step of one device: each term's seconds, and the bound they give."""
  flops_s: float
  hbm_s: float
  collective_s: float
  hbm_bytes: float
  collective_bytes: float

  @property
  def step_s(self) -> float:
    return max(self.flops_s, self.hbm_s, self.collective_s)


def roofline(cfg: ml_collections.ConfigDict, model_config: config_lib.ModelConfig,
             report: aot.CompileReport, compiled_flops: float, devices: Sequence[Any],
             ) -> Optional[Roofline]:
  """The step's lower bound on `devices` (None for a chip without published figures).

  HBM bytes per device: the gathered weights read at every layer application (forward,
  recompute and backward of the gradient passes, per micro-batch), the optimizer's f32
  state read and written once (params, grads, two moments, EMA), and the temporaries written
  and read once. Collective bytes: the FSDP all-gather of the weights at each of those
  applications and one reduce-scatter of the f32 gradients per micro-batch; the bandwidth is
  the network's when the mesh spans hosts, else the chip's interconnect.
  """
  chip, peak = chip_of(devices[0]), peak_of(devices[0])
  if chip is None or peak is None:
    return None
  n, mb, c = len(devices), cfg.train.microbatches, model_config
  ex = registry.execution_of_section(cfg.model.to_dict())
  bp = bp_steps_at(1, 1, c, BpSchedule.of(cfg.train))
  params = params_lib.count_params(jax.eval_shape(
      LanguageModel(c, ex).init, jax.random.PRNGKey(0), state_lib.example_batch(1, 8))["params"])
  width = 2 if ex.dtype == "bfloat16" else 4
  every_pass, grad_passes = flops_lib.stack_weight_reads(c, bp)
  recomputed = {"none": 0, "dots": 0, "proj": 1, "full": 1}[ex.remat_policy]
  recomputed *= 2 if ex.remat_scope == "pass" else 1
  # forward of every pass; backward (activation and weight gradients) and recompute of the
  # passes with gradient
  weight_reads = (every_pass + grad_passes * (2 + recomputed)) * width * mb
  hbm = weight_reads + 9 * 4 * params / n + 2 * report.temporaries
  fsdp = _mesh(cfg, devices)["fsdp"]
  gathered = weight_reads * (fsdp - 1) / fsdp
  reduced = 4 * params * mb * (n - 1) / n
  hosts = len({getattr(d, "process_index", 0) for d in devices})
  bandwidth = chip.network_bandwidth if hosts > 1 else chip.ici_bandwidth
  return Roofline(compiled_flops / n / peak, hbm / chip.hbm_bandwidth,
                  (gathered + reduced) / bandwidth, hbm, gathered + reduced)
