"""Compile the training step for accelerators this machine does not have, and print
per-device memory, FLOPs and a roofline prediction (nothing is allocated or run).

    pip install -r requirements-aot.txt                   # libtpu, the CUDA PJRT plugin
    python benchmarks/aot_compile.py --target=tpu         # hrm1b on a v5p-16 slice (8 chips)
    python benchmarks/aot_compile.py --target=gpu         # hrm1b on 16 H100s (2 hosts x 8)
    python benchmarks/aot_compile.py --target=cpu --cpu_devices=16   # the XLA:CPU view
    python benchmarks/aot_compile.py --target=tpu --sweep_remat      # every remat setting
    python benchmarks/aot_compile.py --target=gpu --json=plan.json   # the chosen setting's figures
    python benchmarks/aot_compile.py --target=tpu --tpu_slices=2 --config.mesh.dcn_shape=(2,1,1)
    python benchmarks/aot_compile.py --target=gpu --config.train.microbatches=2 ...

The step is the one experiments/train.py runs for --config (default hrm1b: its mesh,
rows x row_len, attention, loss_chunk), at its largest bp_steps. hrm1b's remat_policy=auto
is chosen here as train.py chooses it (hrm_jax/train/plan.py): candidates in order of the
recompute they add until one fits 90% of the chip's memory; a candidate the compiler refuses
for memory is a "does not fit" row. FLOPs: the analytic model count (hrm_jax/flops.py) and
what rematerialisation adds (`flops.recompute_flops_per_token`), loops counted whole; the
compiler's own count covers one trip of each loop and is shown for reference.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)


def _early_env(argv: list[str]) -> None:
  """Settings JAX reads once at start-up: CPU device count, and no cuDNN check (compiling
  needs no cuDNN). Plugins are kept off the runtime backend list; topologies still load."""
  if "--target=local" in argv:  # the machine's own accelerators
    return
  devices = next((a.split("=", 1)[1] for a in argv if a.startswith("--cpu_devices=")), "16")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


_early_env(sys.argv)

import dataclasses  # noqa: E402
import time  # noqa: E402

from absl import flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from experiments import configs  # noqa: E402
from hrm_jax import atomic  # noqa: E402
from hrm_jax import cli  # noqa: E402
from hrm_jax.models import LanguageModel  # noqa: E402
from hrm_jax.train import aot  # noqa: E402
from hrm_jax.train import loop  # noqa: E402
from hrm_jax.train import plan  # noqa: E402
from hrm_jax.train import state as state_lib  # noqa: E402
from hrm_jax.train import step as step_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path_of("hrm1b"), "Training config name or file.", lock_config=True)
_TARGET = flags.DEFINE_enum("target", "tpu", aot.TARGETS, "Backend to compile for.")
_TPU_TOPOLOGY = flags.DEFINE_string("tpu_topology", "v5p:2x2x2",
                                    "TPU chips (v5p:2x2x2 = 8 chips = v5p-16).")
_TPU_SLICES = flags.DEFINE_integer(
    "tpu_slices", 1, "TPU slices joined over DCN; the config's mesh.dcn_shape spans them, "
    "e.g. --tpu_slices=2 --config.mesh.dcn_shape=(2,1,1).")
_GPU_TOPOLOGY = flags.DEFINE_string("gpu_topology", "1x2x8",
                                    "<slices>x<hosts per slice>x<GPUs per host>.")
_GPU = flags.DEFINE_enum("gpu", "h100", sorted(aot.GPU_SPECS), "GPU model.")
flags.DEFINE_integer("cpu_devices", 16, "Host devices of --target=cpu (read at start-up).")
_VOCAB = flags.DEFINE_integer("vocab_size", 65536, "Vocabulary when the config leaves it to "
                              "the data (released tokenizer: 65,536, docs/reference.md#sizes).")
_SWEEP = flags.DEFINE_bool("sweep_remat", False, "Compile every remat setting and "
                           "micro-batch count (else the config's, or with remat_policy=auto "
                           "the candidates in order until one fits).")

GIB = 2**30
_JSON = flags.DEFINE_string("json", "", "Write the chosen setting's figures to this JSON file.")
_RUN_STEPS = flags.DEFINE_integer("run_steps", 0, "With --target=local: run the chosen step "
                                  "this many times on random tokens and report the measured "
                                  "step time beside the prediction.")


def _row(row: plan.Tried, model_flops: float, n: int) -> str:
  rep = row.report
  if rep is None:
    return (f"| {row.candidate} | - | - | - | does not fit ({row.why}) | n/a | "
            f"{model_flops / n / 1e9:,.0f} | {row.recompute:+.0%} | {row.seconds:.0f} |")
  compiler = f"{rep.flops / 1e9:,.0f}" if rep.flops else "n/a"
  return (f"| {row.candidate} | {rep.arguments / GIB:.2f} | {rep.temporaries / GIB:.2f} | "
          f"{rep.total / GIB:.2f} | {'yes' if row.fits else 'no'} ({row.why}) | {compiler} | "
          f"{model_flops / n / 1e9:,.0f} | {row.recompute:+.0%} | {row.seconds:.0f} |")


def _measure(cfg, model_config, devices, steps: int) -> float:
  """Median seconds of `steps` runs of the compiled step on random tokens (after one)."""
  compiled = aot.compile_train_step(cfg, model_config, devices, plan.step_counts(
      cfg, model_config)[2])
  shardings = compiled.input_shardings[0]
  model = LanguageModel(model_config, loop.execution_from(cfg))
  tx, _ = step_lib.optimizer(cfg.train, total_steps=10**6)
  state = state_lib.init_state(model, tx, jax.random.PRNGKey(0), shardings[0])
  rows, row_len = cfg.data.rows, cfg.data.row_len
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, model_config.vocab_size, (rows, row_len), dtype=np.int32)
  host = {"inputs": tokens, "positions": np.tile(np.arange(row_len, dtype=np.int32), (rows, 1)),
          "segment_ids": np.ones((rows, row_len), np.int32),
          "prefix_mask": np.arange(row_len)[None].repeat(rows, 0) < row_len // 2,
          "labels": np.roll(tokens, -1, axis=1)}
  batch = {k: jax.device_put(v, shardings[1][k]) for k, v in host.items()}
  times = []
  for _ in range(steps + 1):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  print(f"steps: {', '.join(f'{x:.3f}' for x in times)} s; loss {float(metrics['loss']):.3f}")
  return float(np.median(times[1:]))


def main(argv):
  del argv
  cfg = _CONFIG.value
  target = _TARGET.value
  topology = {"tpu": _TPU_TOPOLOGY.value, "gpu": _GPU_TOPOLOGY.value}.get(target, "")
  devices = aot.compile_only_devices(target, topology, _GPU.value, _TPU_SLICES.value)
  n = len(devices)
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  limit = plan.memory_limit(devices[0])
  print(f"{name}: {cfg.data.rows} rows x {cfg.data.row_len} tokens, mesh "
        f"{tuple(cfg.mesh.shape)} x dcn {tuple(cfg.mesh.dcn_shape)}, loss_chunk "
        f"{cfg.train.loss_chunk}; target {target} {topology} ({n} x {devices[0].device_kind}, "
        + (f"{limit / GIB:.1f} GiB" if limit else "no memory limit") + f", plan fits "
        f"{plan.HEADROOM:.0%})", flush=True)
  no_remat = plan.Candidate("none", "layer", 1).apply(cfg)
  model_config = loop.model_config_from(no_remat, _VOCAB.value)
  model_flops, _, _ = plan.step_counts(no_remat, model_config)
  print("| remat x microbatches | args GiB | temps GiB | total GiB/device | fits | "
        "compiler GFLOP/device (one loop trip) | model GFLOP/device | + recompute | compile s |")
  print("|---|---|---|---|---|---|---|---|---|", flush=True)
  show = lambda row: print(_row(row, model_flops, n), flush=True)
  if _SWEEP.value or cfg.model.remat_policy == plan.AUTO:
    chosen, _ = plan.search(cfg, _VOCAB.value, devices, on_row=show, exhaustive=_SWEEP.value)
  else:
    own = plan.Candidate(cfg.model.remat_policy, cfg.model.remat_scope, cfg.train.microbatches)
    run = own.apply(cfg)
    model, compiled, _ = plan.step_counts(run, loop.model_config_from(run, _VOCAB.value))
    chosen = plan.try_compile(cfg, _VOCAB.value, devices, own, compiled / model - 1, limit)
    show(chosen)
  if chosen is None or chosen.report is None:
    print("no setting fits" if chosen is None else "the configured setting does not fit")
    return 1
  run = chosen.candidate.apply(cfg)
  run_model = loop.model_config_from(run, _VOCAB.value)
  model_flops, compiled_flops, _ = plan.step_counts(run, run_model)
  roof = plan.roofline(run, run_model, chosen.report, compiled_flops, devices)
  peak, chip = plan.peak_of(devices[0]), plan.chip_of(devices[0])
  result = {
      "config": name, "target": target, "topology": topology,
      "device_kind": devices[0].device_kind, "devices": n,
      "remat_policy": chosen.candidate.policy, "remat_scope": chosen.candidate.scope,
      "microbatches": chosen.candidate.microbatches,
      "bytes_per_device": chosen.report.total, "hbm_bytes": limit,
      "hbm_fraction": chosen.report.total / limit if limit else None,
      "model_flops_per_step": model_flops, "compiled_flops_per_step": compiled_flops,
      "compiler_flops_per_device_one_trip": chosen.report.flops,
      "recompute_overhead": compiled_flops / model_flops - 1,
      "predicted_step_s": roof.step_s if roof else None,
      "predicted_mfu": model_flops / n / (roof.step_s * peak) if roof else None,
      "roofline": dataclasses.asdict(roof) if roof else None,
      "assumed": ({"peak_flops": peak, **dataclasses.asdict(chip)} if roof else None),
  }
  print(f"chosen: {chosen.candidate} ({chosen.why}), recompute "
        f"{result['recompute_overhead']:+.1%}")
  if roof:
    print(f"roofline per device: {compiled_flops / n / 1e12:.1f} TFLOP at {peak / 1e12:.0f} "
          f"TFLOP/s = {roof.flops_s:.3f} s; {roof.hbm_bytes / 1e9:.0f} GB HBM at "
          f"{chip.hbm_bandwidth / 1e12:.2f} TB/s = {roof.hbm_s:.3f} s; "
          f"{roof.collective_bytes / 1e9:.0f} GB collectives at "
          f"{(chip.network_bandwidth if roof else 0) / 1e9:.0f}/{chip.ici_bandwidth / 1e9:.0f} "
          f"GB/s (network/ICI) = {roof.collective_s:.3f} s -> step >= {roof.step_s:.3f} s, "
          f"MFU <= {result['predicted_mfu']:.1%}")
  if _RUN_STEPS.value and target == "local":
    result["measured_step_s"] = _measure(run, run_model, devices, _RUN_STEPS.value)
    result["measured_mfu"] = (model_flops / n / (result["measured_step_s"] * peak)
                              if peak else None)
    print(f"measured: {result['measured_step_s']:.3f} s per step (median of "
          f"{_RUN_STEPS.value}), MFU {result['measured_mfu'] or 0:.1%}; predicted >= "
          f"{result['predicted_step_s'] or 0:.3f} s")
  if _JSON.value:
    atomic.write_json(_JSON.value, result)
    print(f"wrote {_JSON.value}")
  return 0


if __name__ == "__main__":
  cli.run(main, flags_parser=lambda argv: configs.parse_flags(argv, "hrm1b"))
