"""Rematerialisation: every policy and scope gives the same gradients as none, and saves
fewer residuals for the backward pass (counted from the traced program, not timed)."""

import functools

import chex
import jax
import numpy as np
import pytest

import hrm_jax
from helpers import random_rows, tiny_config

SEQ = 16


def _loss_fn(cfg, variables, batch, bp_steps, ex=hrm_jax.Execution()):
  model = hrm_jax.LanguageModel(cfg, ex)
  return lambda p: model.apply({**variables, "params": p}, batch, bp_steps=bp_steps).mean()


def _setup(**overrides):
  cfg = tiny_config("hrm", **overrides)
  batch = random_rows(np.random.default_rng(0), 2, SEQ, cfg.vocab_size)
  variables = jax.jit(hrm_jax.LanguageModel(cfg).init)(jax.random.PRNGKey(1), batch)
  return cfg, batch, variables


@functools.lru_cache(maxsize=None)
def _reference_grads(bp_steps):
  cfg, batch, variables = _setup()
  return jax.jit(jax.grad(_loss_fn(cfg, variables, batch, bp_steps)))(variables["params"])


@pytest.mark.parametrize("policy,scope,bp_steps", [("full", "layer", None), ("dots", "pass", None),
                                                   ("full", "pass", 3), ("proj", "layer", 3)])
def test_gradients_equal_no_remat(policy, scope, bp_steps):
  cfg, batch, variables = _setup()
  ref = _reference_grads(bp_steps)
  remat = hrm_jax.Execution(remat_policy=policy, remat_scope=scope)
  got = jax.jit(jax.grad(_loss_fn(cfg, variables, batch, bp_steps, remat)))(variables["params"])
  chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-6)  # float32: reassociation only


def _temp_bytes(cfg, ex, variables, batch):
  grad = jax.jit(jax.grad(_loss_fn(cfg, variables, batch, None, ex)))
  return grad.lower(variables["params"]).compile().memory_analysis().temp_size_in_bytes


def test_pass_scope_keeps_less_than_layer_scope_than_none():
  cfg, _, variables = _setup(n_layers=4)  # 2 layers/stack
  batch = random_rows(np.random.default_rng(0), 2, 128, cfg.vocab_size)  # activations dominate
  ex = lambda p, s: hrm_jax.Execution(remat_policy=p, remat_scope=s, unroll_scans=False)  # scans
  temps = {(p, s): _temp_bytes(cfg, ex(p, s), variables, batch)
           for p, s in [("none", "layer"), ("full", "layer"), ("full", "pass")]}
  assert temps[("full", "pass")] < temps[("full", "layer")] < temps[("none", "layer")], temps
