"""The training loop: exact resume (also after SIGTERM), demo learning, error handling."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from experiments import configs
from hrm_jax import checkpoint_layout
from hrm_jax import data as data_lib
from hrm_jax.train import run_checkpoints as ckpt_lib
from hrm_jax.train import loop
from hrm_jax.train import metrics as metrics_lib
from helpers import as_test_process, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "model.hidden_size": 32, "model.num_heads": 2, "model.n_layers": 2,
    "train.bp_warmup_ratio": 0.0, "data.rows": 8, "data.row_len": 64, "train.epochs": 1,
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
  chex.assert_trees_all_equal(jax.device_get(second.state), jax.device_get(ref.state))
  metrics = read_metrics(workdir)  # appended across the restart
  assert [m["step"] for m in metrics] == list(range(1, 7))
  assert [m["loss"] for m in metrics] == [m["loss"] for m in ref_metrics]


@pytest.mark.slow  # spawns experiments/*.py
def test_resume_after_sigterm_is_exact(demo_dir, tmp_path, straight):
  ref, ref_metrics = straight
  workdir = str(tmp_path)
  args = [f"--config.{k}={v}" for k, v in TINY.items()]
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), "--config=demo",
         f"--workdir={workdir}", f"--config.data.demo_dir={demo_dir}",
         "--config.train.max_steps=6", "--config.train.total_steps=8"] + args
  env = as_test_process(dict(os.environ, PYTHONPATH=ROOT))  # as `straight`: same numbers
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
  # Quiet by default: the run's one-line summary, then progress lines; no INFO log lines
  # (absl's "I1202 03:16:04.687800 ..." prefix: orbax reports each save in ~60 of them).
  lines = out.splitlines()
  summary = [i for i, line in enumerate(lines) if line.startswith("hrm: ")]
  assert summary and "train_config.json" in lines[summary[0]], out[:3000]
  assert summary[0] < min(i for i, line in enumerate(lines) if line.startswith("step "))
  assert not re.search(r"^I\d{4} ", out, re.M), out[:3000]
  saved = ckpt_lib.manager(os.path.join(workdir, "checkpoints"), 3).latest_step()
  assert 2 <= saved < 6
  resumed = loop.train(tiny_config(demo_dir, **{"train.max_steps": 6}), workdir)
  chex.assert_trees_all_equal(jax.device_get(resumed.state), jax.device_get(ref.state))
  assert [m["loss"] for m in read_metrics(workdir)][-1] == ref_metrics[-1]["loss"]


def test_checkpoint_of_another_model_is_a_clear_error(demo_dir, tmp_path):
  workdir = str(tmp_path)
  loop.train(tiny_config(demo_dir, **{"train.max_steps": 1}), workdir)
  with pytest.raises(checkpoint_layout.CheckpointMismatchError,
                     match="hidden_size: checkpoint 32 vs config 64"):
    loop.train(tiny_config(demo_dir, **{"model.hidden_size": 64}), workdir)
  with pytest.raises(checkpoint_layout.CheckpointMismatchError, match="arch: checkpoint 'hrm' vs "
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


def test_nonfinite_stops_and_names_the_step_and_the_quantity(demo_dir, tmp_path):
  # lr nan: step 1's loss and gradient are finite, the parameters it makes are not.
  with pytest.raises(FloatingPointError, match="non-finite param_norm at step 1; stopping"):
    loop.train(tiny_config(demo_dir, **{"train.lr": float("nan"), "train.max_steps": 2}),
               str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))


def test_skip_nonfinite_keeps_params_and_counts_skips(demo_dir, tmp_path):
  out = loop.train(tiny_config(demo_dir, **{"train.lr": float("nan"), "train.max_steps": 2,
                                            "train.skip_nonfinite": True}), str(tmp_path))
  assert out.steps_done == 2 and np.isfinite(leaves(out.state.params)[0]).all()
  assert [m["skipped_steps"] for m in read_metrics(str(tmp_path))] == [1, 2]


def test_too_many_consecutive_skips_stop_the_run(demo_dir, tmp_path, capsys):
  """lr 1e30: every update overflows the parameter norm, so every step is skipped; the run
  must not 'finish' with its initial weights."""
  cfg = tiny_config(demo_dir, **{"train.lr": 1e30, "train.max_steps": 6,
                                 "train.skip_nonfinite": True, "train.max_consecutive_skips": 2})
  with pytest.raises(FloatingPointError, match=r"3 consecutive steps were skipped as non-finite "
                     r"\(the first at step 1: param_norm\), more than "
                     r"train.max_consecutive_skips=2"):
    loop.train(cfg, str(tmp_path))
  assert "skipped 3" in capsys.readouterr().out


def _truncate_an_array_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs if os.path.getsize(os.path.join(d, f)) > 1000]
  with open(max(files, key=os.path.getsize), "r+b") as f:
    f.truncate(100)


@pytest.mark.parametrize("damage", ["truncated array file", "missing item"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(demo_dir, tmp_path, straight,
                                                                 capsys, damage):
  ref, ref_metrics = straight
  workdir = str(tmp_path)
  loop.train(tiny_config(demo_dir, **{"train.max_steps": 3, "checkpoint.every_steps": 2}),
             workdir)
  newest = os.path.join(workdir, "checkpoints", "3")
  if damage == "missing item":
    shutil.rmtree(os.path.join(newest, "state"))
  else:
    _truncate_an_array_file(newest)
  capsys.readouterr()
  resumed = loop.train(tiny_config(demo_dir, **{"train.max_steps": 6}), workdir)
  out = capsys.readouterr().out
  assert f"WARNING: checkpoint {newest} cannot be restored" in out
  assert "Resuming from step 2" in out
  chex.assert_trees_all_equal(jax.device_get(resumed.state), jax.device_get(ref.state))
  assert [m["step"] for m in read_metrics(workdir)] == list(range(1, 7))


def test_metrics_of_steps_after_the_resumed_checkpoint_are_dropped(tmp_path):
  """What a kill -9 between a checkpoint and the next leaves: rows past the checkpoint and a
  torn last line; the resumed run logs those steps again, so they go."""
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
                  + '{"step": 6, "lo')
  metrics_lib.MetricWriter(str(tmp_path), resume_step=3).close()
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


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


@pytest.mark.slow  # spawns experiments/*.py
def test_train_cli_rejects_unknown_config():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train.py"),
                        "--config=nope"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode != 0 and "valid names" in out.stderr


def test_demo_config_loss_falls(demo_dir, tmp_path):
  """The README's demo command (model, data, optimizer) for a few steps, on one CPU device as
  on a laptop: the loss goes down."""
  run("experiments/train.py", "--config=demo", f"--workdir={tmp_path}",
      f"--config.data.demo_dir={demo_dir}", "--config.train.max_steps=12",
      "--config.log.every_steps=1", "--config.demo.show_answers=0")
  losses = [m["loss"] for m in read_metrics(str(tmp_path))]
  assert len(losses) == 12 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MiB tmpfs: room for one checkpoint of the tiny model (1.2 MB), not two."""
  mnt = tmp_path / "small_disk"
  mnt.mkdir()
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
  yield mnt
  subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_full_disk_while_saving_is_one_clear_error(demo_dir, small_disk):
  workdir = str(small_disk / "run")
  cfg = tiny_config(demo_dir, **{"train.max_steps": 3, "checkpoint.every_steps": 1,
                                 "checkpoint.async_save": True})
  with pytest.raises(ckpt_lib.CheckpointSaveError,
                     match=r"saving the checkpoint of step 2 in .*/run/checkpoints failed: no "
                           r"space left on device.*already written are intact \(1\)"):
    loop.train(cfg, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
  assert ckpt_lib.manager(os.path.join(workdir, "checkpoints"), 3).latest_step() == 1


def test_held_out_loss_and_profile_window(demo_dir, tmp_path):
  """eval_data: the EMA weights' loss on a second sampled directory (here the demo's own),
  equal to the model applied by hand; profile: a jax.profiler trace of one step."""
  from hrm_jax import data, loss_and_metrics
  from hrm_jax.models import LanguageModel
  sampled_dir = data.ensure_demo_data(str(demo_dir), epochs=1, seed=0).train_dir
  workdir = str(tmp_path)
  out = loop.train(tiny_config(demo_dir, **{
      "train.max_steps": 2, "eval_data.path": sampled_dir, "eval_data.every_steps": 2,
      "eval_data.max_batches": 1, "profile.start_step": 0, "profile.steps": 1}), workdir)
  rows = read_metrics(workdir)
  assert "eval_loss" not in rows[0] and {"eval_loss", "loss"} <= set(rows[1])
  batch = data.Pipeline(data.open_sampled(sampled_dir, epochs=1), rows=8, row_len=64).batch(0)
  variables = {"params": leaves_tree(out.state.ema), "buffers": leaves_tree(out.state.buffers)}
  logits = LanguageModel(out.model_config).apply(
      variables, {k: batch[k] for k in ("inputs", "positions", "segment_ids", "prefix_mask")})
  want, _ = loss_and_metrics(logits, batch["labels"], batch["segment_ids"])
  np.testing.assert_allclose(rows[1]["eval_loss"], float(want), rtol=1e-5)
  traces = [f for _, _, fs in os.walk(os.path.join(workdir, "profile")) for f in fs
            if f.endswith(".xplane.pb")]
  assert traces, os.listdir(workdir)


def leaves_tree(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))
