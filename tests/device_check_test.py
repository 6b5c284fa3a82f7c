"""benchmarks/device_check.py --smoke end to end (subprocesses, CPU): every phase with the
Pallas Triton kernel interpreted, its JSON and Markdown reports, and the exit code of a
kernel check that fails."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test spawns benchmarks/device_check.py
PHASE_ROWS = {"kernels": 3, "attention": 3, "step": 1, "decode": 1, "prefill": 1}


def run(out: pathlib.Path, *flags: str) -> subprocess.CompletedProcess:
  # Level 0: a smoke run compiles many programs and runs each briefly (12 s faster here).
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  # A budget far above the smoke run's needs: a loaded CI machine must not skip phases.
  return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"),
                         "--smoke", f"--workdir={out}", "--budget_s=1500", *flags],
                        capture_output=True, text=True, env=env, timeout=900)


def report(out: pathlib.Path) -> tuple[dict, str]:
  return (json.loads((out / "device_check.json").read_text()),
          (out / "device_check.md").read_text())


def test_smoke_run_measures_every_phase_and_writes_both_reports(tmp_path):
  r = run(tmp_path / "out")
  assert r.returncode == 0, r.stdout + r.stderr
  data, md = report(tmp_path / "out")
  assert data["passed"] and data["failures"] == [] and "incomplete" not in data
  assert data["smoke"] and data["backend"] == "cpu" and data["elapsed_s"] < data["budget_s"]
  assert {k: len(v) for k, v in data["phases"].items()} == PHASE_ROWS

  kernels = {row["impl"]: row for row in data["phases"]["kernels"]}
  assert kernels["dense"]["status"] == "baseline"
  for impl in ("pallas_gpu", "chunked"):
    row = kernels[impl]
    assert row["status"] == "ok", row
    for k in ("out", "dq", "dk", "dv"):
      # bfloat16 inputs against the float32 reference: a bfloat16-sized, nonzero error.
      assert 0 < row["error"][k] <= row["tolerance"][k] < 0.1, (impl, k, row)

  for row in data["phases"]["attention"]:
    assert row["status"] == "ok" and row["ms"] > 0 and row["temp_gib"] >= 0, row
  (step,) = data["phases"]["step"]
  assert step["status"] == "ok" and step["impl"] == "dense", step
  assert abs(step["tokens_per_s"] * step["step_s"] - step["rows"] * step["row_len"]) < 1e-6
  assert 0 < step["mfu"] < 1 and step["loss"] > 0
  assert data["fastest_step_impl"] == "dense"
  (dec,) = data["phases"]["decode"]
  assert dec["end_to_end_tokens_per_s"] > 0, dec
  # 16 vs 1 new tokens on a shared CPU: the difference may drown in timer noise, and the
  # report then says so instead of printing a negative rate.
  assert (dec["status"] == "ok" and dec["decode_tokens_per_s"] > 0
          or dec["status"].startswith("below timer noise")), dec
  (prefill,) = data["phases"]["prefill"]
  assert prefill["status"] == "ok" and prefill["ms"] > 0, prefill

  assert "Kernel check: **PASS**. Fastest train step: dense." in md
  for heading in ("## Attention kernels", "## Attention forward + backward",
                  "## hrm1b-shaped train step", "## Decoding"):
    assert heading in md
  assert "| 64 | bfloat16 | pallas_gpu |" in md and "Prefill of one 16-token prompt" in md
  assert "kernels: S=64 bfloat16 pallas_gpu: ok" in r.stdout  # progress lines


def test_a_wrong_kernel_fails_the_check_and_exits_nonzero(tmp_path):
  r = run(tmp_path / "out", "--phases=kernels", "--inject_error=0.1")
  assert r.returncode == 1, r.stdout + r.stderr
  data, md = report(tmp_path / "out")
  assert not data["passed"] and list(data["phases"]) == ["kernels"]
  status = {row["impl"]: row["status"] for row in data["phases"]["kernels"]}
  assert status == {"dense": "baseline", "pallas_gpu": "FAIL", "chunked": "FAIL"}
  assert any(f.startswith("pallas_gpu S=64 bfloat16: out error") for f in data["failures"])
  assert "Kernel check: **FAIL: pallas_gpu S=64 bfloat16: out error" in md


def test_an_existing_report_is_never_replaced(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "device_check.json").write_text("mine")
  r = run(out, "--phases=kernels")
  assert r.returncode != 0
  assert "device_check.json exists; refusing to replace" in r.stderr
  assert (out / "device_check.json").read_text() == "mine"
  assert not (out / "device_check.md").exists()
