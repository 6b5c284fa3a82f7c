"""experiments/plot.py: metrics.jsonl (with a resumed, repeated step) -> PNG; error cases."""

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

sys.path.insert(0, str(ROOT))
from experiments import plot  # noqa: E402
from hrm_jax import plotting  # noqa: E402
from helpers import umask  # noqa: E402


def run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "experiments" / "plot.py"), *args],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})


def write_metrics(workdir: pathlib.Path, rows: list[dict]) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows(steps, scale=1.0):
  return [{"step": s, "loss": scale * 5.0 / s, "accuracy": 0.1 * s, "exact_accuracy": 0.01 * s,
           "lr": 1e-3, "tokens_per_s": 1000.0} for s in steps]


@pytest.mark.slow  # spawns experiments/*.py
def test_plots_one_and_several_runs(tmp_path):
  # A run resumed at step 3 logs step 3 twice; the later row must win.
  write_metrics(tmp_path / "a", rows([1, 2, 3]) + [{"step": 3, "loss": 9.0}] + rows([4, 5]))
  write_metrics(tmp_path / "b", rows(range(1, 6), scale=2.0))
  assert plot.read_metrics(str(tmp_path / "a"))[3] == {"step": 3, "loss": 9.0}
  out = run(f"--workdir={tmp_path / 'a'}")
  assert out.returncode == 0, out.stderr
  png = (tmp_path / "a" / "curves.png").read_bytes()
  assert png.startswith(PNG_MAGIC) and len(png) > 1000
  target = tmp_path / "plots" / "ab.png"
  out = run(f"--workdir={tmp_path / 'a'},{tmp_path / 'b'}", f"--out={target}",
            "--metrics=loss,lr,tokens_per_s")
  assert out.returncode == 0, out.stderr
  assert target.read_bytes().startswith(PNG_MAGIC) and target.stat().st_size > 1000
  assert [p.name for p in target.parent.iterdir()] == ["ab.png"]  # no temp file left


def test_png_follows_the_umask(tmp_path):
  """Before: mkstemp left the PNG 0600."""
  with umask(0o022):
    plotting.plot({"a": {1: {"loss": 2.0}, 2: {"loss": 1.0}}}, ["loss"], str(tmp_path / "p.png"))
  assert stat.S_IMODE(os.stat(tmp_path / "p.png").st_mode) == 0o644


@pytest.mark.slow  # spawns experiments/*.py
def test_missing_or_empty_metrics_is_a_clear_error(tmp_path):
  out = run(f"--workdir={tmp_path / 'nope'}")
  assert out.returncode != 0 and "metrics.jsonl does not exist" in out.stderr
  write_metrics(tmp_path / "empty", [])
  out = run(f"--workdir={tmp_path / 'empty'}")
  assert out.returncode != 0 and "is empty" in out.stderr
  assert not (tmp_path / "empty" / "curves.png").exists()
  write_metrics(tmp_path / "run", rows([1, 2]))
  out = run(f"--workdir={tmp_path / 'run'}", "--metrics=perplexity")
  assert out.returncode != 0 and "none of the metrics ['perplexity']" in out.stderr
