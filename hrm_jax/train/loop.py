"""The training loop: data -> sharded jitted steps -> metrics and orbax checkpoints.

One process per host runs `train` with the same config (docs/multihost.md). It holds the
workdir's lock (`workdir_lock`) and resumes from the newest checkpoint in the workdir that
restores; SIGTERM on any host makes all save one step and exit, and so does Ctrl-C (SIGINT),
a second one exiting at once without a partial checkpoint. A non-finite loss, gradient or
parameter norm stops the run naming the step and the quantity (the last good checkpoint is
kept), or the step is skipped with `train.skip_nonfinite`, up to
`train.max_consecutive_skips` in a row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hrm_jax import atomic, errors, storage
from hrm_jax import config as config_lib
from hrm_jax import data as data_lib
from hrm_jax import flops as flops_lib
from hrm_jax.execution import Execution
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel, registry
from hrm_jax.params import count_params
from hrm_jax.train import run_checkpoints as ckpt_lib
from hrm_jax.train import config_check
from hrm_jax.train.bp_schedule import BpSchedule, bp_steps_at
from hrm_jax.train import distributed
from hrm_jax.train import metrics as metrics_lib
from hrm_jax.train import plan as plan_lib
from hrm_jax.train import state as state_lib
from hrm_jax.train import warm_start as warm_start_lib
from hrm_jax.train import workdir_lock
from hrm_jax.train.held_out import HeldOut
from hrm_jax.train.step import NONFINITE, jit_train_step, optimizer


class NonFiniteLossError(FloatingPointError, errors.RunError):
  pass


# The resolved config of the run's latest start (each checkpoint keeps its own copy). Not
# config.json: that name marks a Hugging Face directory (model_loading.is_hf).
CONFIG_FILE = "train_config.json"
PLAN_FILE = "remat_plan.json"  # remat_policy=auto's choices, per model, batch and devices


def write_config(workdir: str, saved: dict) -> None:
  """<workdir>/train_config.json, atomically; a file of that name that is not a config this
  function wrote (other keys, or not JSON) is never replaced."""
  path = storage.join(workdir, CONFIG_FILE)
  if storage.path(path).exists() or os.path.islink(path):
    try:
      old = json.loads(storage.path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
      old = None
    # configs written before issue 30 have no "execution" key
    if not (isinstance(old, dict) and set(old) - {"execution"} == set(saved) - {"execution"}):
      raise FileExistsError(f"{path} exists and is not a training config written by hrm_jax "
                            f"(expected a JSON object with keys {sorted(saved)}); refusing to "
                            "replace it: choose another --workdir")
  atomic.write_json(path, saved)


def model_config_from(cfg: ml_collections.ConfigDict, vocab_size: int) -> config_lib.ModelConfig:
  """ModelConfig from the `model` section: preset size and arch, then the fields set."""
  try:
    return registry.model_config_of_section(cfg.model.to_dict(), vocab_size)
  except (ValueError, TypeError) as e:
    raise errors.ConfigError(f"--config.model (size {cfg.model.size!r}, arch "
                             f"{cfg.model.arch!r}): {e}") from None


def execution_from(cfg: ml_collections.ConfigDict) -> Execution:
  """How the model executes: the `model` section's dtype, attention and remat settings."""
  try:
    return registry.execution_of_section(cfg.model.to_dict())
  except (ValueError, TypeError) as e:
    raise errors.ConfigError(f"--config.model: {e}") from None


def bp_schedule_from(cfg: ml_collections.ConfigDict,
                     model_config: config_lib.ModelConfig) -> BpSchedule:
  """The bp_steps warm-up of the `train` section, checked against the model's arch."""
  try:
    schedule = BpSchedule.of(cfg.train)
    bp_steps_at(0, 1, model_config, schedule)
  except ValueError as e:
    raise errors.ConfigError(f"--config.train: {e}") from None
  return schedule


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  model_config: config_lib.ModelConfig
  last_metrics: dict[str, float]
  steps_done: int
  preempted: bool
  demo: Optional[Any] = None
  interrupted: bool = False  # stopped by Ctrl-C (after saving)
  execution: Optional[Execution] = None  # how the model ran (remat_policy auto resolved)


class _Preemption:
  """SIGTERM or SIGINT (Ctrl-C) on any host -> every host saves the same step and exits.

  Multi-process: `jax.distributed.initialize` starts JAX's preemption service, which
  catches SIGTERM on whichever host gets it and lets orbax's `reached_preemption(step)`
  return True on every host at one agreed step; SIGINT is passed on to it as SIGTERM. A
  single process has no such service, so a Python handler sets a flag instead (installing it
  in multi-process runs would take the signal away from the service). A second Ctrl-C exits
  at once: the checkpoint being written is removed (orbax writes it under a temporary name
  first), the ones already written are kept.
  """

  def __init__(self, mngr):
    self.mngr = mngr
    self.requested = threading.Event()
    self.interrupted = False
    self._previous = {}

  def _on_term(self, *_):
    self.requested.set()

  def _on_int(self, *_):
    if self.interrupted:
      self._exit_now()
    self.interrupted = True
    self.requested.set()
    if jax.process_index() == 0:
      print("Interrupted: saving a checkpoint after this step (Ctrl-C again to exit now, "
            "without it)", file=sys.stderr, flush=True)

  def _exit_now(self):
    directory = str(self.mngr.directory)
    if jax.process_index() == 0 and os.path.isdir(directory):
      for name in os.listdir(directory):
        if ckpt_lib.TMP_SUFFIX in name:
          shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    print("Interrupted again: exiting without saving", file=sys.stderr, flush=True)
    os._exit(130)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    # A SIGINT ignored from the start (nohup, a background job of a script) stays ignored.
    on_int = signal.getsignal(signal.SIGINT) != signal.SIG_IGN
    if jax.distributed.is_initialized():
      if on_int:
        self._previous[signal.SIGINT] = signal.signal(
            signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    else:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_term)
      if on_int:
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_int)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def reached(self, step: int) -> bool:
    """Called by every process after every step, with the same step."""
    return self.requested.is_set() or self.mngr.reached_preemption(step)


_HEALTHY = {"first_step": np.int32(-1), "first_code": np.int32(0), "skipped": np.int32(0),
            "run": np.int32(0), "longest_run": np.int32(0)}


@jax.jit
def _track_health(health: dict, nonfinite: jax.Array, step: jax.Array) -> dict:
  """Fold one step's `nonfinite` bits (step.NONFINITE) into the running record: the first
  bad step and what was bad in it, steps skipped, the longest run of consecutive bad steps."""
  bad = nonfinite != 0
  new = (health["first_step"] < 0) & bad
  run = jnp.where(bad, health["run"] + 1, 0)
  return {"first_step": jnp.where(new, step, health["first_step"]),
          "first_code": jnp.where(new, nonfinite, health["first_code"]),
          "skipped": health["skipped"] + bad.astype(jnp.int32), "run": run,
          "longest_run": jnp.maximum(health["longest_run"], run)}


def _raise_if_unhealthy(health: dict, train_cfg: ml_collections.ConfigDict,
                        workdir: str) -> None:
  first = int(health["first_step"])
  if first < 0:
    return
  what = ", ".join(n for i, n in enumerate(NONFINITE) if int(health["first_code"]) >> i & 1)
  kept = (f"The last good checkpoint is kept in {storage.join(workdir, 'checkpoints')}")
  if not train_cfg.skip_nonfinite:
    raise NonFiniteLossError(f"non-finite {what} at step {first}; stopping. {kept} (set "
                             "train.skip_nonfinite to skip such steps)")
  if int(health["longest_run"]) > train_cfg.max_consecutive_skips:
    raise NonFiniteLossError(
        f"{int(health['longest_run'])} consecutive steps were skipped as non-finite (the "
        f"first at step {first}: {what}), more than train.max_consecutive_skips="
        f"{train_cfg.max_consecutive_skips}; stopping, so the run cannot finish with "
        f"untrained weights. {kept}")


def open_data(cfg: ml_collections.ConfigDict):
  """(SampledData, demo or None) for `data.source` = 'demo' or a data_io directory."""
  demo = None
  path = cfg.data.path
  if cfg.data.source == "demo":
    demo = data_lib.ensure_demo_data(os.path.expanduser(cfg.data.demo_dir),
                                     epochs=cfg.train.epochs, seed=cfg.data.seed,
                                     train_per_task=cfg.data.demo_per_task)
    path = demo.train_dir
  elif cfg.data.source != "path":
    raise errors.ConfigError(f"--config.data.source={cfg.data.source!r}: expected 'demo' or "
                             "'path'")
  if not path:
    raise errors.ConfigError("--config.data.path is required when data.source='path'")
  return data_lib.open_sampled(path, epochs=cfg.train.epochs), demo


def make_mesh(cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The config's mesh, checked against the processes that will feed it."""
  try:
    mesh = sharding_lib.make_mesh(tuple(cfg.mesh.shape), dcn_shape=tuple(cfg.mesh.dcn_shape))
    sharding_lib.check_process_layout(mesh, cfg.data.rows)
  except ValueError as e:
    raise errors.ConfigError(f"--config.mesh.shape={tuple(cfg.mesh.shape)} "
                             f"--config.mesh.dcn_shape={tuple(cfg.mesh.dcn_shape)} with "
                             f"{jax.process_count()} process(es) x "
                             f"{jax.local_device_count()} device(s): {e}") from None
  return mesh


def epoch_checkpoint_steps(checkpoint_cfg: ml_collections.ConfigDict,
                           pipeline: data_lib.Pipeline) -> frozenset[int]:
  """Steps that end an epoch and get a checkpoint: every `every_epochs`-th epoch and the
  last (as the reference's checkpoint_interval); empty when every_epochs is 0."""
  every = checkpoint_cfg.every_epochs
  if every < 0 or (checkpoint_cfg.keep_epochs and not every):
    raise errors.ConfigError(f"--config.checkpoint.every_epochs={every} with "
                             f"checkpoint.keep_epochs={checkpoint_cfg.keep_epochs}: expected "
                             "every_epochs >= 0, and >= 1 to keep epoch checkpoints")
  if not every:
    return frozenset()
  ends = np.cumsum([pipeline.steps_per_epoch(e) for e in range(pipeline.sampled.num_epochs)])
  return frozenset(int(end) for e, end in enumerate(ends, 1)
                   if e % every == 0 or e == len(ends))


def run_length(train_cfg: ml_collections.ConfigDict, pipeline: data_lib.Pipeline
               ) -> tuple[int, int]:
  """(schedule steps, step to stop at), as the reference does by default.

  The lr and bp_steps schedules run over `train.total_steps`, 0 meaning the reference's
  estimate epochs * total_length // global batch tokens. With 0 the run trains on every batch
  of the data's epochs, as the reference trains until its data runs out; packing leaves rows
  part empty, so that is usually a few steps past the estimate, where the cosine goes on as
  the reference's does (docs/training.md#schedule-length). A total_steps > 0 is a schedule
  of the user's own and the run stops there (or where the data ends). max_steps only stops
  early, so a run stopped there and resumed later follows the same trajectory.
  """
  data_steps = pipeline.data_steps()
  total_steps = train_cfg.total_steps or pipeline.total_steps(train_cfg.epochs)
  end = min(train_cfg.total_steps, data_steps) if train_cfg.total_steps else data_steps
  return total_steps, end if train_cfg.max_steps < 0 else min(end, train_cfg.max_steps)


def train(cfg: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Run (or resume) the training job described by `cfg` in `workdir`.

  Every process runs this with the same config (one process per host); each feeds its own
  rows of the global batch, process 0 logs. The config's values are checked first, then the
  workdir is locked for the run (WorkdirInUseError while another run holds it).
  """
  config_check.check(cfg)
  with workdir_lock.held(workdir):
    return _train(cfg, workdir)


def _train(cfg: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  is_main = jax.process_index() == 0
  # model and mesh errors before the data (or demo cache) opens; auto remat is chosen below
  bp_schedule_from(cfg, model_config_from(plan_lib.checkable(cfg), 256))
  execution_from(plan_lib.checkable(cfg))
  mesh = make_mesh(cfg)
  sampled, demo = open_data(cfg)
  # remat_policy=auto: compile the candidates for these devices, take the least recompute
  # that fits; the choice is cached in the workdir for restarts.
  cfg = plan_lib.resolve(cfg, sampled.vocab_size, jax.devices(),
                         cache_file=storage.join(workdir, PLAN_FILE),
                         say=lambda line: print(line, flush=True) if is_main else None)
  model_config = model_config_from(cfg, sampled.vocab_size)
  execution, bp_schedule = execution_from(cfg), bp_schedule_from(cfg, model_config)
  try:
    config_lib.check_data_fits(model_config, sampled)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None
  if model_config.vocab_size < int(sampled.tokenizer_info["vocab_size"]):
    raise errors.ConfigError(f"--config.model.vocab_size={model_config.vocab_size} is smaller "
                             "than the data's tokenizer vocabulary "
                             f"({sampled.tokenizer_info['vocab_size']}, "
                             f"{sampled.path}/metadata.json)")
  try:
    pipeline = data_lib.Pipeline(sampled, rows=cfg.data.rows, row_len=cfg.data.row_len,
                                 seed=cfg.data.seed, target_only=cfg.data.target_only,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(),
                                 plan_cache=cfg.data.plan_cache or None)
  except errors.UserError:
    raise
  except ValueError as e:  # rows and row_len against the processes
    raise errors.ConfigError(f"--config.data.rows={cfg.data.rows} --config.data.row_len="
                             f"{cfg.data.row_len}: {e}") from None
  total_steps, stop_at = run_length(cfg.train, pipeline)
  tx, schedule = optimizer(cfg.train, total_steps)
  model = LanguageModel(model_config, execution)
  shardings = state_lib.state_shardings(model, tx, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  saved_config = {"config": cfg.to_dict(), "model_config": model_config.to_dict(),
                  "execution": execution.to_dict()}
  held_out = (HeldOut(cfg, model, shardings, mesh, model_config.vocab_size)
              if cfg.eval_data.path else None)

  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          state_lib.abstract_state(model, tx), shardings)
  if is_main:
    print(metrics_lib.config_line(model_config, count_params(abstract.params), cfg,
                                  total_steps, stop_at, mesh,
                                  storage.join(workdir, CONFIG_FILE)), flush=True)
  epoch_saves = epoch_checkpoint_steps(cfg.checkpoint, pipeline)
  mngr = ckpt_lib.manager(storage.join(workdir, "checkpoints"), cfg.checkpoint.keep,
                          cfg.checkpoint.async_save,
                          keep_steps=epoch_saves if cfg.checkpoint.keep_epochs else ())
  iterator = pipeline.iterator()
  restored = ckpt_lib.restore_latest(mngr, abstract, model_config)
  warm = None
  if restored is not None:
    state, data_state, resumed_config = restored
    warm = resumed_config.get("warm_start")
    if data_state:
      iterator.set_state(data_state)
    if is_main:
      print(f"Resuming from step {int(jax.device_get(state.step))}", flush=True)
  else:
    state = state_lib.init_state(model, tx, jax.random.PRNGKey(cfg.train.seed), shardings)
    if cfg.init_from.path:
      state, warm = warm_start_lib.warm_start(cfg.init_from, state, model_config)
      if is_main:
        print(f"Warm start from {warm['path']} ({warm['mode']}"
              + (f", optimizer count {warm['optimizer_count']}" if warm["optimizer_count"]
                 else ", fresh optimizer") + ")", flush=True)
  if warm:
    saved_config["warm_start"] = warm
    tx, _ = optimizer(cfg.train, total_steps, warm_start_lib.lr_count_offset(warm))

  if is_main:  # after the restore: a run that refuses its workdir's checkpoint changes nothing
    write_config(workdir, saved_config)

  step_fns: dict[Optional[int], Any] = {}

  def step_fn(bp_steps, state, batch):
    """The compiled step for `bp_steps`; every process compiles it before any runs it."""
    if bp_steps not in step_fns:
      step_fns[bp_steps] = distributed.compile_everywhere(
          jit_train_step(model, tx, cfg.train, shardings, mesh, bp_steps), state, batch,
          name=f"train step, bp_steps={bp_steps}")
    return step_fns[bp_steps]

  step = int(jax.device_get(state.step))
  writer = metrics_lib.MetricWriter(workdir, resume_step=step,
                                    wandb_project=cfg.log.wandb_project,
                                    wandb_entity=cfg.log.wandb_entity,
                                    wandb_run_name=cfg.log.wandb_run_name, config=saved_config)
  peak = metrics_lib.peak_flops_per_device() * jax.device_count()
  tokens_per_batch = cfg.data.rows * cfg.data.row_len
  profile = range(cfg.profile.start_step, cfg.profile.start_step + cfg.profile.steps)
  health = jax.device_put(_HEALTHY, sharding_lib.replicated(mesh))  # on device: no sync
  last: dict[str, float] = {}
  window_start, window_steps = time.perf_counter(), 0
  preempted = False

  def check_finite():
    _raise_if_unhealthy(jax.device_get(health), cfg.train, workdir)

  def save(force: bool = False):
    check_finite()
    ckpt_lib.save(mngr, step, state, iterator.get_state(), saved_config, force=force)
    writer.sync()  # a bucket's copy of the logs keeps up with the checkpoints

  with _Preemption(mngr) as preemption:
    while step < stop_at:
      try:
        local = next(iterator)
      except StopIteration:
        logging.info("data exhausted at step %d", step)
        break
      if is_main and profile and step == profile.start:
        jax.profiler.start_trace(writer.local_dir("profile"))
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
               for k, v in local.items()}
      bp = bp_steps_at(step + 1, total_steps, model_config, bp_schedule)
      state, metrics = step_fn(bp, state, batch)(state, batch)
      health = _track_health(health, metrics["nonfinite"], np.int32(step + 1))
      step += 1
      window_steps += 1
      if is_main and profile and step == profile.stop:
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        writer.upload_dir("profile")
        print(f"Profiled steps {profile.start + 1}-{profile.stop}: "
              f"{storage.join(workdir, 'profile')}", flush=True)
      row: dict[str, float] = {}
      if step % cfg.log.every_steps == 0 or step == stop_at:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - window_start
        sec_per_step = elapsed / window_steps
        tokens_per_s = tokens_per_batch / sec_per_step
        flops_per_token = flops_lib.train_flops_per_token(model_config, cfg.data.row_len, bp)
        values.update(lr=float(schedule(step - 1)), bp_steps=bp, tokens_per_s=tokens_per_s,
                      mfu=flops_per_token * tokens_per_s / peak, step_time_s=sec_per_step,
                      skipped_steps=int(jax.device_get(health["skipped"])))
        last = row = values
        if is_main:
          print(metrics_lib.progress_line(step, stop_at, values, sec_per_step), flush=True)
        check_finite()
        window_start, window_steps = time.perf_counter(), 0
      if held_out and (step % cfg.eval_data.every_steps == 0 or step == stop_at):
        scores = held_out(state)
        row = {**row, **scores}
        if is_main:
          print(f"step {step}: held-out " + " | ".join(
              f"{k[len('eval_'):]} {v:.4f}" for k, v in scores.items()), flush=True)
        window_start = time.perf_counter()  # evaluation time is not training throughput
      if row:
        writer.write(step, row)
      if preemption.reached(step):
        save(force=True)
        ckpt_lib.wait(mngr, step)
        preempted = True
        if is_main:
          print(f"{'Interrupted' if preemption.interrupted else 'Preempted'}: saved step "
                f"{step}, exiting", flush=True)
        break
      every = cfg.checkpoint.every_steps
      if (every and step % every == 0) or step in epoch_saves:
        save()
    if not preempted and mngr.latest_step() != step:
      save(force=True)
    ckpt_lib.wait(mngr, step)  # inside: a second Ctrl-C during the write exits cleanly
  iterator.close()
  mngr.close()
  writer.close()
  return TrainResult(state=state, model_config=model_config, last_metrics=last,
                     steps_done=step, preempted=preempted, demo=demo,
                     interrupted=preemption.interrupted, execution=execution)
