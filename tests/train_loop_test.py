"""The training loop: exact resume (also after SIGTERM), demo learning, error handling."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import configs
from hrm_jax import data as data_lib
from hrm_jax.train import checkpoint as ckpt_lib
from hrm_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "model.hidden_size": 32, "model.num_heads": 2, "model.n_layers": 2,
    "model.bp_warmup_ratio": 0.0, "data.rows": 8, "data.row_len": 64, "train.epochs": 1,
    "train.total_steps": 8, "train.warmup_steps": 2, "log.every_steps": 1,
    "checkpoint.every_steps": 100, "checkpoint.async_save": False, "demo.show_answers": 0,
}


def tiny_config(demo_dir, **extra):
  cfg = configs.get("demo")
  for key, value in {**TINY, "data.demo_dir": str(demo_dir), **extra}.items():
    section, field = key.split(".")
    cfg[section][field] = value
  return cfg


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("demo")


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def straight(demo_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  result = loop.train(tiny_config(demo_dir, **{"train.max_steps": 6}), workdir)
  return result, read_metrics(workdir)


def test_resume_is_exact(demo_dir, tmp_path, straight):
  ref, ref_metrics = straight
  workdir = str(tmp_path)
  first = loop.train(tiny_config(demo_dir, **{"train.max_steps": 3}), workdir)
  assert first.steps_done == 3
  second = loop.train(tiny_config(demo_dir, **{"train.max_steps": 6}), workdir)
  assert second.steps_done == 6
  for a, b in zip(leaves(second.state), leaves(ref.state)):
    np.testing.assert_array_equal(a, b)
  metrics = read_metrics(workdir)  # appended across the restart
  assert [m["step"] for m in metrics] == list(range(1, 7))
  assert [m["loss"] for m in metrics] == [m["loss"] for m in ref_metrics]


def test_resume_after_sigterm_is_exact(demo_dir, tmp_path, straight):
  ref, ref_metrics = straight
  workdir = str(tmp_path)
  args = [f"--config.{k}={v}" for k, v in TINY.items()]
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), "--config=demo",
         f"--workdir={workdir}", f"--config.data.demo_dir={demo_dir}",
         "--config.train.max_steps=6", "--config.train.total_steps=8"] + args
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  metrics_file = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_file) and open(metrics_file).read().count("\n") >= 2:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out
  assert "Preempted: saved step" in out
  saved = ckpt_lib.manager(os.path.join(workdir, "checkpoints"), 3).latest_step()
  assert 2 <= saved < 6
  resumed = loop.train(tiny_config(demo_dir, **{"train.max_steps": 6}), workdir)
  for a, b in zip(leaves(resumed.state), leaves(ref.state)):
    np.testing.assert_array_equal(a, b)
  assert [m["loss"] for m in read_metrics(workdir)][-1] == ref_metrics[-1]["loss"]


def test_checkpoint_of_another_model_is_a_clear_error(demo_dir, tmp_path):
  workdir = str(tmp_path)
  loop.train(tiny_config(demo_dir, **{"train.max_steps": 1}), workdir)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="hidden_size: checkpoint 32 vs "
                     "config 64"):
    loop.train(tiny_config(demo_dir, **{"model.hidden_size": 64}), workdir)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="arch: checkpoint 'hrm' vs "
                     "config 'ut'"):
    loop.train(tiny_config(demo_dir, **{"model.arch": "ut"}), workdir)


def test_examples_longer_than_max_seq_len_are_refused_at_start(demo_dir, tmp_path):
  """Before: the model trained on positions past its max_seq_len (packed rows may be longer
  than the context, so row_len alone never caught it)."""
  data = data_lib.open_sampled(data_lib.ensure_demo_data(str(demo_dir), epochs=1).train_dir)
  longest = int(data.examples(0).lengths.max())
  with pytest.raises(ValueError, match=rf"epoch_0 example \d+ is {longest} tokens, longer than "
                     rf"the model's max_seq_len={longest - 1}"):
    loop.train(tiny_config(demo_dir, **{"model.max_seq_len": longest - 1}), str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before anything was written


def test_init_from_loads_weights_with_fresh_optimizer(demo_dir, tmp_path, straight):
  ref, _ = straight
  src = str(tmp_path / "src")
  loop.train(tiny_config(demo_dir, **{"train.max_steps": 2}), src)
  out = loop.train(tiny_config(demo_dir, **{"train.max_steps": 1, "init_from.path": src,
                                            "init_from.use_ema": False}), str(tmp_path / "dst"))
  assert int(out.state.step) == 1 and int(out.state.opt_state.count) == 1


def test_nonfinite_loss_stops_and_names_the_step(demo_dir, tmp_path):
  with pytest.raises(FloatingPointError, match="non-finite loss at step 1"):
    loop.train(tiny_config(demo_dir, **{"train.lr": float("nan"), "train.max_steps": 2}),
               str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))


def test_skip_nonfinite_keeps_params(demo_dir, tmp_path):
  out = loop.train(tiny_config(demo_dir, **{"train.lr": float("nan"), "train.max_steps": 2,
                                            "train.skip_nonfinite": True}), str(tmp_path))
  assert out.steps_done == 2 and np.isfinite(leaves(out.state.params)[0]).all()


def test_config_names_and_keys_are_checked():
  with pytest.raises(ValueError, match="valid names: .*'demo'.*'hrm1b'"):
    configs.path_of("hrm2b")
  with pytest.raises(ValueError, match="unknown config key 'train.lrr'.*'train.lr'"):
    configs.check_overrides(configs.get("demo"), ["--config.train.lrr=3"])
  cfg = configs.get("hrm1b")
  assert cfg.train.lr == 2.2e-4 and cfg.train.ema_decay == 0.9999 and cfg.model.size == "XL"
  assert cfg.data.rows * cfg.data.row_len == 196_608
  sft = configs.get("sft")
  assert (sft.train.lr, sft.train.lr_min_ratio, sft.train.warmup_steps,
          sft.train.epochs, sft.train.ema_decay) == (3e-5, 0.1, 0, 5, 0.999)
  assert sft.data.rows * sft.data.row_len == 32_768
  assert configs.get("hrm06b").train.lr == 2.5e-4


def test_train_cli_rejects_unknown_config():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train.py"),
                        "--config=nope"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode != 0 and "valid names" in out.stderr


def test_demo_config_loss_falls(demo_dir, tmp_path):
  """The real demo config (model, data, optimizer) for a few steps: the loss goes down."""
  cfg = configs.get("demo")
  cfg.data.demo_dir = str(demo_dir)
  cfg.train.max_steps = 12
  cfg.log.every_steps = 1
  cfg.checkpoint.async_save = False
  cfg.demo.show_answers = 0
  loop.train(cfg, str(tmp_path))
  losses = [m["loss"] for m in read_metrics(str(tmp_path))]
  assert len(losses) == 12 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
