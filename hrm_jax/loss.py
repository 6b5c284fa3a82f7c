"""Masked cross-entropy and the reference's metrics (docs/reference.md#loss-and-metrics)."""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

IGNORE_LABEL = -100


def token_stats(logits_BxSxV: jax.Array, labels_BxS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(float32 cross-entropy [B, S], argmax == label [B, S]); both zero where unlabelled."""
  logits = logits_BxSxV.astype(jnp.float32)
  valid = labels_BxS != IGNORE_LABEL
  safe_labels = jnp.where(valid, labels_BxS, 0)
  logz = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
  ce = jnp.where(valid, logz - label_logit, 0.0)
  correct = valid & (jnp.argmax(logits, axis=-1) == labels_BxS)
  return ce, correct


def aggregate(ce_BxS: jax.Array, correct_BxS: jax.Array, labels_BxS: jax.Array,
              segment_ids_BxS: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """loss = sum(ce) / count(labelled), and the metrics, from per-token statistics.

  Examples are (row, segment id) pairs; an example counts for exact accuracy when it has at
  least one label, and is exact when all its labelled tokens are right.
  """
  valid = labels_BxS != IGNORE_LABEL
  count = valid.sum()
  denom = jnp.maximum(count, 1).astype(jnp.float32)
  loss = ce_BxS.sum() / denom
  batch, seq = labels_BxS.shape
  seg = jnp.clip(segment_ids_BxS, 0, seq - 1)  # segment ids are < seq length
  rows = jnp.arange(batch)[:, None]
  n_valid = jnp.zeros((batch, seq), jnp.int32).at[rows, seg].add(valid.astype(jnp.int32))
  n_right = jnp.zeros((batch, seq), jnp.int32).at[rows, seg].add(correct_BxS.astype(jnp.int32))
  has_label = n_valid > 0
  n_examples = has_label.sum()
  exact = (has_label & (n_right == n_valid)).sum()
  metrics = {
      "loss": loss,
      "accuracy": correct_BxS.sum() / denom,
      "exact_accuracy": exact / jnp.maximum(n_examples, 1).astype(jnp.float32),
      "tokens": count,
      "examples": n_examples,
  }
  return loss, metrics


def loss_and_metrics(logits_BxSxV: jax.Array, labels_BxS: jax.Array,
                     segment_ids_BxS: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """loss = sum of float32 CE over labelled tokens / their count (labels != -100).

  metrics: loss, accuracy (argmax == label over labelled tokens), exact_accuracy (share of
  examples, i.e. (row, segment) pairs with >= 1 label, whose labelled tokens are all right),
  and the counts `tokens` and `examples` to weight them when aggregating batches.
  """
  chex.assert_rank(logits_BxSxV, 3)
  chex.assert_equal_shape([labels_BxS, segment_ids_BxS, logits_BxSxV[..., 0]])
  return aggregate(*token_stats(logits_BxSxV, labels_BxS), labels_BxS, segment_ids_BxS)


def chunked_loss_and_metrics(hidden_BxSxD: jax.Array, logits_fn: Callable[[jax.Array], jax.Array],
                             labels_BxS: jax.Array, segment_ids_BxS: jax.Array,
                             chunk: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`loss_and_metrics` of logits_fn(hidden) without materialising [B, S, V] logits.

  A scan over sequence chunks computes each chunk's logits and statistics and drops them;
  the backward pass recomputes them chunk by chunk (memory O(B * chunk * V)).
  """
  b, s, d = hidden_BxSxD.shape
  chunk = min(chunk, s)
  if s % chunk:
    raise ValueError(f"loss chunk {chunk} must divide the row length {s}")
  n = s // chunk
  h_NxBxCxD = hidden_BxSxD.reshape(b, n, chunk, d).swapaxes(0, 1)
  labels_NxBxC = labels_BxS.reshape(b, n, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def stats(h_BxCxD, labels_BxC):
    return token_stats(logits_fn(h_BxCxD), labels_BxC)

  ce, correct = jax.lax.map(lambda xs: stats(*xs), (h_NxBxCxD, labels_NxBxC))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(b, s)
  return aggregate(unchunk(ce), unchunk(correct), labels_BxS, segment_ids_BxS)
