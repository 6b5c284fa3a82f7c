"""Which tensors a step differentiates, against the reference's autograd structure."""

import functools

import jax
import numpy as np
import pytest

from hrm_jax import loss as loss_lib
from hrm_jax.models import LanguageModel
from hrm_jax.train import grad_mask
from hrm_jax.train.step import _microbatch_sums
from helpers import group_of, named, random_rows, reference_has_grad, tiny_model

ARCHS = ("hrm", "trm", "transformer", "rins", "ut", "trm_match_recurrence")


@functools.lru_cache(maxsize=None)
def _batch():
  b = random_rows(np.random.default_rng(0), 2, 12, 61)
  b["labels"] = np.where(b["segment_ids"] > 0, np.roll(b["inputs"], -1, 1),
                         loss_lib.IGNORE_LABEL).astype(np.int32)
  return b


# Every arch with truncation on (2) and off (None); hrm's window also at 3 and 5, where its
# embedding starts getting a gradient.
CASES = [(arch, bp) for arch in ARCHS for bp in (2, None)] + [("hrm", 3), ("hrm", 5)]


@pytest.mark.parametrize("arch,bp_steps", CASES)
def test_has_grad_is_the_reference_grad_is_not_none(arch, bp_steps):
  cfg, variables = tiny_model(arch)
  model = LanguageModel(cfg)
  buffers = variables.get("buffers", {})
  loss = lambda p, buf, b: _microbatch_sums(model, 0, p, buf, b, bp_steps, 1.0)[0]
  mask = named(grad_mask.has_grad(loss, variables["params"], buffers, _batch()))
  expected = reference_has_grad(cfg, bp_steps)
  assert mask == {name: expected[group_of(name)] for name in mask}
  if not all(mask.values()):  # a tensor left out really gets an all-zero gradient
    grads = named(jax.jit(jax.grad(loss))(variables["params"], buffers, _batch()))
    for name, has in mask.items():
      assert has or not np.any(grads[name]), name


def test_a_zero_gradient_is_still_a_gradient():
  """Structural, not by value: a tensor multiplied by 0 is differentiated (torch gives it a
  zero grad, not None); one never read is not."""
  params = {"used": np.ones(3, np.float32), "times_zero": np.ones(2, np.float32),
            "unread": np.ones(4, np.float32)}
  loss = lambda p, x: (p["used"] * x).sum() + 0.0 * p["times_zero"].sum()
  assert grad_mask.has_grad(loss, params, np.ones(3, np.float32)) == {
      "used": True, "times_zero": True, "unread": False}
