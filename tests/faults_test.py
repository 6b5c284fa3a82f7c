"""What users do by accident (issue 28), tried on the real scripts: each ends in one clear
line, or is refused before any work, and loses nothing.

Every check runs the scripts as subprocesses; they are grouped per script run so that JAX
starts as few times as possible.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from hrm_jax import hf
from hrm_jax.data import demo
from helpers import ROOT, tiny_model

pytestmark = pytest.mark.slow  # every test spawns experiments/*.py

TINY = {
    "model.hidden_size": 32, "model.num_heads": 2, "model.n_layers": 2,
    "train.bp_warmup_ratio": 0.0, "data.rows": 8, "data.row_len": 64, "train.epochs": 1,
    "train.total_steps": 2000, "train.warmup_steps": 2, "log.every_steps": 1,
    "checkpoint.async_save": False, "demo.show_answers": 0,
}


def script(name, *args, env=None):
  cmd = [sys.executable, str(ROOT / "experiments" / name), *map(str, args)]
  env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
  return cmd, env


def run(name, *args, env=None):
  cmd, env = script(name, *args, env=env)
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


PROGRESS = re.compile(r"^\w+: +\d+%\|")  # a progress bar's redrawn line (tqdm)


def one_line_error(out, code, *needles):
  """The run exited `code` with exactly one stderr line besides progress bars,
  `SCRIPT: error: ...` naming all `needles`, and no traceback."""
  lines = [l for l in out.stderr.splitlines() if l.strip() and not PROGRESS.match(l)]
  assert out.returncode == code and len(lines) == 1, (out.returncode, out.stderr[-3000:])
  assert lines[0].startswith(f"{out.args[1].split('/')[-1]}: error: "), lines[0]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


def files_of(path):
  """{relative path: bytes} of everything under `path` (what a refused command must keep)."""
  path = pathlib.Path(path)
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
          if p.is_file()}


def logged_steps(workdir):
  return [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def train_args(workdir, demo_dir, **extra):
  flags = {**TINY, "data.demo_dir": demo_dir, **extra}
  return ["--config=demo", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in flags.items())]


def start_until_step(cmd, env):
  """Popen of a training run, stopped (SIGSTOP) once it has printed its first step line."""
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith("step "):
      proc.send_signal(signal.SIGSTOP)
      return proc, seen
  raise AssertionError("".join(seen) + proc.stderr.read())


def finish(proc, seen):
  out, err = proc.communicate(timeout=300)
  return "".join(seen) + out, err


def test_training_workdir_lock_interrupts_and_the_outputs_of_a_run(tmp_path):
  """Items 2, 3, 5, 6 (convert --to_hf), 12 (metrics on a restart, convert --step on a
  half-deleted step, orbax's read-only notice) and plot --out onto the run's metrics."""
  workdir, demo_dir = tmp_path / "run", tmp_path / "demo"
  cmd, env = script("train.py", *train_args(workdir, demo_dir, **{
      "train.max_steps": 6, "checkpoint.every_steps": 2, "checkpoint.keep": 2}))
  first, seen = start_until_step(cmd, env)
  try:
    before = files_of(workdir)
    second = run("train.py", *train_args(workdir, demo_dir, **{"train.lr": 1.0}))
    one_line_error(second, 1, f"--workdir={workdir} is in use by another training run",
                   f"pid {first.pid} on host")
    assert files_of(workdir) == before  # the refused run changed nothing
  finally:
    first.send_signal(signal.SIGCONT)
  out, err = finish(first, seen)
  assert first.returncode == 0 and "done: 6 steps" in out, out + err
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]
  assert logged_steps(workdir) == list(range(1, 7))

  # Ctrl-C: the step is saved (every_steps=0: no step checkpoints, so only this one), one
  # line says so, the exit status is 130, nothing else is printed and no temp dir is left.
  cmd, env = script("train.py", *train_args(workdir, demo_dir, **{
      "checkpoint.every_steps": 0, "checkpoint.keep": 3}))
  proc, seen = start_until_step(cmd, env)
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGCONT)
  out, err = finish(proc, seen)
  assert proc.returncode == 130, out + err
  saved = [l for l in out.splitlines() if l.startswith("Interrupted: saved step")]
  step = int(saved[0].split()[3].rstrip(","))
  assert err.strip() == ("Interrupted: saving a checkpoint after this step (Ctrl-C again to "
                         "exit now, without it)"), err
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["4", "6", str(step)]
  assert logged_steps(workdir) == list(range(1, step + 1))

  # Ctrl-C twice: out at once or after the save, never with a partial checkpoint.
  cmd, env = script("train.py", *train_args(workdir, demo_dir, **{
      "checkpoint.every_steps": 0, "checkpoint.keep": 10}))
  proc, seen = start_until_step(cmd, env)
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGCONT)
  for line in proc.stderr:
    if line.startswith("Interrupted: saving"):
      proc.send_signal(signal.SIGINT)
      break
  out, err = finish(proc, seen)
  assert proc.returncode == 130 and "Traceback" not in err, out + err
  assert not [n for n in os.listdir(workdir / "checkpoints") if not n.isdigit()]

  # Export, then export again with --overwrite through a symlink: the link stays and its
  # target gets the new export; nothing hidden is left beside either.
  target = tmp_path / "disk" / "export"
  out = run("convert.py", f"--from={workdir}", f"--to_hf={target}", "--step=4")
  assert out.returncode == 0 and not out.stderr, out.stderr  # no orbax "read only" notice
  link = tmp_path / "export_link"
  link.symlink_to(target)
  out = run("convert.py", f"--from={workdir}", f"--to_hf={link}", "--step=6", "--overwrite")
  assert out.returncode == 0, out.stderr
  assert link.is_symlink() and os.readlink(link) == str(target)
  assert os.listdir(tmp_path / "disk") == ["export"]
  assert sorted(os.listdir(tmp_path)) == ["demo", "disk", "export_link", "run"]

  # A deletion cut short (kill -9 while orbax removes old files in parallel): not listed,
  # and asked for by --step, one line.
  (workdir / "checkpoints" / "4" / "state" / "_METADATA").unlink()
  one_line_error(run("convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'x'}",
                     "--step=4"), 2, "the checkpoint of step 4 is incomplete",
                 "complete steps: 6, ")

  metrics = (workdir / "metrics.jsonl").read_bytes()
  one_line_error(run("plot.py", f"--workdir={workdir}", f"--out={workdir / 'metrics.jsonl'}",
                     "--overwrite"), 2, "is not a PNG image; refusing to replace it")
  assert (workdir / "metrics.jsonl").read_bytes() == metrics


def test_training_user_errors_are_one_line_and_create_nothing(tmp_path):
  """Items 3, 8, 9, 11: bad keys, values, flags and words (the other values:
  train_config_check_test.py; a workdir that is a file: workdir_lock_test.py)."""
  demo_dir, workdir = tmp_path / "demo", tmp_path / "run"
  cases = [
      (["--config.train.stepz=5"], "--config.train.stepz: unknown config key 'train.stepz'"),
      (["--config.checkpoint.keep=0"], "--config.checkpoint.keep=0: expected an integer >= 1"),
      (["--config.model.n_layers=3"], "ModelConfig.n_layers=3: must be even"),
      (["12", "steps"], "unexpected argument(s) '12' 'steps'"),
  ]
  for args, message in cases:
    flags = train_args(workdir, demo_dir, **{"train.max_steps": 1})
    one_line_error(run("train.py", *flags, *args), 2, message)
  assert not os.listdir(tmp_path)  # no workdir, no demo cache
  one_line_error(run("ablate.py", "--match=flop"), 2, "flag --match=flop: value should be "
                 "one of <params|flops>")


def test_inference_user_errors_and_quiet_start(tmp_path):
  """Items 4, 7, 8, 12 (temperature, seq_len), 13 (no accelerator: no plugin start-up
  noise without JAX_PLATFORMS)."""
  config, variables = tiny_model()
  model = tmp_path / "hf"
  hf.save(model, config, variables)
  data = tmp_path / "bench" / "gsm8k"
  data.mkdir(parents=True)
  (data / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
  a_file = tmp_path / "a_file"
  a_file.write_text("mine")
  one_line_error(run("generate.py", f"--checkpoint={model}", "--prompt=What", "is", "12*7?"),
                 2, "unexpected argument(s) 'is' '12*7?'", '--prompt="What is 12*7?"')
  one_line_error(run("generate.py", f"--checkpoint={model}", "--prompt=hi", "--temperature=nan"),
                 2, "--temperature=nan: expected a finite number >= 0")
  one_line_error(run("generate.py", f"--checkpoint={model}", "--prompt=hi"), 2,
                 "is a Hugging Face directory without tokenizer.json", "--tokenizer=PATH")
  one_line_error(run("eval.py", f"--checkpoint={model}", f"--data_dir={tmp_path / 'bench'}",
                     "--run_only=GSM8K", f"--output={a_file / 'results.json'}"), 2,
                 f"--output={a_file / 'results.json'}", "is not a directory")
  one_line_error(run("eval.py", f"--checkpoint={model}", f"--data_dir={tmp_path / 'bench'}",
                     "--run_only=GSM8K", "--limit=1", f"--output={tmp_path / 'r.json'}"), 2,
                 "--tokenizer=PATH")
  one_line_error(run("model_summary.py", "--seq_len=-5"), 2, "flag --seq_len=-5")
  quiet = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  cmd, _ = script("model_summary.py", "--sizes=B", "--archs=hrm")
  out = subprocess.run(cmd, env={**quiet, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and "| B | hrm |" in out.stdout, out.stderr
  assert not out.stderr, out.stderr  # no TPU / cuDNN start-up errors
  assert sorted(os.listdir(tmp_path)) == ["a_file", "bench", "hf"]


def test_prepare_data_bad_text_bad_tokenizer_and_symlinked_out(tmp_path):
  """Items 6 (prepare_data --overwrite onto a symlink) and 10."""
  tok = tmp_path / "tokenizer.json"
  demo.build_tokenizer().save(str(tok))
  good = tmp_path / "in.jsonl"
  good.write_text(json.dumps({"instruction": "1+1", "response": "2"}) + "\n")
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"instruction": "1+1", "response": "2"}) + "\n"
                 + '{"instruction": "x\\ud800", "response": "2"}\n')
  garbage = tmp_path / "garbage.json"
  garbage.write_text("not json")
  common = ["--epochs=1", "--workers=1"]
  one_line_error(run("prepare_data.py", f"--jsonl={bad}", f"--tokenizer={tok}",
                     f"--out={tmp_path / 'o'}", *common), 2,
                 f"{bad}:2: field 'instruction' holds '\\ud800' at character 1, a lone UTF-16 "
                 "surrogate")
  one_line_error(run("prepare_data.py", f"--jsonl={good}", f"--tokenizer={garbage}",
                     f"--out={tmp_path / 'o'}", *common), 2,
                 f"{garbage}: not a readable tokenizer.json")
  target = tmp_path / "disk" / "sft"
  assert run("prepare_data.py", f"--jsonl={good}", f"--tokenizer={tok}", f"--out={target}",
             *common).returncode == 0
  link = tmp_path / "sft"
  link.symlink_to(target)
  out = run("prepare_data.py", f"--jsonl={good}", f"--tokenizer={tok}", f"--out={link}",
            "--overwrite", "--epochs=2", "--workers=1")
  assert out.returncode == 0, out.stderr
  assert link.is_symlink() and os.readlink(link) == str(target)
  assert os.listdir(tmp_path / "disk") == ["sft"]
  assert sorted(n for n in os.listdir(target) if n.startswith("epoch_")) == ["epoch_0",
                                                                             "epoch_1"]
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
