"""Ahead-of-time compilation of the real train step for a TPU slice and for H100s, from this
CPU (compile-only devices; libtpu and the CUDA PJRT plugin come from requirements-aot.txt)."""

import jax
import pytest

from experiments import configs
from hrm_jax import params as params_lib
from hrm_jax.models import LanguageModel
from hrm_jax.train import aot, loop
from hrm_jax.train import state as state_lib


def _tiny_config():
  cfg = configs.get("hrm1b")
  with cfg.unlocked():
    cfg.model.update(size="B", hidden_size=128, num_heads=2, n_layers=4, vocab_size=512,
                     max_seq_len=128, dtype="bfloat16", remat_policy="full")
    cfg.data.update(rows=4, row_len=128)
    cfg.train.loss_chunk = 64
  return cfg


@pytest.mark.parametrize("target,topology,kind", [("tpu", "v5p:2x2x1", "TPU v5"),
                                                  ("gpu", "1x1x4", "NVIDIA H100 80GB HBM3")])
def test_train_step_compiles_for_accelerator(target, topology, kind):
  cfg = _tiny_config()
  devices = aot.compile_only_devices(target, topology, "h100")
  assert len(devices) == 4 and devices[0].device_kind == kind
  model_config = loop.model_config_from(cfg, 512)
  compiled = aot.compile_train_step(cfg, model_config, devices, cfg.train.bp_max_steps)
  rep = aot.report(compiled, devices)
  # Arguments: f32 params, two Adam moments and the EMA, FSDP-sharded over 4 devices, plus
  # the batch and TPU tile padding; a replicated (unsharded) state would be 4x state_bytes.
  n = params_lib.count_params(jax.eval_shape(
      LanguageModel(model_config).init, jax.random.PRNGKey(0),
      state_lib.example_batch(1, 8))["params"])
  state_bytes = 4 * n * 4 / 4
  assert state_bytes <= rep.arguments < 2 * state_bytes, rep
  assert rep.temporaries > 0 and rep.total == rep.arguments + rep.outputs + rep.temporaries \
      - rep.aliased
  assert rep.aliased > 0.9 * state_bytes  # the donated state is updated in place


def test_unknown_targets_are_clear_errors():
  with pytest.raises(ValueError, match="--gpu='a100'.*h100"):
    aot.gpu_target_config("a100")
  with pytest.raises(ValueError, match="--target='ipu'"):
    aot.compile_only_devices("ipu", "")
  assert "major: 9" in aot.gpu_target_config("h200")


def test_train_step_compiles_for_two_tpu_slices():
  """Multi-slice: data parallel over two v5p slices (DCN), FSDP inside each."""
  cfg = _tiny_config()
  with cfg.unlocked():
    cfg.mesh.update(shape=(1, -1, 1), dcn_shape=(2, 1, 1))
    cfg.data.rows = 8  # one row per chip
  devices = aot.compile_only_devices("tpu", "v5p:2x2x1", slices=2)
  assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
  model_config = loop.model_config_from(cfg, 512)
  compiled = aot.compile_train_step(cfg, model_config, devices, cfg.train.bp_max_steps)
  mesh_devices = compiled.input_shardings[0][1]["inputs"].mesh.devices
  # data axis = the slices; fsdp = the 4 chips of one slice.
  assert mesh_devices.shape == (2, 4, 1)
  assert [{d.slice_index for d in row.flat} for row in mesh_devices] == [{0}, {1}]
