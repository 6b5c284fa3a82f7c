"""Ahead-of-time compilation of the train step for accelerators this machine does not have.

From a CPU host, `jax.experimental.topologies` gives compile-only devices: a TPU slice (with
`libtpu` installed) or NVIDIA GPUs (with `jax-cuda13-plugin` installed, described by a
target config instead of a visible GPU). The real step (sharding rules, remat, chunked loss,
donation) is lowered on abstract shapes and compiled by that backend's XLA, which reports
per-device memory and FLOPs without allocating anything. MaxText's train_compile does the
same for TPUs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from hrm_jax import config as config_lib
from hrm_jax import sharding as sharding_lib
from hrm_jax.models import LanguageModel, registry
from hrm_jax.train import state as state_lib
from hrm_jax.train.step import jit_train_step, optimizer

TARGETS = ("tpu", "gpu", "cpu", "local")  # local: this machine's own devices, real ones

# GpuTargetConfigProto fields of NVIDIA's published H100/H200 SXM specifications (SM count,
# clocks, memory, caches), which XLA:GPU needs to compile without a visible GPU.
_HOPPER = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=49152,
               shared_memory_per_core=233472, threads_per_core_limit=2048, core_count=132,
               fpus_per_core=128, block_dim_limit_x=2147483647, block_dim_limit_y=65535,
               block_dim_limit_z=65535, l2_cache_size=52428800, clock_rate_ghz=1.98,
               shared_memory_per_block_optin=232448, registers_per_core_limit=65536,
               registers_per_block_limit=65536)
GPU_SPECS = {
    "h100": (dict(_HOPPER, memory_bandwidth=3352320000000, device_memory_size=84978434048),
             "NVIDIA H100 80GB HBM3"),
    "h200": (dict(_HOPPER, memory_bandwidth=4800000000000, device_memory_size=150754820096),
             "NVIDIA H200"),
}


def gpu_target_config(gpu: str) -> str:
  """The text-format GpuTargetConfigProto of a GPU in GPU_SPECS (compute capability 9.0)."""
  if gpu not in GPU_SPECS:
    raise ValueError(f"--gpu={gpu!r} is unknown; expected one of {sorted(GPU_SPECS)}")
  info, name = GPU_SPECS[gpu]
  fields = "\n".join(f"  {k}: {v}" for k, v in info.items())
  return (f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 }}\n}}\n"
          f'platform_name: "CUDA"\ndevice_description_str: "{name}"\n')


def compile_only_devices(target: str, topology: str, gpu: str = "h100",
                         slices: int = 1) -> list[Any]:
  """Devices to compile for. target tpu: topology like 'v5p:2x2x2' (chips, = v5p-16) per
  slice, `slices` of them (multi-slice: a mesh with `dcn_shape` spans them);
  gpu: '<slices>x<hosts per slice>x<gpus per host>', e.g. '1x2x8' (16 GPUs); cpu: the
  host's devices (set --xla_force_host_platform_device_count before JAX starts); local: the
  devices JAX sees, the real accelerators on a GPU or TPU host."""
  from jax.experimental import topologies
  if target == "tpu":
    if importlib.util.find_spec("libtpu") is None:  # the TPU compiler
      raise RuntimeError("compiling for TPU needs libtpu: pip install -r requirements-aot.txt")
    # Compile-only use claims no TPU, so skip libtpu's one-process-per-host lock file
    # (/tmp/libtpu_lockfile), which would fail a second compiling process.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return list(topologies.get_topology_desc(topology, "tpu", num_slices=slices).devices)
  if target == "gpu":
    try:
      return list(topologies.get_topology_desc("", "cuda", topology=topology,
                                               target_config=gpu_target_config(gpu)).devices)
    except NotImplementedError as e:
      raise RuntimeError("compiling for GPU needs the CUDA PJRT plugin: pip install -r "
                         "requirements-aot.txt, and JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 when "
                         "cuDNN is not installed (compilation does not use it)") from e
  if target == "cpu":
    return list(jax.devices("cpu"))
  if target == "local":
    return list(jax.devices())
  raise ValueError(f"--target={target!r} is unknown; expected one of {TARGETS}")


@dataclasses.dataclass(frozen=True)
class CompileReport:
  """Per-device figures of one compiled step, in bytes and FLOPs."""

  devices: int
  device_kind: str
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  flops: Optional[float]  # the compiler's count for one device's program, when it gives one

  @property
  def total(self) -> int:
    return self.arguments + self.outputs + self.temporaries - self.aliased


def compile_train_step(cfg: ml_collections.ConfigDict, model_config: config_lib.ModelConfig,
                       devices: list[Any], bp_steps: Optional[int]):
  """Lower and compile the training step of `cfg` (mesh, rows x row_len, train section) for
  `devices` from abstract shapes; returns the jax Compiled object."""
  mesh = sharding_lib.make_mesh(tuple(cfg.mesh.shape), devices, tuple(cfg.mesh.dcn_shape))
  sharding_lib.check_process_layout(mesh, cfg.data.rows)  # the hosts train.py would run on
  tx, _ = optimizer(cfg.train, total_steps=10**6)  # the schedule's length changes no shapes
  model = LanguageModel(model_config, registry.execution_of_section(cfg.model.to_dict()))
  shardings = state_lib.state_shardings(model, tx, mesh)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          state_lib.abstract_state(model, tx), shardings)
  rows, row_len = cfg.data.rows, cfg.data.row_len
  batch_sharding = sharding_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((rows, row_len),
                                   jnp.bool_ if k == "prefix_mask" else jnp.int32,
                                   sharding=batch_sharding)
           for k in ("inputs", "positions", "segment_ids", "prefix_mask", "labels")}
  step = jit_train_step(model, tx, cfg.train, shardings, mesh, bp_steps)
  return step.lower(abstract, batch).compile()


def report(compiled, devices: list[Any]) -> CompileReport:
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return CompileReport(
      devices=len(devices), device_kind=devices[0].device_kind,
      arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
      aliased=m.alias_size_in_bytes, temporaries=m.temp_size_in_bytes,
      flops=float(cost["flops"]) if cost and "flops" in cost else None)
