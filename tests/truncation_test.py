"""Truncated backprop against a hand-unrolled model with explicit stop_gradients."""

import functools

import chex
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import hrm_jax
from hrm_jax import truncation
from hrm_jax.layers import Stack, make_seq_info
from hrm_jax.models import hrm, spec_of
from hrm_jax.train.bp_schedule import BpSchedule, bp_steps_at
from helpers import GRAD_WINDOWS, RECURSIONS, random_rows, tiny_config

SEQ = 12


def unrolled_logits(cfg, ex, variables, batch, bp_steps):
  """Python loops over passes (helpers.RECURSIONS); each pass outside the window
  (helpers.GRAD_WINDOWS, transcribed from docs/reference.md independently of the models'
  rules) is stop_gradient'ed by hand."""
  p = nn.unbox(variables["params"])
  seq = make_seq_info(cfg, ex, batch)
  run = lambda name, z: Stack(cfg.stack_config(name), ex).apply({"params": p["core"][name]}, z,
                                                                seq)[0]
  family = spec_of(cfg).family
  keep = (lambda tag: True) if bp_steps is None else GRAD_WINDOWS[family](cfg, bp_steps)
  gated = lambda name, z, tag: run(name, z) if keep(tag) else jax.lax.stop_gradient(run(name, z))
  x = jnp.take(p["embed_tokens"], batch["inputs"], axis=0) * cfg.embedding_scale
  z0 = None
  if "buffers" in variables:
    z0 = jnp.broadcast_to(variables["buffers"]["core"]["z_L_init"], x.shape)
  return RECURSIONS[family](cfg, x, z0, gated) @ p["lm_head"]["kernel"]


@functools.lru_cache(maxsize=None)
def setup(arch, unroll_scans=None, **overrides):
  cfg = tiny_config(arch, **overrides)
  ex = hrm_jax.Execution(unroll_scans=unroll_scans)
  model = hrm_jax.LanguageModel(cfg, ex)
  batch = random_rows(np.random.default_rng(0), 2, SEQ, cfg.vocab_size)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  w = jax.random.normal(jax.random.PRNGKey(9), (2, SEQ, cfg.vocab_size))
  real = jnp.asarray(batch["segment_ids"] > 0)[..., None]

  def objective(logits):  # a loss touching every real position's logits
    return jnp.sum(jnp.where(real, logits * w, 0.0))

  @functools.partial(jax.jit, static_argnums=1)
  def model_grads(params, bp):
    return jax.grad(lambda p: objective(model.apply({**variables, "params": p}, batch,
                                                    bp_steps=bp)))(params)

  @functools.partial(jax.jit, static_argnums=1)
  def reference_grads(params, bp):
    return jax.grad(lambda p: objective(unrolled_logits(cfg, ex, {**variables, "params": p},
                                                        batch, bp)))(params)

  return cfg, variables, model_grads, reference_grads


def assert_tree_close(a, b):
  chex.assert_trees_all_close(nn.unbox(a), nn.unbox(b), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("bp_steps", [2, 3, 4, 5, None])
def test_hrm_gradients_equal_hand_unrolled(bp_steps):
  _, variables, model_grads, reference_grads = setup("hrm")
  assert_tree_close(model_grads(variables["params"], bp_steps),
                    reference_grads(variables["params"], bp_steps))


@pytest.mark.parametrize("unroll", [False, True])  # scans of H cycles and L passes, or not
def test_hrm_other_cycles_gradients_equal_hand_unrolled(unroll):
  _, variables, model_grads, reference_grads = setup("hrm", H_cycles=3, L_cycles=2,
                                                     unroll_scans=unroll)
  for bp in (2, 4, 6):
    assert_tree_close(model_grads(variables["params"], bp),
                      reference_grads(variables["params"], bp))


@pytest.mark.parametrize("arch", ["trm", "trm_match_recurrence", "rins", "ut"])
def test_baseline_gradients_equal_hand_unrolled(arch):
  cfg, variables, model_grads, reference_grads = setup(arch)
  bp = bp_steps_at(0, 10, cfg)
  assert_tree_close(model_grads(variables["params"], bp),
                    reference_grads(variables["params"], bp))
  assert_tree_close(model_grads(variables["params"], None),
                    reference_grads(variables["params"], None))


def test_embedding_gets_no_gradient_at_bp2_only():
  _, variables, model_grads, _ = setup("hrm")
  g2 = model_grads(variables["params"], 2)
  assert float(jnp.abs(g2["embed_tokens"].value).max()) == 0.0
  for bp in (3, None):
    assert float(jnp.abs(model_grads(variables["params"], bp)["embed_tokens"].value).max()) > 0


def test_every_pass_contributes_without_truncation():
  # Gradients grow strictly with the window: the full gradient differs from bp_steps=5
  # (the first L passes carry gradient only when untruncated), and 5 differs from 4.
  _, variables, model_grads, _ = setup("hrm")
  L_kernel = lambda g: np.asarray(g["core"]["L"]["layers"]["mlp"]["down_proj"]["kernel"].value)
  full, g5, g4 = (L_kernel(model_grads(variables["params"], bp)) for bp in (None, 5, 4))
  assert np.abs(full - g5).max() > 1e-6 and np.abs(g5 - g4).max() > 1e-6


def test_grad_flags_match_reference_table():
  # H2 L3; execution order L0 L1 L2 H0 L3 L4 L5 H1.
  expected = {
      2: ([0, 0, 0, 0, 0, 1], [0, 1]),
      3: ([0, 0, 0, 0, 0, 1], [1, 1]),
      4: ([0, 0, 0, 0, 1, 1], [1, 1]),
      5: ([0, 0, 0, 1, 1, 1], [1, 1]),
  }
  for bp, (L, H) in expected.items():
    Lf, Hf = hrm.grad_flags(hrm_jax.model_config("B", H_cycles=2, L_cycles=3), bp)
    assert Lf.reshape(-1).astype(int).tolist() == L and Hf.astype(int).tolist() == H


def test_bp_steps_schedule():
  cfg = hrm_jax.model_config("B")  # bp 2 -> 5 over the first 20% of training
  got = [bp_steps_at(s, 1000, cfg) for s in (0, 66, 67, 100, 134, 199, 200, 999)]
  assert got == [2, 2, 3, 3, 4, 4, 5, 5]
  assert bp_steps_at(0, 1000, cfg, BpSchedule(warmup_ratio=0.0)) == 5  # SFT
  assert bp_steps_at(0, 10, hrm_jax.model_config("B", "ut")) == 2
  with pytest.raises(ValueError, match="bp_min_steps=1: arch 'hrm' needs >= 2"):
    bp_steps_at(0, 10, cfg, BpSchedule(min_steps=1))


def test_runs_and_hl_segments():
  assert truncation.runs(np.array([0, 0, 1, 1, 1], bool)) == [(2, False), (3, True)]
  assert truncation.runs(np.ones(4, bool)) == [(4, True)]
  # H3 L2, bp 4 (H_bp 3, L_bp 1): every H pass has gradient, only the last L pass does.
  segments = truncation.hl_segments(*hrm.window_flags(3, 2, 3, 1))
  assert [(n, L.tolist(), H) for n, L, H in segments] == [
      (2, [False, False], True), (1, [False, True], True)]
  # H2 L3, bp 5: a gradient-free L run then an H pass with gradient; then gradient throughout.
  segments = truncation.hl_segments(*hrm.window_flags(2, 3, 2, 3))
  assert [(n, L.tolist(), H) for n, L, H in segments] == [
      (1, [False] * 3, True), (1, [True] * 3, True)]
  segments = truncation.hl_segments(*hrm.window_flags(4, 3, 1, 1))
  assert [(n, L.tolist(), H) for n, L, H in segments] == [
      (3, [False] * 3, False), (1, [False, False, True], True)]


def _grad_fn(cfg, bp_steps, seq, ex=hrm_jax.Execution()):
  model = hrm_jax.LanguageModel(cfg, ex)
  batch = random_rows(np.random.default_rng(0), 2, seq, cfg.vocab_size)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  others = {k: v for k, v in variables.items() if k != "params"}
  grad = jax.grad(lambda p, o: model.apply({**o, "params": p}, batch, bp_steps=bp_steps).mean())
  return grad, (variables["params"], others)


@pytest.mark.parametrize("arch", ["hrm", "trm_match_recurrence", "rins", "ut"])
def test_gradient_selects_no_branch_on_a_traced_flag(arch):
  cfg = tiny_config(arch)
  grad, args = _grad_fn(cfg, bp_steps_at(0, 10, cfg), SEQ)
  assert "cond" not in _primitives(jax.make_jaxpr(grad)(*args).jaxpr), "a branch on a flag"


def _primitives(jaxpr) -> set[str]:
  """Names of the primitives of a jaxpr and of every sub-jaxpr (scan bodies, remat, ...)."""
  out = set()
  for eqn in jaxpr.eqns:
    out.add(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out |= _primitives(sub)
  return out


def _temp_bytes(cfg, bp_steps):
  # scans: what large models compile to; activations dominate the temporaries
  grad, args = _grad_fn(cfg, bp_steps, 128, hrm_jax.Execution(unroll_scans=False))
  return jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_compiled_gradient_memory_grows_with_the_window():
  cfg = tiny_config("hrm")
  temps = {bp: _temp_bytes(cfg, bp) for bp in (1, 5, None)}
  assert temps[1] < temps[5] < temps[None], temps


@pytest.mark.parametrize("arch", ["trm_match_recurrence", "rins", "ut"])
def test_baseline_truncation_saves_compiled_memory(arch):
  cfg = tiny_config(arch)
  truncated, full = (_temp_bytes(cfg, bp) for bp in (bp_steps_at(0, 10, cfg), None))
  assert truncated < full, (truncated, full)
