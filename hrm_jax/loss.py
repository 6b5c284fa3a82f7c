"""Cross-entropy over labelled tokens and the reference's metrics (REFERENCE section 3)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

IGNORE_LABEL = -100


def loss_and_metrics(logits_BxSxV: jax.Array, labels_BxS: jax.Array,
                     segment_ids_BxS: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """loss = sum of float32 CE over labelled tokens / their count (labels != -100).

  metrics: loss, accuracy (argmax == label over labelled tokens), exact_accuracy (share of
  examples, i.e. (row, segment) pairs with >= 1 label, whose labelled tokens are all right),
  and the counts `tokens` and `examples` to weight them when aggregating batches.
  """
  chex.assert_rank(logits_BxSxV, 3)
  chex.assert_equal_shape([labels_BxS, segment_ids_BxS, logits_BxSxV[..., 0]])
  logits = logits_BxSxV.astype(jnp.float32)
  valid = labels_BxS != IGNORE_LABEL
  safe_labels = jnp.where(valid, labels_BxS, 0)
  logz = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
  ce = jnp.where(valid, logz - label_logit, 0.0)
  count = valid.sum()
  denom = jnp.maximum(count, 1).astype(jnp.float32)
  loss = ce.sum() / denom

  correct = valid & (jnp.argmax(logits, axis=-1) == labels_BxS)
  # Per-example sums: examples are (row, segment id); segment ids are < seq length.
  batch, seq = labels_BxS.shape
  seg = jnp.clip(segment_ids_BxS, 0, seq - 1)
  rows = jnp.arange(batch)[:, None]
  n_valid = jnp.zeros((batch, seq), jnp.int32).at[rows, seg].add(valid.astype(jnp.int32))
  n_right = jnp.zeros((batch, seq), jnp.int32).at[rows, seg].add(correct.astype(jnp.int32))
  has_label = n_valid > 0
  n_examples = has_label.sum()
  exact = (has_label & (n_right == n_valid)).sum()
  metrics = {
      "loss": loss,
      "accuracy": correct.sum() / denom,
      "exact_accuracy": exact / jnp.maximum(n_examples, 1).astype(jnp.float32),
      "tokens": count,
      "examples": n_examples,
  }
  return loss, metrics
