"""Data, workdirs, checkpoints and logs in buckets, against real servers on localhost: moto's
S3 server and the GCS emulator (tests/object_stores.py), each started by the tests.

Each test runs against both stores. The fast ones use the library in this process; the slow
ones run the scripts as a user does: training with --workdir and data in the bucket, killed
with -9 after a checkpoint and resumed, then generate and convert reading that checkpoint,
and a two-process job writing one bucket. Every script runs in an empty folder that must stay
empty: nothing may create a local directory named after the URL.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import object_stores
from hrm_jax import atomic, storage
from hrm_jax.data import demo, open_sampled
from hrm_jax.data.pipeline import Pipeline
from helpers import ROOT

STORES = ("s3", "gcs")
TINY = {
    "model.hidden_size": 32, "model.num_heads": 2, "model.n_layers": 2,
    "train.bp_warmup_ratio": 0.0, "data.rows": 8, "data.row_len": 64, "train.epochs": 1,
    "train.total_steps": 30, "train.warmup_steps": 2, "log.every_steps": 5,
    "checkpoint.every_steps": 10, "checkpoint.keep": 3, "checkpoint.async_save": False,
}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return demo.ensure_demo_data(str(tmp_path_factory.mktemp("demo")), epochs=1, seed=0)


@pytest.fixture(scope="module", params=STORES)
def bucket(request, tmp_path_factory, demo_dir):
  """(bucket URL with the demo's training data at <url>/sampled, client environment)."""
  logs = str(tmp_path_factory.mktemp(f"{request.param}_server"))
  with object_stores.server(request.param, "hrm-test", logs) as (url, env):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage.configure.cache_clear()
    storage.configure()
    storage.upload_tree(demo_dir.train_dir, f"{url}/sampled", last=["metadata.json"])
    try:
      yield url, env
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """A fresh local cache (staged logs, cached index arrays) per test."""
  monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_whole_object_writes_and_directories(bucket, cache, tmp_path, monkeypatch):
  url, _ = bucket
  monkeypatch.chdir(tmp_path)
  atomic.write_json(f"{url}/a/config.json", {"x": 1})
  assert json.loads(storage.path(f"{url}/a/config.json").read_text()) == {"x": 1}
  with atomic.file(f"{url}/a/blob.bin", "wb") as f:
    f.write(b"\0" * 100)
  assert storage.size(f"{url}/a/blob.bin") == 100

  with pytest.raises(RuntimeError):  # a failed build uploads nothing
    with atomic.directory(f"{url}/failed", marker="metadata.json") as tmp:
      (tmp / "metadata.json").write_text("{}")
      raise RuntimeError("build failed")
  assert not storage.path(f"{url}/failed").exists()

  with atomic.directory(f"{url}/dir", marker="metadata.json") as tmp:
    (tmp / "sub").mkdir()
    (tmp / "sub" / "x.npy").write_bytes(b"123")
    (tmp / "metadata.json").write_text("{}")
  assert storage.path(f"{url}/dir/sub/x.npy").read_bytes() == b"123"
  with pytest.raises(FileExistsError, match="already holds objects"):
    with atomic.directory(f"{url}/dir", overwrite=True):
      pass
  with pytest.raises(FileExistsError, match="already holds objects"):
    atomic.check_replaceable(f"{url}/dir", overwrite=True)
  assert storage.join(url, "x", "y") == f"{url}/x/y"
  assert os.listdir(tmp_path) == ["cache"] or not os.listdir(tmp_path)


def test_data_read_by_ranges_gives_the_local_batches(bucket, cache, demo_dir):
  url, _ = bucket
  local = open_sampled(demo_dir.train_dir)
  remote = open_sampled(f"{url}/sampled")
  assert type(remote.tokens).__name__ == "RemoteTokens" and not remote.ids_checked is None
  assert len(remote.tokens) == len(local.tokens) and remote.tokens.dtype == local.tokens.dtype
  np.testing.assert_array_equal(remote.tokens[5:977], local.tokens[5:977])
  np.testing.assert_array_equal(remote.examples(0).inst_start, local.examples(0).inst_start)
  pipes = [Pipeline(s, rows=4, row_len=128) for s in (local, remote)]
  its = [p.iterator() for p in pipes]
  for _ in range(6):
    a, b = (next(it) for it in its)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # the index arrays are cached locally (read once), the tokens never are
  cached = sorted(p.name for p in cache.rglob("*.npy"))
  assert cached == sorted(f"{f}.npy" for f in ("inst_len", "inst_start", "resp_len",
                                               "resp_start"))


def _script(name, *args, env):
  return [sys.executable, str(ROOT / "experiments" / name), *map(str, args)], {
      **os.environ, **env, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _train_cmd(url, run, env, **extra):
  flags = {**TINY, "data.source": "path", "data.path": f"{url}/sampled", **extra}
  return _script("train.py", "--config=demo", f"--workdir={url}/{run}",
                 *(f"--config.{k}={v}" for k, v in flags.items()), env=env)


def _run(where, name, *args):
  """Run experiments/NAME as a user in the empty folder of `where` = (cwd, env)."""
  cwd, env = where
  cmd, full_env = _script(name, *args, env=env)
  return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True,
                        timeout=600)


def _user(tmp_path, env):
  """(an empty working folder, the client environment with a fresh cache)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  return cwd, {**env, storage.CACHE_ENV: str(tmp_path / "cache")}


def _metrics(url, run):
  text = storage.path(f"{url}/{run}/metrics.jsonl").read_text()
  return [json.loads(line)["step"] for line in text.splitlines()]


def _steps(url, run):
  folder = storage.path(f"{url}/{run}/checkpoints")
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").exists())


@pytest.mark.slow
def test_train_killed_resumed_then_generate_and_convert(bucket, tmp_path):
  url, env = bucket
  where = cwd, env = _user(tmp_path, env)
  cmd, full_env = _train_cmd(url, "run", env)
  proc = subprocess.Popen(cmd, env=full_env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:  # step 10's checkpoint is written before step 15 is printed
    seen.append(line)
    if line.startswith("step 15/"):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
  assert _steps(url, "run") == [10]

  out = subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "Resuming from step 10" in out.stdout
  assert _steps(url, "run") == [10, 20, 30]
  assert _metrics(url, "run") == [5, 10, 15, 20, 25, 30]  # each step once
  assert storage.path(f"{url}/run/train_config.json").is_file()
  assert any(p.name.startswith("events.out.tfevents")
             for p in storage.path(f"{url}/run/tensorboard").iterdir())

  gen = _run(where, "generate.py", f"--checkpoint={url}/run", "--prompt=12+34=",
             "--max_new_tokens=4")
  assert gen.returncode == 0, gen.stderr[-3000:]  # (a 30-step model may answer nothing)
  conv = _run(where, "convert.py", f"--from={url}/run", f"--to_hf={url}/hf")
  assert conv.returncode == 0, conv.stderr[-3000:]
  assert storage.path(f"{url}/hf/config.json").is_file()
  back = _run(where, "convert.py", f"--from_hf={url}/hf", f"--to={url}/native")
  assert back.returncode == 0, back.stderr[-3000:]
  again = _run(where, "generate.py", f"--checkpoint={url}/native", "--prompt=12+34=",
               "--max_new_tokens=4")
  assert again.returncode == 0 and again.stdout == gen.stdout, again.stderr[-3000:]
  plot = _run(where, "plot.py", f"--workdir={url}/run")
  assert plot.returncode == 0, plot.stderr[-3000:]
  assert storage.path(f"{url}/run/curves.png").read_bytes()[:4] == b"\x89PNG"
  assert not os.listdir(cwd)  # no local folder named after the URL, nothing else either


@pytest.mark.slow
def test_prepare_and_check_data_in_a_bucket(bucket, tmp_path):
  url, env = bucket
  where = cwd, _ = _user(tmp_path, env)
  tok = tmp_path / "tokenizer.json"
  demo.build_tokenizer().save(str(tok))
  rows = tmp_path / "in.jsonl"
  rows.write_text("".join(json.dumps({"instruction": f"{i}+1", "response": str(i + 1)}) + "\n"
                          for i in range(50)))
  prepare = ("prepare_data.py", f"--jsonl={rows}", f"--tokenizer={tok}",
             f"--out={url}/prepared", "--epochs=2", "--workers=1")
  out = _run(where, *prepare)
  assert out.returncode == 0, out.stderr[-3000:]
  data = open_sampled(f"{url}/prepared")
  assert data.num_epochs == 2 and len(data.examples(0)) == 50
  again = _run(where, *prepare)
  assert again.returncode == 2 and "already holds objects" in again.stderr, again.stderr
  check = _run(where, "check_data.py", f"{url}/prepared", "--record")
  assert check.returncode == 0, check.stderr[-3000:]
  record = json.loads(storage.path(f"{url}/prepared/token_check.json").read_text())
  assert record["bytes"] == storage.size(f"{url}/prepared/tokens.npy")
  assert not os.listdir(cwd)


@pytest.mark.slow
@pytest.mark.parametrize("bucket", ["s3"], indirect=True)  # one store: the CI time budget
def test_two_processes_write_one_bucket(bucket, tmp_path):
  url, env = bucket
  port = object_stores.free_port()
  procs = []
  for i in range(2):
    cmd, full_env = _train_cmd(url, "multi", env, **{"train.total_steps": 10})
    full_env = {**full_env, storage.CACHE_ENV: str(tmp_path / f"cache{i}"),
                "JAX_NUM_CPU_DEVICES": "1"}
    cmd += [f"--coordinator_address=localhost:{port}", "--num_processes=2",
            f"--process_id={i}"]
    procs.append(subprocess.Popen(cmd, env=full_env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert _steps(url, "multi") == [10]
  assert _metrics(url, "multi") == [5, 10]
  assert sorted(os.listdir(tmp_path)) == ["cache0", "cache1"]


@pytest.mark.slow
def test_missing_filesystem_package_names_the_extra(tmp_path):
  """s3fs made unimportable: one line naming the pip extra, nothing created."""
  (tmp_path / "s3fs.py").write_text("raise ImportError('no s3fs here')\n")
  cmd, env = _script("train.py", "--config=demo", "--workdir=s3://b/run", env={})
  env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
  out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1].startswith("train.py: error: s3://b/run")
  assert "pip install 'hrm_jax[s3]'" in out.stderr
  assert sorted(os.listdir(tmp_path)) == ["s3fs.py"]
