"""Ablations: size matching against brute force over independent formulas, FLOPs over the
bp_steps schedule, summaries against NumPy, and experiments/ablate.py --quick end to end
(outputs, skip on rerun, depth sweep)."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import hrm_jax
from hrm_jax import ablation
from hrm_jax.train import bp_schedule
from hrm_jax.models import spec_of
from helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEQ = 128


def layer_params(c):
  """Weights of one block: gated qkv, output, SwiGLU (norms carry no weights)."""
  d, hk, m = c.hidden_size, c.num_heads * c.head_dim, c.intermediate_size
  return d * 4 * hk + hk * d + d * 2 * m + m * d


def stacks(c):
  return {"hrm": 2, "rins": 2, "trm": 1, "transformer": 1, "ut": 1}[spec_of(c).family]


def params_formula(c):
  return 2 * c.vocab_size * c.hidden_size + stacks(c) * c.layers_per_stack * layer_params(c)


def test_param_count_matches_the_formula():
  for arch in ("hrm", "transformer", "trm", "rins", "ut"):
    c = tiny_config(arch, n_layers=6)
    assert ablation.param_count(c) == params_formula(c), arch


def test_flops_follow_the_bp_steps_schedule():
  c = tiny_config("hrm")
  per_step = ablation.flops_per_step(c, SEQ, 50)
  layer = 2 * layer_params(c) + 2 * c.num_heads * c.head_dim * SEQ  # matmuls + attention
  head = 2 * c.hidden_size * c.vocab_size
  for step in (1, 5, 10, 50):
    bp = bp_schedule.bp_steps_at(step, 50, c)   # 2 -> 5 over the first 10 steps
    grad = bp  # hrm: bp_steps passes carry gradient (H first, at most H_cycles of them)
    passes = c.H_cycles + c.H_cycles * c.L_cycles
    expected = (passes + 2 * grad) * c.layers_per_stack * layer + 3 * head
    assert per_step[step - 1] == pytest.approx(expected, rel=1e-12)
  assert per_step[0] < per_step[-1]
  assert ablation.mean_train_flops_per_token(c, SEQ, 50) == pytest.approx(per_step.mean())


@pytest.mark.parametrize("by", ["params", "flops"])
@pytest.mark.parametrize("arch", ["transformer", "trm", "rins", "ut"])
def test_match_picks_the_closest_n_layers(arch, by):
  anchor = tiny_config("hrm", n_layers=4)
  m = ablation.match_size(anchor, arch, by, SEQ, 40)
  measure = (params_formula if by == "params" else
             (lambda c: ablation.mean_train_flops_per_token(c, SEQ, 40)))
  target = measure(anchor)
  step = 2 if m.config.half_layers else 1
  gap = lambda n: abs(math.log(measure(m.config.replace(n_layers=n)) / target))
  brute = min(range(step, 33, step), key=gap)
  assert m.value == m.config.n_layers == brute
  assert m.config.arch == arch and m.config.hidden_size == anchor.hidden_size
  assert m.params == params_formula(m.config)
  if by == "params":  # every arch has 4 layers of the same width in all: identical counts
    assert m.params == params_formula(anchor)
  deeper = anchor.replace(H_cycles=3)
  assert ablation.match_size(deeper, "hrm", by, SEQ, 40).config == deeper  # the anchor itself
  with pytest.raises(ValueError, match="--match='both'"):
    ablation.match_size(anchor, arch, "both", SEQ, 40)


def fake_result(arch, seed, scores, steps=(10, 20)):
  points = [{"step": s, "train_flops": 1e9 * s, "tokens": 100 * s,
             "scores": ablation.with_mean({t: v * s / steps[-1] for t, v in scores.items()})}
            for s in steps]
  return {"arch": arch, "seed": seed, "params": 1000, "knob": "n_layers", "knob_value": 4,
          "train_flops_per_token": 2e6, "train_flops": 2e10, "points": points,
          "scores": points[-1]["scores"]}


def test_summary_mean_and_std_over_seeds():
  runs = [fake_result("hrm", s, {"add": a, "sort": b})
          for s, (a, b) in enumerate([(0.5, 0.25), (0.75, 0.5), (1.0, 0.0)])]
  runs.append(fake_result("ut", 0, {"add": 0.125, "sort": 0.375}))
  rows = ablation.summarize(runs)
  assert [r["arch"] for r in rows] == ["hrm", "ut"]
  alls = [np.mean([0.5, 0.25]), np.mean([0.75, 0.5]), np.mean([1.0, 0.0])]
  assert rows[0]["scores"]["add"] == pytest.approx((0.75, np.std([0.5, 0.75, 1.0], ddof=1)))
  assert rows[0]["scores"]["all"] == pytest.approx((np.mean(alls), np.std(alls, ddof=1)))
  assert rows[1]["scores"]["all"] == (0.25, 0.0)
  table = ablation.markdown_table(rows).splitlines()
  assert table[0] == "| arch | seeds | params | train MFLOP/token | n_layers | add | sort | all |"
  assert table[2].startswith("| hrm | 3 | 1,000 | 2.0 | 4 | 75.0 ± 25.0 | 25.0 ± 25.0 |")
  assert table[3] == "| ut | 1 | 1,000 | 2.0 | 4 | 12.5 | 37.5 | 25.0 |"
  x, mean, std = ablation.curve(runs[:3])
  np.testing.assert_allclose(x, [1e10, 2e10])
  np.testing.assert_allclose(mean, [np.mean(alls) / 2, np.mean(alls)])


def test_difference_is_welchs_interval_over_seeds():
  a, b = [0.9, 0.8, 0.85, 0.95], [0.6, 0.7, 0.65]
  runs = ([fake_result("hrm", s, {"add": v}) for s, v in enumerate(a)]
          + [fake_result("transformer", s, {"add": v}) for s, v in enumerate(b)])
  d = ablation.difference(runs, "hrm", "transformer")
  want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert d["diff"] == pytest.approx(np.mean(a) - np.mean(b))
  assert (d["low"], d["high"]) == pytest.approx((want.low, want.high))
  assert (d["n_a"], d["n_b"]) == (4, 3)
  assert ablation.difference_line(d).startswith("hrm - transformer (all): +22.5 points, 95% CI [")
  assert ablation.difference(runs[:5], "hrm", "transformer") is None  # one transformer seed


def run_ablate(out, *args):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it (conftest fakes 8)
  return subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "ablate.py"), "--quick",
       "--archs=hrm,transformer", f"--workdir={out}", "--sweep_cycles=1,2", *args],
      capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow  # spawns experiments/*.py
def test_quick_ablation_end_to_end_rerun_skips_and_report_only(tmp_path):
  demo = f"--config.data.demo_dir={tmp_path / 'demo'}"
  first = run_ablate(tmp_path / "out", demo)
  assert first.returncode == 0, first.stderr[-3000:]
  out = tmp_path / "out"
  report = json.loads((out / "ablation.json").read_text())
  assert [r["arch"] for r in report["summary"]] == ["hrm", "transformer"]
  tasks = {"add", "mul", "sort", "bool", "arith", "all"}
  for run in report["runs"]:
    assert set(run["scores"]) == tasks
    assert [p["step"] for p in run["points"]] == [8, 16]  # 16 steps, 2 evaluation points
    assert run["points"][-1]["train_flops"] == run["train_flops"] > run["points"][0]["train_flops"]
    assert run["tokens"] == 16 * 8 * 64
    saved = json.loads((out / f"{run['arch']}_s0" / "result.json").read_text())
    assert saved == run
  transformer = report["runs"][1]
  assert transformer["train_flops_per_token"] == pytest.approx(
      report["runs"][0]["train_flops_per_token"], rel=0.35)   # matched by FLOPs (default)
  assert set(report["sweep"]["hrm_s0"]) == {"H1_L3", "H2_L3"}
  md = (out / "ablation.md").read_text()
  assert "| hrm |" in md and "| transformer |" in md and "| 1 | 3 |" in md
  assert "after 16 steps (8,192 tokens), matched by flops" in md  # what the runs trained
  for png in ("ablation.png", "ablation_sweep.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  result_mtime = os.path.getmtime(out / "hrm_s0" / "result.json")

  logged = []
  saved = json.loads((out / "hrm_s0" / "result.json").read_text())
  hrm = ablation.Match("hrm", ablation.ModelConfig(**saved["model_config"]), 0, 0.0,
                       "n_layers", 2)
  again = ablation.run_one(None, hrm, 0, str(out / "hrm_s0"), total_steps=16, eval_points=2,
                           eval_per_task=4, log=logged.append)  # finished: no training
  assert again == saved and logged == [f"skip {out / 'hrm_s0'}: finished (result.json)"]
  assert os.path.getmtime(out / "hrm_s0" / "result.json") == result_mtime

  partial = run_ablate(tmp_path / "out", demo, "--archs=hrm,transformer,ut", "--report_only")
  assert partial.returncode == 0, partial.stderr[-3000:]
  assert "ut seed 0: not finished, left out" in partial.stdout and "step 1/" not in partial.stdout
  assert json.loads((out / "ablation.json").read_text())["runs"] == report["runs"]

  for arch in ("hrm", "transformer"):  # a second seed of each, to report their difference
    shutil.copytree(out / f"{arch}_s0", out / f"{arch}_s1")  # its sweep.json included
    run = json.loads((out / f"{arch}_s1" / "result.json").read_text())
    run["seed"], run["scores"]["all"] = 1, run["scores"]["all"] + 0.125
    (out / f"{arch}_s1" / "result.json").write_text(json.dumps(run))
  two = run_ablate(tmp_path / "out", demo, "--seeds=2", "--report_only")
  assert two.returncode == 0, two.stderr[-3000:]
  (diff,) = json.loads((out / "ablation.json").read_text())["differences"]
  assert (diff["a"], diff["b"], diff["n_a"], diff["n_b"]) == ("hrm", "transformer", 2, 2)
  assert "- hrm - transformer (all): " in (out / "ablation.md").read_text()

  transformer = tiny_config("transformer", vocab_size=256, hidden_size=32, n_layers=2)
  other = ablation.Match("transformer", transformer, 0, 0.0, "n_layers", 2)  # --match=params
  with pytest.raises(ValueError, match="another --workdir"):
    ablation.run_one(None, other, 0, str(out / "transformer_s0"), total_steps=16,
                     eval_points=2, eval_per_task=4)


def test_variants_keep_the_anchor_size_and_set_their_option():
  anchor = tiny_config("hrm", n_layers=4)
  m = ablation.match_size(anchor, "hrm_post_norm", "flops", SEQ, 40)
  assert (m.arch, m.config) == ("hrm_post_norm", anchor.replace(norm_type="post"))
  h = ablation.match_size(anchor, "hrm_H_post_norm", "params", SEQ, 40)
  assert h.config.stack_config("H").norm_type == "post" and h.config.norm_type == "pre"
  with pytest.raises(ValueError, match="unknown arch 'hrm_sandwich'"):
    ablation.match_size(anchor, "hrm_sandwich", "flops", SEQ, 40)


def test_out_is_a_deprecated_alias_of_workdir(caplog):
  """ablate.py and device_check.py name their output directory --workdir, as train.py does;
  --out still works for one release, with a warning, and never together with --workdir."""
  from absl import app
  from experiments import configs
  assert configs.workdir_from(None, None, "runs/ablate") == "runs/ablate"
  assert configs.workdir_from("runs/a", None, "runs/ablate") == "runs/a"
  assert not caplog.records
  with caplog.at_level("WARNING"):
    assert configs.workdir_from(None, "runs/b", "runs/ablate") == "runs/b"
  assert "--out is deprecated" in caplog.text and "--workdir=runs/b" in caplog.text
  with pytest.raises(app.UsageError, match="pass only --workdir"):
    configs.workdir_from("runs/a", "runs/b", "runs/ablate")
