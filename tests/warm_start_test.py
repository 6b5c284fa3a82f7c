"""init_from: full_state continues a run as if it had never stopped (the reference's SFT
default), ema_weights starts from its EMA with a fresh optimizer; bad input names the flag."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax import checkpoint_layout, data as data_lib, native_weights, optim
from hrm_jax.models import LanguageModel
from hrm_jax.train.bp_schedule import BpSchedule, bp_steps_at
from hrm_jax.train import loop, step as step_lib, warm_start
from helpers import tiny_model
from train_loop_test import leaves, tiny_config

SOURCE_STEPS = 3  # the source run's steps; it keeps a checkpoint of each
MORE = 2  # steps of the warm-started run
# The warm-started run's own hyperparameters (the source's: lr 2e-3 constant after 2 warm-up
# steps, EMA 0.99): its step counter starts at 0, so its warm-up starts again.
NEW = {"train.warmup_steps": 4, "train.ema_decay": 0.9, "train.b2": 0.9,
       "train.weight_decay": 0.05}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def source(demo_dir, tmp_path_factory):
  """(TrainResult, workdir) of a SOURCE_STEPS-step run with checkpoints 1..SOURCE_STEPS."""
  workdir = tmp_path_factory.mktemp("source")
  result = loop.train(tiny_config(demo_dir, **{
      "train.max_steps": SOURCE_STEPS, "checkpoint.every_steps": 1,
      "checkpoint.keep": SOURCE_STEPS}), str(workdir))
  return result, workdir


def warm(demo_dir, workdir, src, mode, steps, **extra):
  return loop.train(tiny_config(demo_dir, **{
      "train.max_steps": steps, "init_from.path": str(src), "init_from.mode": mode,
      **extra}), str(workdir))


def assert_close(a, b):
  """float32 updates of the same numbers, compiled apart: equal to float tolerance."""
  chex.assert_trees_all_close(jax.device_get(a), jax.device_get(b), rtol=1e-5, atol=1e-6)


def assert_equal(a, b):
  chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))


def continue_by_hand(state, cfg, model_config, steps):
  """The source's in-memory state stepped on by hand, as the reference's resume does: the
  new run's batches from its start, each update with the new config's lr at the new run's
  step s (given to a plain adam_atan2 as a number) and Adam's count continuing."""
  train = cfg.train
  sampled, _ = loop.open_data(cfg)
  pipeline = data_lib.Pipeline(sampled, rows=cfg.data.rows, row_len=cfg.data.row_len,
                               seed=cfg.data.seed, target_only=cfg.data.target_only)
  schedule = optim.warmup_cosine(train.lr, train.warmup_steps, train.total_steps,
                                 train.lr_min_ratio)
  model = LanguageModel(model_config, loop.execution_from(cfg))

  @functools.partial(jax.jit, static_argnums=3)
  def update(state, batch, lr, bp):
    tx = optim.adam_atan2(lr, train.b1, train.b2, train.weight_decay)
    return step_lib.train_step(state, batch, model=model, tx=tx, bp_steps=bp, microbatches=1,
                               ema_decay=train.ema_decay, skip_nonfinite=False,
                               loss_chunk=train.loss_chunk)[0]

  batches = pipeline.iterator()
  for s in range(steps):
    bp = bp_steps_at(s + 1, train.total_steps, model_config, BpSchedule.of(train))
    state = update(state, jax.tree.map(jnp.asarray, next(batches)), schedule(s), bp)
  return state


@pytest.fixture(scope="module")
def full_state_run(demo_dir, source, tmp_path_factory):
  """A full_state warm start of MORE steps from the source's last checkpoint."""
  _, src = source
  return warm(demo_dir, tmp_path_factory.mktemp("full_state"), src, "full_state", MORE, **NEW)


def test_full_state_continues_like_one_process(demo_dir, source, full_state_run):
  result, _ = source
  out = full_state_run
  cfg = tiny_config(demo_dir, **{"train.max_steps": MORE, **NEW})
  by_hand = continue_by_hand(jax.tree.map(jnp.copy, result.state), cfg, result.model_config,
                             MORE)
  assert int(out.state.step) == MORE  # the new run's counter: from 0, as the reference's
  assert int(out.state.opt_state.count) == SOURCE_STEPS + MORE  # Adam's: continued
  assert int(by_hand.opt_state.count) == SOURCE_STEPS + MORE
  for name in ("params", "opt_state", "ema", "buffers"):
    assert_close(getattr(out.state, name), getattr(by_hand, name))


def test_full_state_resumed_midway_keeps_its_schedule(demo_dir, source, full_state_run,
                                                      tmp_path):
  """The source's optimizer count is saved with the new run's checkpoints: stopping after
  one step and resuming (init_from is then ignored) ends where a straight run does."""
  _, src = source
  warm(demo_dir, tmp_path, src, "full_state", 1, **NEW)
  resumed = warm(demo_dir, tmp_path, "/nonexistent", "full_state", MORE, **NEW)
  assert checkpoint_layout.saved_config(tmp_path)["warm_start"]["optimizer_count"] == SOURCE_STEPS
  assert_equal(resumed.state, full_state_run.state)


def test_full_state_restores_everything_but_the_step_and_rng(demo_dir, source, tmp_path):
  result, src = source
  out = warm(demo_dir, tmp_path, src, "full_state", 0, **NEW)
  assert int(out.state.step) == 0
  for name in ("params", "opt_state", "ema", "buffers"):
    assert_equal(getattr(out.state, name), getattr(result.state, name))


def test_ema_weights_takes_the_ema_and_a_fresh_optimizer(demo_dir, source, tmp_path):
  result, src = source
  out = warm(demo_dir, tmp_path / "ema", src, "ema_weights", 0, **{"train.seed": 7})
  ema = jax.device_get(result.state.ema)
  assert not np.array_equal(ema["embed_tokens"], jax.device_get(result.state.params)[
      "embed_tokens"])
  for got in (out.state.params, out.state.ema):
    assert_equal(got, ema)
  # buffers (z_L_init) come from the source even when the new run's seed draws others
  assert_equal(out.state.buffers, result.state.buffers)
  assert int(out.state.opt_state.count) == 0
  assert all(not a.any() for a in leaves((out.state.opt_state.mu, out.state.opt_state.nu)))
  raw = warm(demo_dir, tmp_path / "raw", src, "ema_weights", 0, **{"init_from.use_ema": False})
  assert_equal(raw.state.params, result.state.params)


def test_init_from_step_picks_an_older_checkpoint(demo_dir, source, tmp_path):
  _, src = source
  out = warm(demo_dir, tmp_path, src, "ema_weights", 0, **{"init_from.step": 1})
  _, first = native_weights.load(src, use_ema=True, step=1)
  assert_equal(out.state.params, first["params"])


def test_bad_init_from_is_an_error_naming_the_flag(demo_dir, source, tmp_path):
  _, src = source
  with pytest.raises(warm_start.WarmStartError,
                     match=r"--config.init_from.path=/nonexistent .*no such directory"):
    warm(demo_dir, tmp_path / "a", "/nonexistent", "full_state", 1)
  with pytest.raises(warm_start.WarmStartError, match=r"--config.init_from.step=9 .*no "
                     r"checkpoint of step 9; it has steps 1, 2, 3"):
    warm(demo_dir, tmp_path / "b", src, "full_state", 1, **{"init_from.step": 9})
  with pytest.raises(checkpoint_layout.CheckpointMismatchError, match=r"--config.init_from.path=.*"
                     r"hidden_size: checkpoint 32 vs config 64"):
    warm(demo_dir, tmp_path / "c", src, "full_state", 1, **{"model.hidden_size": 64})
  with pytest.raises(warm_start.WarmStartError, match=r"--config.init_from.mode='last': "
                     r"expected one of \('ema_weights', 'full_state'\)"):
    warm(demo_dir, tmp_path / "d", src, "last", 1)
  config, variables = tiny_model(vocab_size=256, hidden_size=32, num_heads=2, n_layers=2)
  native_weights.save(tmp_path / "weights", config, variables)
  with pytest.raises(warm_start.WarmStartError, match=r"has no opt_state, ema \(a weights-only "
                     r"checkpoint.*--config.init_from.mode=ema_weights"):
    warm(demo_dir, tmp_path / "e", tmp_path / "weights", "full_state", 1)


def test_shapes_that_differ_under_the_same_model_config_are_named(source, tmp_path):
  """A checkpoint whose arrays disagree with its saved ModelConfig is refused by shape."""
  result, src = source
  fresh = result.state.replace(params={**result.state.params, "extra": jnp.zeros([3])})
  cfg = tiny_config(tmp_path, **{"init_from.path": str(src)}).init_from
  with pytest.raises(checkpoint_layout.CheckpointMismatchError,
                     match=r"--config.init_from.path=.*ema/extra: checkpoint None vs "
                     r"config \(3,\)"):
    warm_start.warm_start(cfg, fresh, result.model_config)
