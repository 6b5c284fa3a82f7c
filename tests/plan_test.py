"""remat_policy=auto: candidates in order of recompute, compiled for compile-only H100s until
one fits, memory refusals as rows, the choice cached; the roofline's terms."""

import json

import jax
import pytest

from experiments import configs
from hrm_jax import checkpoint_layout
from hrm_jax.train import aot, loop, plan
from train_loop_test import tiny_config


def _tiny(remat="auto", rows=8):
  cfg = configs.get("hrm1b")
  with cfg.unlocked():
    cfg.model.update(size="B", hidden_size=128, num_heads=2, n_layers=4, vocab_size=512,
                     max_seq_len=128, dtype="bfloat16", remat_policy=remat)
    cfg.data.update(rows=rows, row_len=128)
    cfg.train.loss_chunk = 64
  return cfg


def test_candidates_least_recompute_first_and_whole_rows_per_shard():
  ranked = plan.candidates(_tiny(rows=8), 512, batch_devices=4)
  overheads = [r for _, r in ranked]
  assert overheads == sorted(overheads)
  first, _ = ranked[0]
  assert (first.policy, first.microbatches) == ("none", 1) and overheads[0] == 0
  # 8 rows on 4 batch shards: 1 or 2 micro-batches keep whole rows on every shard.
  assert {c.microbatches for c, _ in ranked} == {1, 2}
  full = dict((str(c), r) for c, r in ranked)["full/layer x1"]
  dots = dict((str(c), r) for c, r in ranked)["dots/layer x1"]
  assert 0 < dots < full


@pytest.fixture(scope="module")
def devices():
  """Four of the test process's CPU devices: they compile in seconds, and the memory rule
  is checked against a limit set by each test (a CPU has none of its own)."""
  return jax.devices("cpu")[:4]


def _small(remat="auto"):
  cfg = _tiny(remat)
  with cfg.unlocked():
    cfg.model.update(hidden_size=64, max_seq_len=512, dtype="float32", unroll_scans=False)
    cfg.data.row_len = 512
  return cfg


@pytest.fixture(scope="module")
def totals(devices):
  """Per-device totals of no remat and of full remat for the small step."""
  out = {policy: plan.try_compile(_small(), 512, devices, plan.Candidate(policy, "layer", 1),
                                  0.0, None).report.total for policy in ("none", "full")}
  assert out["full"] < out["none"]
  return out


def test_auto_takes_the_least_recompute_that_fits_and_caches_it(devices, totals, tmp_path,
                                                                monkeypatch):
  monkeypatch.setattr(plan, "SETTINGS", (("none", "layer"), ("full", "layer")))
  monkeypatch.setattr(plan, "MICROBATCHES", (1,))
  # A device whose 90% lies between full's total and no remat's.
  limit = (totals["full"] + totals["none"]) / 2 / plan.HEADROOM
  monkeypatch.setattr(plan, "memory_limit", lambda device: limit)
  cache = str(tmp_path / "remat_plan.json")
  said = []
  chosen = plan.choose(_small(), 512, devices, cache, say=said.append)
  assert str(chosen) == "full/layer x1"
  assert said == [f"remat auto: full/layer x1 (+27% recompute, {totals['full'] / 2**30:.2f} "
                  f"GiB of {limit / 2**30:.2f} GiB; none/layer x1 "
                  f"{totals['none'] / 2**30:.2f} GiB of {limit / 2**30:.2f} GiB did not fit)"]
  assert list(json.load(open(cache)).values())[0]["remat_policy"] == "full"
  # A restart reads the cache: nothing is compiled again.
  monkeypatch.setattr(plan, "try_compile", lambda *a, **k: pytest.fail("compiled again"))
  resolved = plan.resolve(_small(), 512, devices, cache, say=said.append)
  assert (resolved.model.remat_policy, resolved.train.microbatches) == ("full", 1)
  assert said[-1].startswith("remat auto: full/layer x1 (cached in ")


def test_nothing_fits_names_every_candidate(devices, monkeypatch):
  monkeypatch.setattr(plan, "memory_limit", lambda device: 1e6)
  monkeypatch.setattr(plan, "try_compile", lambda cfg, vocab, devs, c, r, limit: plan.Tried(
      c, r, None, False, "refused by the compiler: RESOURCE_EXHAUSTED", 0.0))
  with pytest.raises(ValueError, match=r"remat_policy=auto: no remat setting fits .*"
                     r"none/layer x1: refused .* full/pass x2: refused"):
    plan.choose(_tiny(), 512, devices)


def test_a_memory_refusal_is_a_row_not_a_crash(devices, monkeypatch):
  def refuse(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of "
                       "memory in memory space hbm. Used 191.29G of 95.74G hbm.")
  monkeypatch.setattr(aot, "compile_train_step", refuse)
  row = plan.try_compile(_tiny(), 512, devices, plan.Candidate("none", "layer", 1), 0.0, 95e9)
  assert row.report is None and not row.fits and "191.29G" in row.why
  monkeypatch.setattr(aot, "compile_train_step",
                      lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
  with pytest.raises(ValueError, match="a bug"):
    plan.try_compile(_tiny(), 512, devices, plan.Candidate("none", "layer", 1), 0.0, 95e9)


def test_on_cpu_auto_recomputes_nothing():
  cfg = plan.resolve(_tiny(), 512, jax.devices("cpu")[:1], say=lambda _: None)
  assert (cfg.model.remat_policy, cfg.train.microbatches) == ("none", 1)


def test_roofline_terms():
  """FLOPs at the H100's peak, NVLink inside one host, the network across two."""
  gpus = aot.compile_only_devices("gpu", "1x2x2", "h100")
  cfg = plan.Candidate("full", "layer", 1).apply(_tiny())
  model_config = loop.model_config_from(cfg, 512)
  report = aot.CompileReport(devices=4, device_kind=gpus[0].device_kind, arguments=10**6,
                             outputs=0, aliased=0, temporaries=10**8, flops=None)
  model, compiled, _ = plan.step_counts(cfg, model_config)
  assert compiled > model
  two_hosts = plan.roofline(cfg, model_config, report, compiled, gpus)
  one_host = plan.roofline(cfg, model_config, report, compiled,
                           aot.compile_only_devices("gpu", "1x1x4", "h100"))
  assert one_host.flops_s == pytest.approx(compiled / 4 / 989e12)
  assert one_host.step_s == max(one_host.flops_s, one_host.hbm_s, one_host.collective_s)
  assert one_host.collective_s == pytest.approx(one_host.collective_bytes / 450e9)
  assert two_hosts.collective_s == pytest.approx(two_hosts.collective_bytes / 50e9)
  assert one_host.hbm_bytes > 2 * report.temporaries


def test_a_training_run_resolves_auto_and_keeps_the_choice(tmp_path, capsys):
  """train.py's path: the CPU devices have no memory limit, so auto is none; the choice is
  in the workdir's remat_plan.json and in the run's saved execution."""
  cfg = tiny_config(tmp_path / "demo", **{"model.remat_policy": "auto", "train.max_steps": 1})
  result = loop.train(cfg, str(tmp_path / "run"))
  assert result.execution.remat_policy == "none"
  assert checkpoint_layout.saved_config(tmp_path / "run")["execution"]["remat_policy"] == "none"
  assert "remat auto: none/layer x1 (no device memory limit (CPU))" in capsys.readouterr().out
  plans = json.load(open(tmp_path / "run" / loop.PLAN_FILE))
  assert [p["remat_policy"] for p in plans.values()] == ["none"]


def test_loop_correct_flops_agree_with_the_compiler_where_it_counts_whole_programs():
  """On the CPU the demo step's scans are unrolled, so the compiler's cost analysis counts
  every pass: the model's count plus what full remat repeats is within 15% of it, and so is
  the remat difference (the compiler also counts elementwise work and dense attention's
  full score matrix, the model count matmuls over half of it)."""
  cfg = configs.get("demo")
  with cfg.unlocked():
    cfg.train.loss_chunk = 0
  got = {}
  for policy in ("none", "full"):
    run = plan.Candidate(policy, "layer", 1).apply(cfg)
    model_config = loop.model_config_from(run, 512)
    assert loop.execution_from(run).unroll_scans
    row = plan.try_compile(cfg, 512, jax.devices()[:1], plan.Candidate(policy, "layer", 1),
                           0.0, None)
    got[policy] = (row.report.flops, plan.step_counts(run, model_config)[1])
  for compiler, counted in got.values():
    assert 1.0 <= compiler / counted < 1.15
  compiler_extra = got["full"][0] - got["none"][0]
  counted_extra = got["full"][1] - got["none"][1]
  assert abs(compiler_extra / counted_extra - 1) < 0.15
