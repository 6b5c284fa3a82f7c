"""Checkpoint cadence: epoch-end checkpoints kept (orbax preservation policy) while step
checkpoints rotate, over a real two-epoch demo run, and read back by step."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from hrm_jax import checkpoint_layout, data as data_lib, hf, native_weights, optim
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel
from hrm_jax.train import run_checkpoints as ckpt_lib
from hrm_jax.train import loop, warm_start
from hrm_jax.train import state as state_lib
from helpers import named, run
from helpers import tiny_config as tiny_model_config
from native_test import assert_trees_equal
from train_loop_test import TINY, tiny_config


def test_kept_steps_survive_rotation_and_restarts(tmp_path):
  state = {"x": jnp.arange(3.0)}
  with ckpt_lib.manager(str(tmp_path), keep=2, async_save=False, keep_steps={3}) as mngr:
    for step in range(1, 7):
      ckpt_lib.save(mngr, step, state, {}, {"model_config": {}})
    assert mngr.all_steps() == [3, 5, 6]
  with ckpt_lib.manager(str(tmp_path), keep=2, async_save=False, keep_steps={3}) as mngr:
    ckpt_lib.save(mngr, 7, state, {}, {"model_config": {}})
    assert mngr.all_steps() == [3, 6, 7]
  with ckpt_lib.manager(str(tmp_path), keep=2, async_save=False) as mngr:
    ckpt_lib.save(mngr, 8, state, {}, {"model_config": {}})
    assert mngr.all_steps() == [7, 8]  # without keep_steps, all rotate


def test_epoch_checkpoint_steps_every_n_epochs_and_the_last():
  pipeline = types.SimpleNamespace(steps_per_epoch=lambda e: 10 + e,
                                   sampled=types.SimpleNamespace(num_epochs=5))
  cfg = lambda every, keep: ml_collections.ConfigDict({"every_epochs": every,
                                                       "keep_epochs": keep})
  # epochs end at steps 10, 21, 33, 46, 60
  assert loop.epoch_checkpoint_steps(cfg(1, True), pipeline) == {10, 21, 33, 46, 60}
  assert loop.epoch_checkpoint_steps(cfg(2, False), pipeline) == {21, 46, 60}
  assert loop.epoch_checkpoint_steps(cfg(0, False), pipeline) == set()
  with pytest.raises(ValueError, match=r"--config.checkpoint.every_epochs=0 with "
                     r"checkpoint.keep_epochs=True: expected .* >= 1 to keep epoch"):
    loop.epoch_checkpoint_steps(cfg(0, True), pipeline)


def test_a_two_epoch_run_keeps_its_epoch_checkpoints(tmp_path):
  """The whole demo set twice through experiments/train.py, 64 x 256-token batches (3,000
  examples per task: 14 steps an epoch; one H and one L pass keep it quick). Step
  checkpoints every 3 steps rotate (keep 2); the ends of epoch 1 and 2 stay and are read
  back by step."""
  overrides = {**TINY, "data.demo_dir": str(tmp_path / "demo"), "model.H_cycles": 1,
               "model.L_cycles": 1, "data.rows": 64, "data.row_len": 256, "train.epochs": 2,
               "train.total_steps": 0, "log.every_steps": 5, "checkpoint.every_steps": 3,
               "checkpoint.keep": 2, "checkpoint.every_epochs": 1,
               "checkpoint.keep_epochs": True, "data.demo_per_task": 3000}
  cfg = tiny_config(tmp_path / "demo", **overrides)
  sampled, _ = loop.open_data(cfg)
  pipeline = data_lib.Pipeline(sampled, rows=cfg.data.rows, row_len=cfg.data.row_len,
                               seed=cfg.data.seed, target_only=cfg.data.target_only)
  first, second = np.cumsum([pipeline.steps_per_epoch(e) for e in range(2)])
  assert first > 3 and first % 3 and second % 3 and second - first > 3  # ends between saves
  workdir = tmp_path / "run"
  run("experiments/train.py", "--config=demo", f"--workdir={workdir}",
      *(f"--config.{k}={v}" for k, v in overrides.items()))
  mngr, latest, _ = checkpoint_layout.locate(workdir)
  # the data ran out after two epochs; both epoch ends kept, step saves rotated
  assert (mngr.all_steps(), latest) == ([first, second // 3 * 3, second], second)
  first_epoch = native_weights.load(workdir, step=int(first))
  assert not np.array_equal(first_epoch[1]["params"]["embed_tokens"],
                            native_weights.load(workdir)[1]["params"]["embed_tokens"])
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'hf'}",
      f"--step={first}")
  assert_trees_equal(hf.load(tmp_path / "hf")[1], first_epoch[1])


def test_a_checkpoint_with_one_optimizer_count_resumes_and_warm_starts(tmp_path, capsys):
  """Checkpoints written before per-tensor counts hold opt_state {count, mu, nu}. Resuming
  (and a full_state warm start) sets every tensor's count to that count and says so."""
  model_config = tiny_model_config(vocab_size=64)
  model = LanguageModel(model_config)
  tx = optim.adam_atan2(1e-3)
  mesh = sharding_lib.make_mesh((1, 1, 1), jax.devices()[:1])
  shardings = state_lib.state_shardings(model, tx, mesh)
  state = state_lib.init_state(model, tx, jax.random.PRNGKey(0), shardings)
  mu = jax.tree.map(lambda p: jnp.full_like(p, 0.5), state.params)
  old = state.replace(step=jnp.int32(7), opt_state=ckpt_lib.one_count_layout(
      state.opt_state._replace(count=jnp.int32(7), mu=mu)))
  saved = {"model_config": dataclasses.asdict(model_config), "config": {}}
  with ckpt_lib.manager(str(tmp_path / "checkpoints"), keep=1, async_save=False) as mngr:
    ckpt_lib.save(mngr, 7, old, {}, saved)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          state_lib.abstract_state(model, tx), shardings)
  with ckpt_lib.manager(str(tmp_path / "checkpoints"), keep=1, async_save=False) as mngr:
    restored, _, _ = ckpt_lib.restore_latest(mngr, abstract, model_config)
  counts = named(restored.opt_state.counts)
  assert counts == {k: 7 for k in named(state.params)}
  assert int(restored.opt_state.count) == 7
  np.testing.assert_array_equal(named(restored.opt_state.mu)["embed_tokens"], 0.5)
  assert "written before per-tensor optimizer counts" in capsys.readouterr().out
  init_from = ml_collections.ConfigDict(dict(path=str(tmp_path), step=-1, mode="full_state",
                                             use_ema=True))
  warm, record = warm_start.warm_start(init_from, state, model_config)
  assert named(warm.opt_state.counts) == counts and record["optimizer_count"] == 7
