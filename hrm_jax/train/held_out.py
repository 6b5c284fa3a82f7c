"""Held-out loss during training: a second sampled directory, scored every N steps.

The held-out rows are packed like training rows (same rows x row_len, so the step's
shardings serve), scored with the EMA weights (what evaluation and export use) over every
pass without truncation, and summed over at most `eval_data.max_batches` batches of its
first epoch; every process feeds its own rows.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hrm_jax import data as data_lib
from hrm_jax import errors
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel
from hrm_jax.train import distributed
from hrm_jax.train.state import TrainState
from hrm_jax.train.step import eval_sums, summed_metrics


class HeldOut:
  """`held_out(state)` -> {"eval_loss", "eval_accuracy", "eval_exact_accuracy"}."""

  def __init__(self, cfg: ml_collections.ConfigDict, model: LanguageModel,
               shardings: TrainState, mesh: Mesh, vocab_size: int):
    if cfg.eval_data.every_steps < 1:
      raise errors.ConfigError(f"--config.eval_data.every_steps={cfg.eval_data.every_steps}: "
                               "expected >= 1 when eval_data.path is set")
    sampled = data_lib.open_sampled(cfg.eval_data.path, epochs=1)
    if int(sampled.tokenizer_info["vocab_size"]) > vocab_size:
      raise errors.ConfigError(f"--config.eval_data.path={cfg.eval_data.path}: its tokenizer "
                               f"has {sampled.tokenizer_info['vocab_size']} ids, the model "
                               f"{vocab_size}")
    self.pipeline = data_lib.Pipeline(
        sampled, rows=cfg.data.rows, row_len=cfg.data.row_len, target_only=cfg.data.target_only,
        process_index=jax.process_index(), process_count=jax.process_count())
    self.max_batches = cfg.eval_data.max_batches
    self.batch_sharding = sharding_lib.batch_sharding(mesh)
    fn = functools.partial(eval_sums, model=model, loss_chunk=cfg.train.loss_chunk)
    self._sums = jax.jit(sharding_lib.traced_in_mesh(fn, mesh),
                         in_shardings=(shardings.ema, shardings.buffers, self.batch_sharding),
                         out_shardings=sharding_lib.replicated(mesh))
    self._compiled = None

  def __call__(self, state: TrainState) -> dict[str, float]:
    total: Any = None
    for i, local in enumerate(self.pipeline.iterator()):
      if self.max_batches and i >= self.max_batches:
        break
      batch = {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
               for k, v in local.items()}
      if self._compiled is None:
        self._compiled = distributed.compile_everywhere(
            self._sums, state.ema, state.buffers, batch, name="held-out loss")
      sums = self._compiled(state.ema, state.buffers, batch)
      total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
    if total is None:
      raise errors.ConfigError(f"{self.pipeline.sampled.path}: no full held-out batch of "
                               f"{self.pipeline.rows} x {self.pipeline.row_len} tokens")
    return {f"eval_{k}": float(v) for k, v in jax.device_get(summed_metrics(total)).items()}
