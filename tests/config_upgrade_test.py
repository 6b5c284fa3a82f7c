"""Checkpoints written before the model config was split (issue 30) still load: their flat
ModelConfig JSON (dtypes, attention, remat, the bp_steps warm-up and every baseline's options
at the top level) is read as a ModelConfig, an Execution and the arch's options.

The fixtures (tests/fixtures/old_format, see its README) were written by the code before the
split; the tiny models in them are helpers.tiny_model's, so their weights are compared with
today's initialisation of the same config: the parameter layout did not change either (to
float32 rounding: the test processes compile at another XLA optimisation level than the
script that wrote them, conftest.py).
"""

import json
import pathlib
import shutil

import chex
import flax.linen as nn
import numpy as np
import pytest

import hrm_jax
from hrm_jax import checkpoint_layout, hf, model_loading, native_weights
from hrm_jax.execution import Execution
from hrm_jax.data import demo
from hrm_jax.models import registry
from hrm_jax.train import loop
from helpers import pack_rows, tiny_config, tiny_model
from train_loop_test import tiny_config as train_config

OLD = pathlib.Path(__file__).parent / "fixtures" / "old_format"
# The old run's settings (fixtures/old_format/README.md), as flags today.
RUN = {"train.max_steps": 3, "train.total_steps": 4, "model.attention_impl": "chunked",
       "train.bp_min_steps": 3, "model.max_seq_len": 256}  # the demo's context when saved


def _saved_model_config(where: pathlib.Path) -> dict:
  step_dir = next((where / "checkpoints").iterdir())
  return json.loads((step_dir / "config" / "metadata").read_text())["model_config"]


def test_the_fixtures_are_in_the_old_flat_format():
  for name in ("train_run", "native_ut", "native_trm"):
    saved = _saved_model_config(OLD / name)
    assert {"dtype", "attention_impl", "bp_min_steps", "cycles", "H_bp_steps"} <= set(saved)
    assert "options" not in saved


def test_old_flat_configs_upgrade_to_model_config_execution_and_options():
  ut = _saved_model_config(OLD / "native_ut")
  assert registry.model_config_from_dict(ut) == tiny_config("ut", cycles=3, bp_cycles=1)
  assert registry.execution_from_dict(ut) == Execution()
  trm = _saved_model_config(OLD / "native_trm")
  assert registry.model_config_from_dict(trm) == tiny_config("trm", H_bp_steps=2)
  assert registry.execution_from_dict(trm) == Execution(dtype="bfloat16", remat_policy="full")
  # Today's JSON reads back to the same config, options included.
  new = tiny_config("ut", cycles=3, bp_cycles=1)
  assert registry.model_config_from_dict(json.loads(json.dumps(new.to_dict()))) == new


@pytest.mark.parametrize("name,arch,options", [("native_ut", "ut", dict(cycles=3, bp_cycles=1)),
                                               ("native_trm", "trm", {})])
def test_old_native_checkpoints_load_with_the_same_weights(name, arch, options):
  config, variables = native_weights.load(OLD / name)
  want_config, want = tiny_model(arch, **options)
  if arch == "trm":
    want_config = registry.with_options(want_config, H_bp_steps=2)
  assert config == want_config
  chex.assert_trees_all_close({k: variables[k] for k in ("params", "buffers")},
                              nn.unbox({k: want[k] for k in ("params", "buffers")}),
                              rtol=1e-6, atol=1e-6)


def test_an_old_checkpoint_decodes_in_the_dtype_it_was_trained_in():
  config, execution, variables = model_loading.load_model(OLD / "native_trm")
  assert execution.dtype == "bfloat16"
  prompts = [[1, 2, 3], [4, 5]]
  assert hrm_jax.generate(config, variables, prompts, 3, execution=execution) == \
      hrm_jax.generate(config, variables, prompts, 3, execution=execution)


def test_an_old_hf_export_loads_with_the_same_logits():
  config, variables = hf.load(OLD / "hf_hrm")
  want_config, want = tiny_model("hrm")
  assert (config.layers_per_stack, config.hidden_size, config.H_cycles, config.L_cycles) == (
      want_config.layers_per_stack, want_config.hidden_size, 2, 3)
  batch = pack_rows([[([1, 2, 3], [4, 5])], [([6], [7, 8, 9])]], 8)
  np.testing.assert_allclose(hrm_jax.LanguageModel(config).apply(variables, batch),
                             hrm_jax.LanguageModel(want_config).apply(want, batch),
                             rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("demo")


def demo_v1(monkeypatch) -> None:
  """The demo data as the old run was trained on it (generator version 1: sums and products
  written the usual way, 4+4-digit sums, 3x2-digit products, arithmetic nested up to 3 deep,
  2,000 examples per task), so the run's saved data position still fits its data."""
  number = demo._number

  def arith(rng):
    expr, value = demo._arith_expr(rng, int(rng.integers(1, 4)))
    while len(expr) == 1:
      expr, value = demo._arith_expr(rng, int(rng.integers(1, 4)))
    return f"{expr}%10", str(value % 10)

  def add(rng):
    a, b = number(rng, 4), number(rng, 4)
    return f"{a}+{b}", str(a + b)

  def mul(rng):
    a, b = number(rng, 3), number(rng, 2)
    return f"{a}*{b}", str(a * b)

  monkeypatch.setattr(demo, "GENERATOR_VERSION", 1)
  monkeypatch.setattr(demo, "TASKS", {**demo.TASKS, "add": add, "mul": mul, "arith": arith})


def test_an_old_training_run_resumes(tmp_path, capsys, monkeypatch):
  """Its checkpoint's config item and train_config.json have the flat model config; the
  run resumes from its step 2 and rewrites train_config.json in today's form."""
  demo_v1(monkeypatch)
  workdir = tmp_path / "run"
  shutil.copytree(OLD / "train_run", workdir)
  cfg = train_config(tmp_path / "demo", **RUN, **{"data.demo_per_task": 2000})
  old = json.loads((workdir / loop.CONFIG_FILE).read_text())
  assert "execution" not in old and "bp_min_steps" in old["model_config"]
  vocab = loop.open_data(cfg)[0].vocab_size
  assert registry.model_config_from_dict(old["model_config"]) == loop.model_config_from(cfg,
                                                                                        vocab)
  assert native_weights.saved_execution(workdir) == loop.execution_from(cfg)
  result = loop.train(cfg, str(workdir))
  assert "Resuming from step 2" in capsys.readouterr().out
  assert result.steps_done == 3
  new = json.loads((workdir / loop.CONFIG_FILE).read_text())
  assert new["execution"]["attention_impl"] == "chunked"
  assert "dtype" not in new["model_config"] and new["config"]["train"]["bp_min_steps"] == 3


def test_an_old_checkpoint_of_another_model_is_still_refused(demo_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(OLD / "train_run", workdir)
  cfg = train_config(demo_dir, **{**RUN, "model.hidden_size": 64})
  with pytest.raises(checkpoint_layout.CheckpointMismatchError,
                     match="hidden_size: checkpoint 32 vs config 64"):
    loop.train(cfg, str(workdir))
