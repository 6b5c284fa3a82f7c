"""Compile the training step for accelerators this machine does not have, and print
per-device memory and FLOPs (nothing is allocated or run).

    pip install -r requirements-aot.txt                   # libtpu, the CUDA PJRT plugin
    python benchmarks/aot_compile.py --target=tpu         # hrm1b on a v5p-16 slice (8 chips)
    python benchmarks/aot_compile.py --target=gpu         # hrm1b on 16 H100s (2 hosts x 8)
    python benchmarks/aot_compile.py --target=cpu --cpu_devices=16   # the XLA:CPU view
    python benchmarks/aot_compile.py --target=tpu --sweep_remat      # every remat setting
    python benchmarks/aot_compile.py --target=tpu --tpu_slices=2 --config.mesh.dcn_shape=(2,1,1)
    python benchmarks/aot_compile.py --target=gpu --config.train.microbatches=2 ...

The step is the one experiments/train.py runs for --config (default hrm1b: its mesh,
rows x row_len, remat, attention, loss_chunk, microbatches), at its largest bp_steps.
FLOPs: the compiler's count, the analytic model count (hrm_jax/flops.py) and what
rematerialisation adds to it (`flops.recompute_flops_per_token`).
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)


def _early_env(argv: list[str]) -> None:
  """Settings JAX reads once at start-up: CPU device count, and no cuDNN check (compiling
  needs no cuDNN). Plugins are kept off the runtime backend list; topologies still load."""
  devices = next((a.split("=", 1)[1] for a in argv if a.startswith("--cpu_devices=")), "16")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


_early_env(sys.argv)

import time  # noqa: E402

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import configs  # noqa: E402
from hrm_jax import cli  # noqa: E402
from hrm_jax import flops as flops_lib  # noqa: E402
from hrm_jax.models import registry  # noqa: E402
from hrm_jax.train import aot  # noqa: E402
from hrm_jax.train import loop  # noqa: E402

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
_SWEEP = flags.DEFINE_bool("sweep_remat", False, "Compile every remat policy and scope.")

GIB = 2**30


def _one(cfg, devices):
  model_config = loop.model_config_from(cfg, _VOCAB.value)
  bp = registry.bp_steps_at(1, 1, model_config)  # after the warm-up (hrm: bp_max_steps)
  t = time.perf_counter()
  compiled = aot.compile_train_step(cfg, model_config, devices, bp)
  seconds = time.perf_counter() - t
  rep = aot.report(compiled, devices)
  tokens = cfg.data.rows * cfg.data.row_len
  model_flops = flops_lib.train_flops_per_token(model_config, cfg.data.row_len, bp) * tokens
  recompute = flops_lib.recompute_flops_per_token(model_config, cfg.data.row_len, bp) * tokens
  return model_config, rep, seconds, model_flops / rep.devices, recompute / rep.devices


def main(argv):
  del argv
  cfg = _CONFIG.value
  topology = {"tpu": _TPU_TOPOLOGY.value, "gpu": _GPU_TOPOLOGY.value, "cpu": ""}[_TARGET.value]
  devices = aot.compile_only_devices(_TARGET.value, topology, _GPU.value, _TPU_SLICES.value)
  capacity = {"tpu": 95 * 10**9, "gpu": aot.GPU_SPECS[_GPU.value][0]["device_memory_size"]}
  settings = [(cfg.model.remat_policy or "none", cfg.model.remat_scope or "layer")]
  if _SWEEP.value:
    settings = [("none", "layer"), ("dots", "layer"), ("proj", "layer"), ("full", "layer"),
                ("proj", "pass"), ("full", "pass")]
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  print(f"{name}: "
        f"{cfg.data.rows} rows x {cfg.data.row_len} tokens, mesh {tuple(cfg.mesh.shape)} "
        f"x dcn {tuple(cfg.mesh.dcn_shape)}, "
        f"microbatches {cfg.train.microbatches}, loss_chunk {cfg.train.loss_chunk}; "
        f"target {_TARGET.value} {topology} ({len(devices)} x {devices[0].device_kind})")
  print("| remat | attention | args GiB | temps GiB | total GiB/device | fits | "
        "compiler GFLOP/device | model GFLOP/device | + recompute | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for policy, scope in settings:
    run = cfg.copy_and_resolve_references()
    with run.unlocked():
      run.model.remat_policy, run.model.remat_scope = policy, scope
    model_config, rep, seconds, model_flops, recompute = _one(run, devices)
    fits = rep.total < capacity.get(_TARGET.value, float("inf"))
    compiler = f"{rep.flops / 1e9:,.0f}" if rep.flops else "n/a"
    print(f"| {policy}/{scope} | {model_config.attention_impl} | {rep.arguments / GIB:.2f} | "
          f"{rep.temporaries / GIB:.2f} | {rep.total / GIB:.2f} | {'yes' if fits else 'NO'} | "
          f"{compiler} | {model_flops / 1e9:,.0f} | {recompute / model_flops:+.0%} | "
          f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
  cli.run(main, flags_parser=lambda argv: configs.parse_flags(argv, "hrm1b"))
