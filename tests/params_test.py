import jax
import jax.numpy as jnp
import pytest

import hrm_jax

N_STACKS = {"hrm": 2, "rins": 2, "transformer": 1, "trm": 1, "trm_match_recurrence": 1, "ut": 1}


def abstract_variables(config: hrm_jax.ModelConfig, seq: int = 8):
  batch = {k: jax.ShapeDtypeStruct((1, seq), jnp.int32)
           for k in ("inputs", "positions", "segment_ids")}
  batch["prefix_mask"] = jax.ShapeDtypeStruct((1, seq), jnp.bool_)
  return jax.eval_shape(hrm_jax.LanguageModel(config).init, jax.random.PRNGKey(0), batch)


def formula(c: hrm_jax.ModelConfig) -> int:
  d, m, hk = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim
  per_layer = 4 * hk * d + hk * d + 2 * d * m + m * d
  return 2 * c.vocab_size * d + N_STACKS[c.arch] * c.layers_per_stack * per_layer


def test_hrm1b_parameter_count():
  v = abstract_variables(hrm_jax.model_config("XL", "hrm", vocab_size=65536))
  assert hrm_jax.count_params(v["params"]) == 1_182_793_728
  assert hrm_jax.count_params(v["buffers"]) == 1536  # z_L_init, not trained


@pytest.mark.parametrize("size", list(hrm_jax.SIZES))
@pytest.mark.parametrize("arch", hrm_jax.ARCHS)
def test_counts_match_formula(size, arch):
  c = hrm_jax.model_config(size, arch)
  v = abstract_variables(c)
  assert hrm_jax.count_params(v["params"]) == formula(c)
  assert ("buffers" in v) == (arch != "transformer")


def test_params_carry_logical_axes():
  v = abstract_variables(hrm_jax.model_config("B", "hrm", n_layers=4, hidden_size=64,
                                              num_heads=4))
  boxed = jax.tree_util.tree_leaves(
      v["params"], is_leaf=lambda x: hasattr(x, "names"))
  assert boxed and all(hasattr(x, "names") for x in boxed)
  allowed = {"vocab", "embed", "heads", "head_dim", "mlp", "layers", None}
  for leaf in boxed:
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= allowed
  stacked = [x for x in boxed if x.value.ndim >= 3]
  assert all(x.names[0] == "layers" for x in stacked)
