"""One training update: loss over the global batch, optional micro-batching, Adam-atan2, EMA.

The loss is sum(CE over labelled tokens) / count(labelled tokens) of the whole global batch
(docs/reference.md#loss-and-metrics); micro-batches add their share of that sum, so
accumulating them gives exactly the full-batch gradient.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hrm_jax import loss as loss_lib
from hrm_jax import optim
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel
from hrm_jax.models.lm import head
from hrm_jax.train import grad_mask
from hrm_jax.train.state import TrainState

MODEL_KEYS = ("inputs", "positions", "segment_ids", "prefix_mask")
# Bits of metrics["nonfinite"]: 1 loss, 2 gradient norm, 4 parameter norm.
NONFINITE = ("loss", "grad_norm", "param_norm")


def _microbatch_sums(model: LanguageModel, loss_chunk: int, params, buffers, batch, bp_steps,
                     total_tokens):
  """Loss share and metric sums of one micro-batch; the loss is what gets differentiated.

  With loss_chunk > 0 the head and the loss run over sequence chunks, so the [B, S, V]
  logits (the largest activation at vocab 65,536) are never materialised.
  """
  variables = {"params": params, "buffers": buffers}
  inputs = {k: batch[k] for k in MODEL_KEYS}
  if loss_chunk:
    hidden = model.apply(variables, inputs, bp_steps=bp_steps, hidden_only=True)
    logits_fn = lambda h: head(model.config, model.execution).apply(
        {"params": params["lm_head"]}, h)
    _, m = loss_lib.chunked_loss_and_metrics(hidden, logits_fn, batch["labels"],
                                             batch["segment_ids"], loss_chunk)
  else:
    logits = model.apply(variables, inputs, bp_steps=bp_steps)
    _, m = loss_lib.loss_and_metrics(logits, batch["labels"], batch["segment_ids"])
  tokens = m["tokens"].astype(jnp.float32)
  examples = m["examples"].astype(jnp.float32)
  share = m["loss"] * tokens / jnp.maximum(total_tokens, 1.0)
  sums = {"loss": m["loss"] * tokens, "accuracy": m["accuracy"] * tokens,
          "exact_accuracy": m["exact_accuracy"] * examples, "tokens": tokens,
          "examples": examples}
  return share, sums


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: LanguageModel,
               tx: optax.GradientTransformation, bp_steps: Optional[int], microbatches: int,
               ema_decay: float, skip_nonfinite: bool,
               loss_chunk: int = 0) -> tuple[TrainState, dict[str, Any]]:
  """batch: [rows, seq] arrays (inputs, labels, positions, segment_ids, prefix_mask)."""
  total_tokens = jnp.sum(batch["labels"] != loss_lib.IGNORE_LABEL).astype(jnp.float32)
  loss_fn = functools.partial(_microbatch_sums, model, loss_chunk)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  rows = batch["labels"].shape[0]
  if rows % microbatches:
    raise ValueError(f"train.microbatches={microbatches} does not divide {rows} rows")
  # The tensors this step differentiates at bp_steps (static); the others are left alone by
  # the optimizer and the EMA, as the reference leaves a parameter whose grad is None.
  mb_batch = jax.tree.map(lambda x: x[:rows // microbatches], batch)
  has_grad = grad_mask.has_grad(
      lambda p, buffers, b, total: loss_fn(p, buffers, b, bp_steps, total)[0],
      state.params, state.buffers, mb_batch, total_tokens)

  if microbatches == 1:
    (_, sums), grads = grad_fn(state.params, state.buffers, batch, bp_steps, total_tokens)
  else:
    # Micro-batch i holds rows i, i + microbatches, ...: each device's rows (a contiguous
    # block of the batch sharding) stay on it, so splitting moves no data.
    split = jax.tree.map(
        lambda x: x.reshape(rows // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1),
        batch)

    def accumulate(carry, mb):
      grads_acc, sums_acc = carry
      (_, sums), grads = grad_fn(state.params, state.buffers, mb, bp_steps, total_tokens)
      return (jax.tree.map(jnp.add, grads_acc, grads),
              jax.tree.map(jnp.add, sums_acc, sums)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    zero_sums = {k: jnp.zeros([], jnp.float32)
                 for k in ("loss", "accuracy", "exact_accuracy", "tokens", "examples")}
    (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums), split)

  updates, opt_state = tx.update(grads, state.opt_state, state.params, has_grad=has_grad)
  params = optax.apply_updates(state.params, updates)
  ema = optim.ema_update(state.ema, params, ema_decay, has_grad)
  metrics = {
      **summed_metrics(sums),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "tokens": sums["tokens"],
  }
  # A step is bad if its loss or gradient is non-finite, or if it made the params so;
  # `nonfinite` says which (bits in NONFINITE order), so an error can name the quantity.
  bad = [~jnp.isfinite(metrics[k]) for k in NONFINITE]
  metrics["nonfinite"] = sum(b.astype(jnp.int32) << i for i, b in enumerate(bad))
  finite = metrics["nonfinite"] == 0
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
  if skip_nonfinite:
    keep = lambda new_x, old_x: jnp.where(finite, new_x, old_x)
    new = new.replace(params=jax.tree.map(keep, new.params, state.params),
                      opt_state=jax.tree.map(keep, new.opt_state, state.opt_state),
                      ema=jax.tree.map(keep, new.ema, state.ema))
  return new, metrics


def eval_sums(params, buffers, batch: dict[str, jax.Array], *, model: LanguageModel,
              loss_chunk: int = 0) -> dict[str, jax.Array]:
  """Loss and metric sums of a batch, forward only (every pass, no truncation needed);
  `summed_metrics` turns the sums of many batches into means."""
  _, sums = _microbatch_sums(model, loss_chunk, params, buffers, batch, None, 1.0)
  return sums


def summed_metrics(sums: dict[str, Any]) -> dict[str, Any]:
  """Means from sums: loss and accuracy per labelled token, exact accuracy per example."""
  tokens = jnp.maximum(sums["tokens"], 1.0)
  return {"loss": sums["loss"] / tokens, "accuracy": sums["accuracy"] / tokens,
          "exact_accuracy": sums["exact_accuracy"] / jnp.maximum(sums["examples"], 1.0)}


def optimizer(train_cfg: Any, total_steps: int, count_offset: int = 0
              ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam-atan2 and its warm-up + cosine lr schedule, from the config's `train` section.

  The schedule is a function of the run's own step; `count_offset` is Adam's count at that
  step 0 (a full_state warm start carries the source's count for the bias correction).
  """
  schedule = optim.warmup_cosine(train_cfg.lr, train_cfg.warmup_steps, total_steps,
                                 train_cfg.lr_min_ratio)
  lr = (lambda count: schedule(count - count_offset)) if count_offset else schedule
  return optim.adam_atan2(lr, train_cfg.b1, train_cfg.b2, train_cfg.weight_decay), schedule


def jit_train_step(model: LanguageModel, tx: optax.GradientTransformation, train_cfg: Any,
                   shardings: TrainState, mesh: Mesh, bp_steps: Optional[int]):
  """The jitted, state-donating step for one bp_steps; train_cfg is the config's `train`
  section (microbatches, ema_decay, skip_nonfinite, loss_chunk)."""
  fn = functools.partial(train_step, model=model, tx=tx, bp_steps=bp_steps,
                         microbatches=train_cfg.microbatches, ema_decay=train_cfg.ema_decay,
                         skip_nonfinite=train_cfg.skip_nonfinite,
                         loss_chunk=train_cfg.loss_chunk)
  # Traced with the mesh in context: the Pallas attention kernels shard_map over it.
  return jax.jit(sharding_lib.traced_in_mesh(fn, mesh),
                 in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding_lib.replicated(mesh)), donate_argnums=0)
