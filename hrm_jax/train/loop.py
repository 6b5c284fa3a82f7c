"""The training loop: data -> sharded jitted steps -> metrics and orbax checkpoints.

Resumes automatically from the latest checkpoint in the workdir; SIGTERM saves and exits.
A non-finite loss stops the run naming the step (the last good checkpoint is kept), or is
skipped with `train.skip_nonfinite`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hrm_jax import config as config_lib
from hrm_jax import data as data_lib
from hrm_jax import flops as flops_lib
from hrm_jax import sharding as sharding_lib
from hrm_jax import truncation
from hrm_jax.models import LanguageModel
from hrm_jax.train import checkpoint as ckpt_lib
from hrm_jax.train import metrics as metrics_lib
from hrm_jax.train import state as state_lib
from hrm_jax.train.step import jit_train_step, optimizer


class NonFiniteLossError(FloatingPointError):
  pass


def model_config_from(cfg: ml_collections.ConfigDict, vocab_size: int) -> config_lib.ModelConfig:
  """ModelConfig from the `model` section: preset size and arch, then the fields set."""
  m = cfg.model.to_dict()
  size, arch = m.pop("size"), m.pop("arch")
  overrides = {k: v for k, v in m.items() if v is not None}
  overrides.setdefault("vocab_size", vocab_size)
  return config_lib.model_config(size, arch, **overrides)


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  model_config: config_lib.ModelConfig
  last_metrics: dict[str, float]
  steps_done: int
  preempted: bool
  demo: Optional[Any] = None


class _Preemption:
  """Sets a flag on SIGTERM so the loop can save and exit between steps."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def open_data(cfg: ml_collections.ConfigDict):
  """(SampledData, demo or None) for `data.source` = 'demo' or a data_io directory."""
  demo = None
  path = cfg.data.path
  if cfg.data.source == "demo":
    demo = data_lib.ensure_demo_data(os.path.expanduser(cfg.data.demo_dir),
                                     epochs=cfg.train.epochs, seed=cfg.data.seed)
    path = demo.train_dir
  elif cfg.data.source != "path":
    raise ValueError(f"--config.data.source={cfg.data.source!r}: expected 'demo' or 'path'")
  if not path:
    raise ValueError("--config.data.path is required when data.source='path'")
  return data_lib.open_sampled(path, epochs=cfg.train.epochs), demo


def train(cfg: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Run (or resume) the training job described by `cfg` in `workdir`."""
  is_main = jax.process_index() == 0
  sampled, demo = open_data(cfg)
  model_config = model_config_from(cfg, sampled.vocab_size)
  config_lib.check_data_fits(model_config, sampled)
  if model_config.vocab_size < int(sampled.tokenizer_info["vocab_size"]):
    raise ValueError(f"--config.model.vocab_size={model_config.vocab_size} is smaller than the "
                     f"data's tokenizer vocabulary ({sampled.tokenizer_info['vocab_size']}, "
                     f"{sampled.path}/metadata.json)")
  mesh = sharding_lib.make_mesh(tuple(cfg.mesh.shape))
  pipeline = data_lib.Pipeline(sampled, rows=cfg.data.rows, row_len=cfg.data.row_len,
                               seed=cfg.data.seed, target_only=cfg.data.target_only,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  # The schedules (lr, bp_steps) run over total_steps; max_steps only stops early, so a
  # run stopped at max_steps and resumed later follows the same trajectory.
  total_steps = cfg.train.total_steps or pipeline.total_steps(cfg.train.epochs)
  stop_at = total_steps if cfg.train.max_steps < 0 else min(total_steps, cfg.train.max_steps)
  tx, schedule = optimizer(cfg.train, total_steps)
  model = LanguageModel(model_config)
  shardings = state_lib.state_shardings(model, tx, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  saved_config = {"config": cfg.to_dict(), "model_config": dataclasses.asdict(model_config)}

  mngr = ckpt_lib.manager(os.path.join(workdir, "checkpoints"), cfg.checkpoint.keep,
                          cfg.checkpoint.async_save)
  iterator = pipeline.iterator()
  latest = mngr.latest_step()
  if latest is not None:
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            state_lib.abstract_state(model, tx), shardings)
    state, data_state, _ = ckpt_lib.restore(mngr, latest, abstract, model_config)
    if data_state:
      iterator.set_state(data_state)
    logging.info("Resuming from step %d", latest)
    if is_main:
      print(f"Resuming from step {latest}", flush=True)
  else:
    state = state_lib.init_state(model, tx, jax.random.PRNGKey(cfg.train.seed), shardings)
    if cfg.init_from.path:
      abstract_params = jax.tree.map(
          lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
          state.params, shardings.params)
      params = ckpt_lib.restore_params(cfg.init_from.path, cfg.init_from.use_ema,
                                       abstract_params, model_config)
      # Separate buffers: params and ema are donated to the step independently.
      state = state.replace(params=params, ema=jax.tree.map(jnp.copy, params))
      if is_main:
        print(f"Initialised weights from {cfg.init_from.path} "
              f"({'EMA' if cfg.init_from.use_ema else 'params'}); fresh optimizer", flush=True)

  step_fns: dict[Optional[int], Any] = {}

  def step_fn(bp_steps):
    if bp_steps not in step_fns:
      step_fns[bp_steps] = jit_train_step(model, tx, cfg.train, shardings, mesh, bp_steps)
    return step_fns[bp_steps]

  writer = metrics_lib.MetricWriter(workdir)
  peak = metrics_lib.peak_flops_per_device() * jax.device_count()
  tokens_per_batch = cfg.data.rows * cfg.data.row_len
  step = int(jax.device_get(state.step))
  first_bad = jnp.asarray(-1, jnp.int32)  # first step with a non-finite loss, on device
  last: dict[str, float] = {}
  window_start, window_steps = time.perf_counter(), 0
  preempted = False

  def check_finite():
    bad = int(jax.device_get(first_bad))
    if bad >= 0 and not cfg.train.skip_nonfinite:
      raise NonFiniteLossError(
          f"non-finite loss at step {bad}; stopping. The last good checkpoint is kept in "
          f"{os.path.join(workdir, 'checkpoints')} (set train.skip_nonfinite to skip such steps)")

  def save(force: bool = False):
    check_finite()
    ckpt_lib.save(mngr, step, state, iterator.get_state(), saved_config, force=force)

  with _Preemption() as preemption:
    while step < stop_at:
      try:
        local = next(iterator)
      except StopIteration:
        logging.info("data exhausted at step %d", step)
        break
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
               for k, v in local.items()}
      bp = truncation.bp_steps_at(step + 1, total_steps, model_config)
      state, metrics = step_fn(bp)(state, batch)
      first_bad = jnp.where((first_bad < 0) & metrics["nonfinite"], step + 1, first_bad)
      step += 1
      window_steps += 1
      if step % cfg.log.every_steps == 0 or step == stop_at:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - window_start
        sec_per_step = elapsed / window_steps
        tokens_per_s = tokens_per_batch / sec_per_step
        flops_per_token = flops_lib.train_flops_per_token(model_config, cfg.data.row_len, bp)
        values.update(lr=float(schedule(step - 1)), bp_steps=bp, tokens_per_s=tokens_per_s,
                      mfu=flops_per_token * tokens_per_s / peak, step_time_s=sec_per_step)
        last = values
        writer.write(step, values)
        if is_main:
          print(metrics_lib.progress_line(step, stop_at, values, sec_per_step), flush=True)
        check_finite()
        window_start, window_steps = time.perf_counter(), 0
      if preemption.requested.is_set() or mngr.reached_preemption(step):
        save(force=True)
        preempted = True
        if is_main:
          print(f"Preempted: saved step {step}, exiting", flush=True)
        break
      if step % cfg.checkpoint.every_steps == 0:
        save()
    if not preempted and mngr.latest_step() != step:
      save(force=True)
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  return TrainResult(state=state, model_config=model_config, last_metrics=last,
                     steps_done=step, preempted=preempted, demo=demo)
