"""Logging of training metrics: metrics.jsonl, TensorBoard events, optionally Weights &
Biases, a progress line, MFU (docs/logging.md)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import atomic, errors, storage

# Dense bf16 peak FLOP/s per device (vendor figures).
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12,
    "L4": 121e12, "B200": 2250e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12,
    "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def measure_matmul_peak(n: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a large jitted matmul on the default backend (the CPU's usable peak)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def peak_flops_per_device(device: Optional[jax.Device] = None) -> float:
  """Vendor peak for accelerators; on CPU the measured matmul rate shared by all devices."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return measure_matmul_peak() / jax.device_count()
  kind = device.device_kind
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if name.lower() in kind.lower():
      return PEAK_FLOPS[name]
  logging.warning("unknown device kind %r: MFU is reported against 1 PFLOP/s", kind)
  return 1e15


METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # in the workdir: a resumed run continues the same W&B run


class MetricWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard
  and, with `wandb_project`, to Weights & Biases (`wandb` installed; WANDB_MODE=offline keeps
  the run in <workdir>/wandb for `wandb sync`).

  Only process 0 writes. A resumed run (`resume_step`) first drops the rows and events
  logged after the step it resumes from (a run killed after its last checkpoint logged
  steps it will repeat), so every step appears once (W&B keeps its first copy of a step); a
  run that starts from step 0 in a workdir whose checkpoints are gone drops them all.

  A workdir in a bucket cannot be appended to: the files are written in a local staging
  folder (`storage.staging`) and uploaded whole by `sync`, at most every `upload_every_s`
  seconds, at every checkpoint and at the end, so a step costs no upload. A resumed run
  starts from the bucket's metrics.jsonl (the truth, wherever the run ran before).
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0,
               wandb_project: str = "", wandb_entity: str = "", wandb_run_name: str = "",
               config: Optional[dict] = None, upload_every_s: float = 60.0):
    self.enabled = enabled and jax.process_index() == 0
    self.workdir = workdir
    self.remote = storage.is_remote(workdir)
    # In a bucket: this writer's own staging folder (a later run with the same URL, on this
    # machine, must not upload this one's event files), removed once all is uploaded.
    self._local = (str(storage.staging(workdir, "runs") / f"session-{os.getpid()}-"
                       f"{time.time_ns()}") if self.remote else os.path.expanduser(workdir))
    self._upload_every_s, self._last_upload = upload_every_s, time.monotonic()
    self._synced_at = 0.0  # wall time of the last upload: files changed since go up again
    self._jsonl = None
    self._tb = None
    self._wandb = None
    if self.enabled:
      os.makedirs(self._local, exist_ok=True)
      path = os.path.join(self._local, METRICS_FILE)
      if self.remote:
        self._fetch(path)
      if os.path.exists(path):  # a run started afresh (step 0) starts a fresh file
        _drop_rows_after(path, resume_step)
      self._jsonl = open(path, "a", encoding="utf-8")
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(self._local, "tensorboard"),
                               purge_step=resume_step + 1)
      if wandb_project:
        self._wandb = _wandb_run(workdir, self._local, wandb_project, wandb_entity,
                                 wandb_run_name, config)

  def _fetch(self, local: str) -> None:
    """The bucket's metrics.jsonl as the staged copy (none there: no staged copy)."""
    remote = storage.path(storage.join(self.workdir, METRICS_FILE))
    if remote.exists():
      atomic.write_text(local, remote.read_text(encoding="utf-8"))
    elif os.path.exists(local):
      os.remove(local)

  def local_dir(self, name: str) -> str:
    """Where to write the run's folder `name` (the staging folder's for a bucket)."""
    return os.path.join(self._local, name)

  def upload_dir(self, name: str) -> None:
    """Upload the staged folder `name` to the bucket (nothing to do for a local workdir)."""
    if self.remote and self.enabled and os.path.isdir(self.local_dir(name)):
      storage.upload_tree(self.local_dir(name), storage.join(self.workdir, name))

  def write(self, step: int, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: float(np.asarray(v)) if np.ndim(v) == 0 and not isinstance(v, str) else v
                for k, v in values.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    scalars = {f"train/{k}": v for k, v in row.items()
               if k != "step" and isinstance(v, (int, float))}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, int(step))
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(scalars, step=int(step))
    if self.remote and time.monotonic() - self._last_upload >= self._upload_every_s:
      self.sync()

  def sync(self) -> None:
    """Upload metrics.jsonl and the TensorBoard files changed since the last upload, each as
    one whole object (a bucket workdir; nothing to do for a local one)."""
    if not (self.remote and self.enabled):
      return
    started = time.time()
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()
    for folder, _, files in os.walk(self._local):
      for name in files:
        local = os.path.join(folder, name)
        rel = os.path.relpath(local, self._local)
        if (rel == METRICS_FILE or rel.startswith("tensorboard" + os.sep)) and \
            os.path.getmtime(local) >= self._synced_at - 1:
          storage.put_file(local, storage.join(self.workdir, *rel.split(os.sep)))
    self._synced_at, self._last_upload = started, time.monotonic()

  def close(self) -> None:
    if self._tb:
      self._tb.close()
      self._tb = None
    if self._jsonl:
      self.sync()
      self._jsonl.close()
    if self._wandb is not None:
      self._wandb.finish()
      self.upload_dir("wandb")  # an offline W&B run, for `wandb sync` from the bucket
    if self.remote and self.enabled:
      shutil.rmtree(self._local, ignore_errors=True)


class MissingExtraError(errors.UserError, ImportError):
  """The config asks for an optional dependency that is not installed."""


def _wandb_run(workdir: str, local: str, project: str, entity: str, name: str,
               config: Optional[dict]):
  """A W&B run whose files live in <local>/wandb (the workdir, or its staging folder); its id
  is kept in the workdir, so a resumed training run appends to the same W&B run."""
  try:
    import wandb
  except ImportError:
    raise MissingExtraError("--config.log.wandb_project is set but wandb is not installed: "
                      "pip install 'hrm_jax[wandb]' (or unset log.wandb_project)") from None
  id_file = storage.path(storage.join(workdir, WANDB_ID_FILE))
  if id_file.exists():
    run_id = id_file.read_text(encoding="utf-8").strip()
  else:
    run_id = secrets.token_hex(8)  # W&B ids: lowercase letters and digits
    atomic.write_text(str(id_file), run_id + "\n")
  return wandb.init(project=project, entity=entity or None, name=name or None, id=run_id,
                    resume="allow", dir=local, config=config)


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrite metrics.jsonl (atomically) without rows past `step`; a torn last line (kill -9
  mid-write) goes too."""
  keep, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      if int(row.get("step", 0)) > step:
        dropped += 1
      else:
        keep.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    logging.info("%s: dropped %d rows logged after step %d", path, dropped, step)
    with atomic.file(path) as f:
      f.writelines(keep)


def format_duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(step: int, total: int, values: dict[str, float], seconds_per_step: float) -> str:
  eta = format_duration((total - step) * seconds_per_step)
  return (f"step {step}/{total} ({100.0 * step / max(total, 1):.1f}%) | "
          f"loss {values['loss']:.4f} | acc {values['accuracy']:.3f} | "
          f"exact {values['exact_accuracy']:.3f} | lr {values['lr']:.2e} | "
          f"bp {values['bp_steps']} | {values['tokens_per_s']:.0f} tok/s | "
          f"MFU {100 * values['mfu']:.1f}% | {1e3 * seconds_per_step:.0f} ms/step | ETA {eta}"
          + (f" | skipped {values['skipped_steps']}" if values.get("skipped_steps") else ""))


def config_line(model_config: Any, params: int, cfg: Any, total_steps: int, stop_at: int,
                mesh: jax.sharding.Mesh, written: str) -> str:
  """The run in one line (the full resolved config is in `written`): the steps it trains and,
  where it differs, the length its lr and bp_steps schedules run over."""
  c = model_config
  steps = f"{stop_at} steps" + ("" if stop_at == total_steps else
                                f" (schedule over {total_steps})")
  return (f"{c.arch}: {params / 1e6:.2f}M params (hidden {c.hidden_size}, {c.n_layers} "
          f"layers) | {cfg.data.rows} x {cfg.data.row_len} tokens/step, "
          f"{steps}, lr {cfg.train.lr:g} | mesh "
          f"{' x '.join(f'{k} {v}' for k, v in mesh.shape.items())} on "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s) | config: {written}")
