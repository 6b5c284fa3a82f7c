"""LanguageModel: numerics against an independent NumPy transcription, PrefixLM semantics,
dtypes and compilation behaviour."""

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import hrm_jax
from hrm_jax.train import bp_schedule
from helpers import numpy_forward, pack_rows, random_rows, tiny_config

SEQ = 16


@functools.lru_cache(maxsize=None)
def model_and_vars(arch: str = "hrm", **overrides):
  cfg = tiny_config(arch, **overrides)
  model = hrm_jax.LanguageModel(cfg)
  batch = random_rows(np.random.default_rng(0), 2, SEQ, cfg.vocab_size)
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), batch)
  return cfg, model, variables, jax.jit(model.apply)


@pytest.mark.parametrize("arch", hrm_jax.ARCHS)
def test_logits_match_numpy_reference(arch):
  cfg, _, variables, apply = model_and_vars(arch)
  batch = random_rows(np.random.default_rng(3), 2, SEQ, cfg.vocab_size)
  logits = np.asarray(apply(variables, batch))
  assert logits.shape == (2, SEQ, cfg.vocab_size) and logits.dtype == np.float32
  ref = numpy_forward(cfg, variables, batch)
  real = batch["segment_ids"] > 0
  np.testing.assert_allclose(logits[real], ref[real], rtol=1e-4, atol=1e-4)


def test_hl_cycles_other_than_2_3_match_numpy_reference():
  cfg, _, variables, apply = model_and_vars("hrm", H_cycles=3, L_cycles=2)
  batch = random_rows(np.random.default_rng(4), 2, SEQ, cfg.vocab_size)
  ref = numpy_forward(cfg, variables, batch)
  real = batch["segment_ids"] > 0
  np.testing.assert_allclose(np.asarray(apply(variables, batch))[real], ref[real],
                             rtol=1e-4, atol=1e-4)


# The reference's ablation switches, each alone and together, and H stacks set apart.
VARIANTS = {
    "causal": ("hrm", dict(attn_type="causal")),
    "post_norm": ("hrm", dict(norm_type="post")),
    "no_pos_emb": ("hrm", dict(pos_emb_type="none")),
    "all_three_ut": ("ut", dict(attn_type="causal", norm_type="post", pos_emb_type="none")),
    "H_override_hrm": ("hrm", dict(H_override="n_layers=1,expansion=13.0,norm_type=post")),
    "H_override_rins": ("rins", dict(H_override="n_layers=3,pos_emb_type=none,norm_eps=0.01")),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_model_options_match_numpy_reference(name):
  arch, options = VARIANTS[name]
  cfg, _, variables, apply = model_and_vars(arch, **options)
  batch = random_rows(np.random.default_rng(5), 2, SEQ, cfg.vocab_size)
  logits = np.asarray(apply(variables, batch))
  real = batch["segment_ids"] > 0
  np.testing.assert_allclose(logits[real], numpy_forward(cfg, variables, batch)[real],
                             rtol=1e-4, atol=1e-4)
  if "H_override" not in options:  # the option changes the function (same weights)
    base = cfg.replace(**{k: getattr(hrm_jax.ModelConfig, k) for k in options})
    assert np.abs(numpy_forward(base, variables, batch)[real] - logits[real]).max() > 1e-3


def test_H_override_shapes_the_H_stack_only():
  cfg, _, variables, _ = model_and_vars("hrm", H_override="n_layers=1,expansion=13.0")
  core = nn.unbox(variables["params"])["core"]
  kernel = lambda s: core[s]["layers"]["mlp"]["gate_up_proj"]["kernel"]
  assert kernel("H").shape[0] == 1 and kernel("L").shape[0] == cfg.layers_per_stack == 2
  assert kernel("H").shape[-1] > kernel("L").shape[-1]  # expansion 13 vs 4


def test_causal_prompt_token_never_sees_a_later_one():
  cfg, _, variables, apply = model_and_vars("hrm", attn_type="causal")
  a = np.asarray(apply(variables, _one_row([5, 6, 7, 8], [9, 10])))
  b = np.asarray(apply(variables, _one_row([5, 6, 7, 11], [9, 10])))
  np.testing.assert_array_equal(a[0, :3], b[0, :3])
  assert np.abs(a[0, 3:6] - b[0, 3:6]).max() > 1e-4


def _one_row(prompt, response, seq=SEQ):
  return pack_rows([[(prompt, response)]], seq)


def test_later_prompt_token_changes_earlier_prompt_logits():
  _, _, variables, apply = model_and_vars()
  a = _one_row([5, 6, 7, 8], [9, 10, 11])
  b = _one_row([5, 6, 7, 20], [9, 10, 11])
  la, lb = np.asarray(apply(variables, a)), np.asarray(apply(variables, b))
  for pos in range(3):  # prompt tokens before the change see it (bidirectional prefix)
    assert np.abs(la[0, pos] - lb[0, pos]).max() > 1e-4


def test_response_token_never_changes_logits_before_it():
  _, _, variables, apply = model_and_vars()
  a = _one_row([5, 6, 7], [9, 10, 11, 12, 13])
  b = _one_row([5, 6, 7], [9, 10, 30, 12, 13])
  la, lb = np.asarray(apply(variables, a)), np.asarray(apply(variables, b))
  np.testing.assert_array_equal(la[0, :5], lb[0, :5])
  assert np.abs(la[0, 5:8] - lb[0, 5:8]).max() > 1e-4


@pytest.mark.parametrize("arch", ["hrm", "transformer"])
def test_packed_examples_equal_each_alone(arch):
  _, _, variables, apply = model_and_vars(arch)
  ex1, ex2 = ([3, 4, 5], [6, 7, 8]), ([9, 10], [11, 12, 13, 14])
  packed = np.asarray(apply(variables, pack_rows([[ex1, ex2]], SEQ)))
  alone1 = np.asarray(apply(variables, pack_rows([[ex1]], SEQ)))
  alone2 = np.asarray(apply(variables, pack_rows([[ex2]], SEQ)))
  np.testing.assert_allclose(packed[0, :6], alone1[0, :6], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 6:12], alone2[0, :6], rtol=1e-5, atol=1e-5)


def test_padding_does_not_leak():
  _, _, variables, apply = model_and_vars()
  a = _one_row([3, 4, 5], [6, 7])
  b = {k: v.copy() for k, v in a.items()}
  b["inputs"][0, 5:] = 17  # different padding tokens and positions
  b["positions"][0, 5:] = np.arange(SEQ - 5)
  la, lb = np.asarray(apply(variables, a)), np.asarray(apply(variables, b))
  np.testing.assert_array_equal(la[0, :5], lb[0, :5])
  assert np.isfinite(la).all() and np.isfinite(lb).all()


def test_z_L_init_is_a_fixed_buffer_that_matters():
  cfg, _, variables, apply = model_and_vars()
  z = variables["buffers"]["core"]["z_L_init"]
  assert z.shape == (cfg.hidden_size,) and 0.5 < float(jnp.std(z)) < 1.5
  assert "z_L_init" not in str(jax.tree_util.tree_structure(variables["params"]))
  batch = _one_row([3, 4], [5, 6])
  zero = {**variables, "buffers": {"core": {"z_L_init": jnp.zeros_like(z)}}}
  assert np.abs(np.asarray(apply(variables, batch)) - np.asarray(apply(zero, batch))).max() > 1e-4


def _dot_input_dtypes(jaxpr) -> set:
  """Operand dtypes of every dot_general in a closed jaxpr, its sub-jaxprs (scans) included."""
  out = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out |= {v.aval.dtype for v in eqn.invars}
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out |= _dot_input_dtypes(sub)
  return out


def test_bfloat16_forward_is_finite_with_float32_logits():
  cfg = tiny_config("hrm")
  model = hrm_jax.LanguageModel(cfg, hrm_jax.Execution(dtype="bfloat16"))
  batch = random_rows(np.random.default_rng(0), 2, SEQ, cfg.vocab_size)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  logits = jax.jit(model.apply)(variables, batch)
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
  # The activations and every matmul really run in bfloat16 (attention scores aside: they
  # accumulate in float32 by preferred_element_type, their operands are bfloat16 too).
  hidden = jax.eval_shape(lambda v: model.apply(v, batch, hidden_only=True), variables)
  assert hidden.dtype == jnp.bfloat16 and hidden.shape == (2, SEQ, cfg.hidden_size)
  assert _dot_input_dtypes(jax.make_jaxpr(model.apply)(variables, batch).jaxpr) == {
      jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("arch", ["trm", "rins", "ut", "transformer", "trm_match_recurrence"])
def test_baselines_forward_and_backward(arch):
  cfg, model, variables, _ = model_and_vars(arch)
  batch = random_rows(np.random.default_rng(1), 2, SEQ, cfg.vocab_size)
  bp = bp_schedule.bp_steps_at(0, 100, cfg)

  @jax.jit
  def grads(params):
    return jax.grad(lambda p: model.apply({**variables, "params": p}, batch, bp_steps=bp)
                    .mean())(params)

  g = grads(variables["params"])
  for leaf in jax.tree_util.tree_leaves(g):
    assert np.isfinite(np.asarray(leaf)).all()
  assert float(jnp.abs(g["lm_head"]["kernel"].value).max()) > 0


def test_jit_compiles_once_per_bp_steps():
  cfg, model, variables, _ = model_and_vars()
  traces = []

  @functools.partial(jax.jit, static_argnums=2)
  def step(params, batch, bp_steps):
    traces.append(bp_steps)
    return jax.grad(lambda p: model.apply({**variables, "params": p}, batch,
                                          bp_steps=bp_steps).sum())(params)

  rng = np.random.default_rng(0)
  for bp in (2, 3, 2, 3, 2):
    step(variables["params"], random_rows(rng, 2, SEQ, cfg.vocab_size), bp)
  assert traces == [2, 3]


def test_batch_errors_are_clear():
  _, model, variables, _ = model_and_vars()
  batch = _one_row([1], [2, 3])
  with pytest.raises(KeyError, match="missing \\['prefix_mask'\\]"):
    model.apply(variables, {k: v for k, v in batch.items() if k != "prefix_mask"})
  with pytest.raises(TypeError, match="static Python int"):
    model.apply(variables, batch, bp_steps=2.0)
  with pytest.raises(ValueError, match="bp_steps must be >= 1"):
    model.apply(variables, batch, bp_steps=0)


@pytest.mark.parametrize("impl,chunk", [("chunked", 8), ("pallas_gpu", 16), ("pallas_tpu", 8)])
def test_attention_impls_match_dense_logits_and_grads(impl, chunk):
  # One stack pass keeps compiles short; Pallas kernels run interpreted on CPU; head_dim 16
  # and chunk 16 suit Triton's tiles.
  cfg, _, variables, apply = model_and_vars("transformer", n_layers=1)
  other = hrm_jax.LanguageModel(cfg, hrm_jax.Execution(attention_impl=impl,
                                                       attention_chunk=chunk))
  batch = random_rows(np.random.default_rng(5), 2, SEQ, cfg.vocab_size)
  w = jnp.asarray(np.random.default_rng(6).standard_normal((2, SEQ, cfg.vocab_size)),
                  jnp.float32)
  grad = lambda fn: jax.jit(jax.value_and_grad(lambda v: jnp.sum(fn(v, batch) * w)))
  (lo, go), (ld, gd) = grad(other.apply)(variables), grad(apply)(variables)
  np.testing.assert_allclose(float(lo), float(ld), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.jit(other.apply)(variables, batch)),
                             np.asarray(apply(variables, batch)), rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-5), go, gd)
