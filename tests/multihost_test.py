"""experiments/train.py as a real multi-process job: 2 processes x 2 CPU devices on localhost
(a coordinator on a free port, gloo collectives), against 1 process x 4 devices.

One workdir is carried through the life of a run: 2 processes train, 1 process resumes,
2 processes resume again and one of them gets SIGTERM, both are killed with -9 after a
checkpoint, and 2 processes finish the run with the demo report. Every step's loss must
equal the uninterrupted single-process run's (float reduction order across processes
differs, hence the tolerance), and metrics.jsonl holds each step once.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # every test spawns several JAX processes
STEPS = 8
TINY = {
    "model.hidden_size": 32, "model.num_heads": 2, "model.n_layers": 2,
    "model.unroll_scans": False, "train.bp_warmup_ratio": 0.0, "data.rows": 4,
    "data.row_len": 128, "train.epochs": 1, "train.total_steps": STEPS,
    "train.warmup_steps": 2, "log.every_steps": 1, "checkpoint.async_save": False,
    "demo.show_answers": 0,
}
TIMEOUT = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # Devices per process as JAX reads them; a persistent compilation cache so that each
  # relaunch does not compile the tiny model again.
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
             XLA_FLAGS="--xla_backend_optimization_level=0",
             JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def launch(workdir, demo_dir, cache, processes: int, devices: int, **overrides):
  """Start one train.py per process; returns the Popen objects (stdout+stderr to logs)."""
  flags = [f"--config.{k}={v}" for k, v in {**TINY, "data.demo_dir": demo_dir,
                                              **overrides}.items()]
  port = _free_port()
  procs = []
  for i in range(processes):
    dist = ([f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
             f"--process_id={i}"] if processes > 1 else [])
    log = open(os.path.join(os.path.dirname(workdir), f"{os.path.basename(workdir)}."
                            f"{len(os.listdir(os.path.dirname(workdir)))}.p{i}.log"), "w+")
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "experiments", "train.py"), "--config=demo",
         f"--workdir={workdir}", *dist, *flags],
        env=_env(devices, cache), stdout=log, stderr=subprocess.STDOUT, text=True))
    procs[-1].log = log
  return procs


def output(proc) -> str:
  proc.log.seek(0)
  return proc.log.read()


def finish(procs, expect_ok: bool = True) -> list[str]:
  """Wait for every process; their outputs. Kills all if one hangs past the timeout."""
  deadline = time.time() + TIMEOUT
  try:
    for p in procs:
      p.wait(timeout=max(1, deadline - time.time()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outs = [output(p) for p in procs]
  if expect_ok:
    for i, (p, out) in enumerate(zip(procs, outs)):
      assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-4000:]}"
  return outs


def run(workdir, demo_dir, cache, processes, devices, **overrides) -> list[str]:
  return finish(launch(workdir, demo_dir, cache, processes, devices, **overrides))


def metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def steps_saved(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for(predicate, procs, what: str, timeout: float = TIMEOUT) -> None:
  deadline = time.time() + timeout
  while not predicate():
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      raise AssertionError(f"gave up waiting for {what}:\n" +
                           "\n".join(output(p)[-3000:] for p in procs))
    time.sleep(0.2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from hrm_jax import data
  demo_dir = str(tmp_path_factory.mktemp("demo"))
  data.ensure_demo_data(demo_dir, epochs=1, seed=0)  # once, before processes race for it
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  reference = str(tmp_path_factory.mktemp("one_process") / "run")
  run(reference, demo_dir, cache, processes=1, devices=4)
  return demo_dir, cache, [m["loss"] for m in metrics(reference)]


def test_a_run_survives_hosts_coming_and_going(setup, tmp_path):
  demo_dir, cache, want = setup
  assert len(want) == STEPS
  workdir = str(tmp_path / "run")
  # 2 processes x 2 devices: the same losses as 1 process x 4 devices.
  run(workdir, demo_dir, cache, 2, 2, **{"train.max_steps": 3})
  assert steps_saved(workdir) == [3]
  # Resumed on 1 process (the data state is global, not per process).
  run(workdir, demo_dir, cache, 1, 4, **{"train.max_steps": 4})
  # Back on 2 processes; SIGTERM reaches process 1 only, as on a preempted VM: both save
  # the same step and exit 0.
  procs = launch(workdir, demo_dir, cache, 2, 2)
  wait_for(lambda: len(metrics(workdir)) >= 5, procs, "step 5")
  procs[1].send_signal(signal.SIGTERM)
  outs = finish(procs)
  saved = steps_saved(workdir)[-1]
  assert 5 <= saved < STEPS and f"Preempted: saved step {saved}" in outs[0], outs[0][-3000:]
  # kill -9 of both after the next checkpoint: the rerun resumes from it and rewrites
  # metrics.jsonl without the steps logged after it.
  procs = launch(workdir, demo_dir, cache, 2, 2, **{"checkpoint.every_steps": 1})
  wait_for(lambda: steps_saved(workdir)[-1] > saved, procs, "a new checkpoint")
  for p in procs:
    p.send_signal(signal.SIGKILL)
  finish(procs, expect_ok=False)
  # The end of the run on 2 processes, with the demo report over weights sharded across them.
  outs = run(workdir, demo_dir, cache, 2, 2, **{"demo.show_answers": 2})
  assert "Held-out exact match" in outs[0] and "| all |" in outs[0], outs[0][-3000:]
  assert f"experiments/generate.py --checkpoint={workdir}" in outs[0]  # what to try next
  assert "Held-out exact match" not in outs[1] and "Next:" not in outs[1]
  rows = metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r["loss"] for r in rows], want, rtol=2e-5)


def test_a_mesh_axis_across_processes_is_refused(setup, tmp_path):
  demo_dir, cache, _ = setup
  procs = launch(str(tmp_path / "run"), demo_dir, cache, 2, 2,
                 **{"mesh.shape": "(1,1,-1)"})
  outs = finish(procs, expect_ok=False)
  for p, out in zip(procs, outs):
    assert p.returncode != 0
    assert "--config.mesh.shape=(1, 1, -1)" in out and "'tensor' axis spans several " \
        "processes" in out, out[-3000:]
