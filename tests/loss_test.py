import chex
import jax.numpy as jnp
import numpy as np

import hrm_jax

IGN = hrm_jax.IGNORE_LABEL


def test_loss_is_sum_over_labelled_tokens_over_count():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 5, 7)).astype(np.float32)
  labels = np.array([[IGN, 3, 4, IGN, IGN], [1, IGN, 6, 2, IGN]])
  seg = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 2, 0]])
  loss, m = hrm_jax.loss_and_metrics(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(seg))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  valid = labels != IGN
  expected = -np.sum(np.where(valid, np.take_along_axis(logp, np.where(valid, labels, 0)[..., None],
                                                        -1)[..., 0], 0)) / valid.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(m["loss"]) == float(loss) and int(m["tokens"]) == 5


def test_accuracy_and_exact_accuracy_per_packed_example():
  v = 4
  # Row 0: example 1 labels [1, 2] (both right), example 2 labels [3, 0] (one wrong).
  # Row 1: example 1 has no labels (not counted), example 2 label [2] right.
  labels = np.array([[IGN, 1, 2, IGN, 3, 0], [IGN, IGN, IGN, 2, IGN, IGN]])
  seg = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 0, 0]])
  pred = np.array([[0, 1, 2, 0, 3, 1], [0, 0, 0, 2, 0, 0]])
  logits = np.eye(v, dtype=np.float32)[pred] * 5.0
  _, m = hrm_jax.loss_and_metrics(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(seg))
  assert int(m["tokens"]) == 5 and int(m["examples"]) == 3
  np.testing.assert_allclose(float(m["accuracy"]), 4 / 5)
  np.testing.assert_allclose(float(m["exact_accuracy"]), 2 / 3)


def test_no_labels_gives_zero_not_nan():
  logits = jnp.zeros((1, 3, 5))
  labels = jnp.full((1, 3), IGN)
  loss, m = hrm_jax.loss_and_metrics(logits, labels, jnp.ones((1, 3), jnp.int32))
  assert float(loss) == 0.0 and float(m["exact_accuracy"]) == 0.0


def test_chunked_loss_equals_full_loss_and_gradients():
  import jax
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.standard_normal((2, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 11)), jnp.float32)
  labels = jnp.asarray(np.where(rng.random((2, 8)) < 0.6, rng.integers(0, 11, (2, 8)), IGN))
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 2, 2, 2]])

  def full(h, w):
    return hrm_jax.loss_and_metrics(h @ w, labels, seg)

  def chunked(h, w):
    return hrm_jax.loss.chunked_loss_and_metrics(h, lambda x: x @ w, labels, seg, chunk=2)

  (lf, mf), gf = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(hidden, w)
  (lc, mc), gc = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, w)
  np.testing.assert_allclose(float(lc), float(lf), rtol=1e-6)
  for k in mf:
    np.testing.assert_allclose(float(mc[k]), float(mf[k]), rtol=1e-6)
  chex.assert_trees_all_close(gc, gf, rtol=1e-5, atol=1e-6)
