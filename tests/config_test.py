import dataclasses

import pytest

import hrm_jax
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.models import registry, rins, spec_of, trm, ut
from hrm_jax.train.bp_schedule import BpSchedule


def test_xl_preset_matches_reference():
  c = hrm_jax.model_config("XL")
  assert (c.n_layers, c.hidden_size, c.num_heads) == (32, 1536, 12)
  assert c.intermediate_size == 4096 and c.head_dim == 128 and c.layers_per_stack == 16
  assert (c.H_cycles, c.L_cycles, c.options) == (2, 3, None)
  assert c.norm_eps == 1e-6 and c.rope_theta == 10000.0
  assert c.max_seq_len == 4096 and c.vocab_size == 65536
  assert c.embedding_scale == pytest.approx(1536**0.5)


@pytest.mark.parametrize("size", list(hrm_jax.SIZES))
def test_every_size_has_head_dim_128(size):
  c = hrm_jax.model_config(size)
  assert c.head_dim == 128
  assert c.intermediate_size % 256 == 0
  assert abs(c.intermediate_size - 4 * c.hidden_size * 2 / 3) < 256


@pytest.mark.parametrize("arch,per_stack", [("hrm", 16), ("transformer", 32), ("trm", 32),
                                            ("trm_match_recurrence", 16), ("rins", 16),
                                            ("ut", 32)])
def test_layers_per_stack_by_arch(arch, per_stack):
  assert hrm_jax.model_config("XL", arch).layers_per_stack == per_stack


def test_the_model_config_holds_only_what_the_weights_compute():
  """Issue 30: execution, the bp_steps warm-up and per-baseline options are not top-level
  fields; each lives with its concern."""
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  assert len(names) <= 22
  moved = {"dtype", "param_dtype", "attention_impl", "attention_chunk", "remat_policy",
           "remat_scope", "unroll_scans", "bp_min_steps", "bp_max_steps", "bp_warmup_ratio",
           "H_bp_steps", "L_bp_steps", "L_bp_cycles", "cycles", "bp_cycles"}
  assert not names & moved
  assert {f.name for f in dataclasses.fields(Execution)} == moved - {
      "bp_min_steps", "bp_max_steps", "bp_warmup_ratio", "H_bp_steps", "L_bp_steps",
      "L_bp_cycles", "cycles", "bp_cycles"} | {"kv_cache_dtype"}
  assert set(registry.OPTION_FIELDS) == {"H_bp_steps", "L_bp_steps", "L_bp_cycles", "cycles",
                                         "bp_cycles"}
  hash(hrm_jax.model_config("B", "ut"))  # static arguments of jitted functions
  hash(Execution())


def test_baseline_options():
  c = hrm_jax.model_config("XL", "trm")
  assert (c.H_cycles, c.L_cycles, c.options) == (2, 1, trm.Options(H_bp_steps=1, L_bp_steps=1))
  tmr = hrm_jax.model_config("XL", "trm_match_recurrence")
  assert (tmr.H_cycles, tmr.L_cycles, tmr.options) == (2, 3, trm.Options(2, 3))
  r = hrm_jax.model_config("XL", "rins")
  assert (r.L_cycles, r.options) == (7, rins.Options(L_bp_cycles=4))
  u = hrm_jax.model_config("XL", "ut", cycles=3)
  assert u.options == ut.Options(cycles=3, bp_cycles=2)
  assert registry.with_options(u, bp_cycles=3).options == ut.Options(3, 3)
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['cycles'\] for arch 'hrm'"):
    hrm_jax.model_config("B", "hrm", cycles=3)
  with pytest.raises(ValueError, match="arch 'hrm' has no options"):
    spec_of(ModelConfig(options=ut.Options()))
  with pytest.raises(ValueError, match="arch 'ut' takes a hrm_jax.models.ut.Options"):
    spec_of(ModelConfig(arch="ut", half_layers=False, options=rins.Options()))


def test_execution_and_bp_schedule_check_their_values():
  for kwargs, match in ((dict(dtype="fp8"), "Execution.dtype='fp8'"),
                        (dict(attention_impl="magic"), "attention_impl='magic'"),
                        (dict(remat_policy="some"), "remat_policy='some'"),
                        (dict(attention_chunk=0), "attention_chunk=0"),
                        (dict(kv_cache_dtype="int8"), "kv_cache_dtype='int8'")):
    with pytest.raises(ValueError, match=match):
      Execution(**kwargs)
  assert Execution().cache_dtype == "float32"
  assert Execution(kv_cache_dtype="bfloat16").cache_dtype == "bfloat16"
  with pytest.raises(ValueError, match=r"bp_min_steps \(4\) <= bp_max_steps \(3\)"):
    BpSchedule(4, 3)
  with pytest.raises(ValueError, match="bp_warmup_ratio=1.5"):
    BpSchedule(warmup_ratio=1.5)


def test_an_archs_own_fields_are_checked_where_a_config_is_used():
  direct = ModelConfig(arch="rins", L_cycles=3, options=rins.Options(L_bp_cycles=5))
  with pytest.raises(ValueError, match=r"ModelConfig.options.L_bp_cycles=5 \(rins\): must be "
                     r"in \[0, L_cycles=3\]"):
    spec_of(direct)
  with pytest.raises(ValueError, match="ModelConfig.arch='lstm': unknown architecture"):
    spec_of(ModelConfig(arch="lstm"))
  with pytest.raises(ValueError, match="has no separate H stack"):
    spec_of(ModelConfig(arch="transformer", half_layers=False, H_override="n_layers=1"))


def test_explicit_shapes_are_kept():
  c = hrm_jax.model_config("B", intermediate_size=1000, head_dim=64)
  assert c.intermediate_size == 1000 and c.head_dim == 64
  # Derived values follow changed sizes in replace(), explicit ones win.
  assert c.replace(hidden_size=512, num_heads=4).head_dim == 128
  assert c.replace(hidden_size=512, head_dim=32).head_dim == 32


def test_init_types():
  c = hrm_jax.model_config("XL", init_type="megatron")
  stds = c.init_stds()
  assert stds["in"] == pytest.approx(1536**-0.5)
  assert stds["attn_out"] == pytest.approx(1536**-0.5 / (2 * 16) ** 0.5)
  f = hrm_jax.model_config("XL", init_type="fixed_normal")
  assert f.init_stds() == {"in": 0.02, "attn_out": 0.02, "ff_out": 0.02}
  assert f.embedding_scale == pytest.approx(50.0)
  lecun = hrm_jax.model_config("XL").init_stds()
  assert lecun["ff_out"] == pytest.approx(4096**-0.5)


def test_config_is_frozen():
  c = hrm_jax.model_config("B")
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.hidden_size = 3  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,match", [
    (dict(size="XS"), "unknown size 'XS'"),
    (dict(arch="lstm"), "unknown arch 'lstm'"),
    (dict(hiden_size=3), r"unknown field\(s\) \['hiden_size'\]"),
    (dict(hidden_size=1001), "hidden_size=1001 is not divisible by num_heads=8"),
    (dict(n_layers=13), "n_layers=13.*must be even"),
    (dict(dtype="bfloat16"), r"unknown field\(s\) \['dtype'\]"),
    (dict(init_type="xavier"), "init_type='xavier'"),
    (dict(arch="ut", bp_cycles=5), r"options.bp_cycles=5.*cycles=4"),
    (dict(arch="rins", L_bp_cycles=8), r"options.L_bp_cycles=8"),
    (dict(arch="trm", H_bp_steps=3), r"options.H_bp_steps=3"),
    (dict(attn_type="bidirectional"), "attn_type='bidirectional'"),
    (dict(norm_type="sandwich"), "norm_type='sandwich'"),
    (dict(pos_emb_type="alibi"), "pos_emb_type='alibi'"),
    (dict(H_override="hidden_size=64"), r"H_override='hidden_size=64'.*not field=value"),
    (dict(H_override="n_layers=two"), r"n_layers='two' is not a int"),
    (dict(H_override="norm_type=mid"), "norm_type='mid'"),
    (dict(H_override="n_layers=1,n_layers=2"), "n_layers is given twice"),
    (dict(arch="ut", H_override="n_layers=1"), "arch 'ut' has no separate H stack"),
])
def test_rejects_bad_values(kwargs, match):
  size = kwargs.pop("size", "B")
  arch = kwargs.pop("arch", "hrm")
  with pytest.raises(ValueError, match=match):
    hrm_jax.model_config(size, arch, **kwargs)


def test_transformer_accepts_odd_layers():
  assert hrm_jax.model_config("B", "transformer", n_layers=3).layers_per_stack == 3


def test_replace_rejects_unknown_field():
  with pytest.raises(ValueError, match="no field"):
    hrm_jax.model_config("B").replace(depth=3)


def test_H_override_is_canonical_text_and_builds_the_H_stack_config():
  c = hrm_jax.model_config("B", H_override={"norm_type": "post", "n_layers": 3})
  assert c.H_override == "n_layers=3,norm_type=post"
  assert c == hrm_jax.model_config("B", H_override=" norm_type=post , n_layers=3")
  h = c.stack_config("H")
  assert (h.layers_per_stack, h.norm_type, h.H_override) == (3, "post", "")
  assert c.stack_config("L") is c and c.layers_per_stack == 6
