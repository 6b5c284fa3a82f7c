"""Fields shared by every training config; each named config edits a copy of this.

`model` holds the preset `size` and `arch` plus, to override (None = the preset's value,
vocab_size None = the data's tokenizer vocabulary rounded up to 256): any ModelConfig field,
any arch option (checked against the arch: e.g. `cycles` is ut's), and the Execution
settings (dtype, attention, remat). The bp_steps warm-up is `train`'s.
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from hrm_jax.config import ModelConfig
from hrm_jax.data import demo
from hrm_jax.execution import Execution
from hrm_jax.models import REGISTRY


def _placeholders(cls: type, skip: tuple[str, ...] = ()) -> dict[str, config_dict.FieldReference]:
  """A None placeholder of each field's type (Optional[X]: X) of a config dataclass."""
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    kind = hints[f.name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    out[f.name] = config_dict.placeholder(args[0] if args else kind)
  return out


def model_section(size: str, arch: str) -> ml_collections.ConfigDict:
  section: dict = {"size": size, "arch": arch}
  options = sorted({s.options for s in REGISTRY.values() if s.options}, key=lambda c: c.__module__)
  for cls in (ModelConfig, *options, Execution):
    section.update(_placeholders(cls, skip=("arch", "options")))
  return ml_collections.ConfigDict(section)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = model_section("XL", "hrm")
  c.data = ml_collections.ConfigDict(dict(
      source="path",        # 'path' (a data_io sampled directory) or 'demo'
      path="",
      demo_dir="~/.cache/hrm_jax/demo",
      demo_per_task=demo.TRAIN_PER_TASK,  # source 'demo': distinct training examples per task
      rows=16,              # global rows per batch (the reference's data-parallel ranks)
      row_len=12288,        # tokens per row: 16 x 12,288 = 196,608 tokens per batch
      seed=0,
      target_only=True,
      plan_cache="",        # a directory to keep epoch plans in across restarts ("" = off)
  ))
  c.train = ml_collections.ConfigDict(dict(
      lr=2.2e-4, b1=0.9, b2=0.95, weight_decay=0.1, ema_decay=0.9999,
      warmup_steps=2000, lr_min_ratio=1.0, epochs=4,
      total_steps=0,        # 0 = epochs * total_length // global batch tokens (reference)
      max_steps=-1,         # stop early after this many steps (-1 = run to total_steps)
      microbatches=1, seed=0,
      skip_nonfinite=False,  # skip (do not apply) steps with a non-finite loss/grad/params
      max_consecutive_skips=10,  # with skip_nonfinite: more skipped steps in a row stop
      loss_chunk=1024,      # tokens per head+loss chunk (0 = materialise all logits)
      # hrm's truncated-backprop warm-up: bp_steps goes bp_min -> bp_max over the first
      # bp_warmup_ratio of training (hrm_jax/train/bp_schedule.py)
      bp_min_steps=2, bp_max_steps=5, bp_warmup_ratio=0.2,
  ))
  # (data, fsdp, tensor) inside a slice; dcn_shape: slices per axis (multi-slice TPU, GPU
  # hosts over a slower network), e.g. (2, 1, 1) for data parallelism over two slices.
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), dcn_shape=(1, 1, 1)))
  # A checkpoint every `every_steps` steps (the newest `keep` kept) and at the end of every
  # `every_epochs`-th epoch and the last (0 = off); keep_epochs: never delete those.
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True,
                                                every_epochs=0, keep_epochs=False))
  # Every `every_steps`: a progress line, a metrics.jsonl row, TensorBoard scalars and, with
  # wandb_project set (pip install 'hrm_jax[wandb]'), Weights & Biases (docs/logging.md).
  c.log = ml_collections.ConfigDict(dict(every_steps=10, wandb_project="", wandb_entity="",
                                         wandb_run_name=""))
  # jax.profiler trace of steps start_step+1 .. start_step+steps into <workdir>/profile
  # (process 0; view with TensorBoard's profile plugin or Perfetto). steps=0: off.
  c.profile = ml_collections.ConfigDict(dict(start_step=10, steps=0))
  # Held-out loss of the EMA weights on a second sampled directory every `every_steps`
  # (at most max_batches batches of its first epoch; 0 = all). path "": off.
  c.eval_data = ml_collections.ConfigDict(dict(path="", every_steps=500, max_batches=20))
  # Warm start from another run's checkpoint (docs/warm_start.md): mode "ema_weights" (its
  # EMA, or params with use_ema False; fresh optimizer) or "full_state" (params, optimizer
  # state, EMA); step: which of its checkpoints (-1 = the latest).
  c.init_from = ml_collections.ConfigDict(dict(path="", use_ema=True, mode="ema_weights",
                                               step=-1))
  c.demo = ml_collections.ConfigDict(dict(show_answers=0))
  # experiments/ablate.py: the training budget of each run (0 = train.total_steps, else the
  # data's epochs), checkpoints evaluated along it, held-out examples per task.
  c.ablate = ml_collections.ConfigDict(dict(total_steps=0, eval_points=4, eval_per_task=64))
  return c
